"""Per-epoch sampling schedule shared by every loader backend.

One ``EpochPlan`` fixes, for one epoch on one rank, which dataset indices are served in which
order and how each is augmented (crop offset, flip). ``DeviceLoader`` and ``DaliLoader`` both
execute the same plan, so for the same (seed, epoch) on the same plan device they serve the same
batches, and a run's data order is reproducible from (seed, epoch) alone.
"""
import hashlib
from dataclasses import dataclass
from typing import Optional

import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. (seed, epoch)); distinct inputs give unrelated seeds."""
    text = ":".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


@dataclass
class EpochPlan:
    """What one rank serves in one epoch.

    Attributes:
        indices: int64 [n] dataset indices in serving order (n = this rank's samples).
        offsets: int64 [n, 2] crop offsets (dy, dx) in [0, 2 * crop_padding] into the zero-padded
            image, or None when cropping is off.
        flips: bool [n] horizontal-flip flags, or None when flipping is off.
        num_batches: batches to serve; ``batch(i)`` slices of ``batch_size``.
    """

    indices: torch.Tensor
    offsets: Optional[torch.Tensor]
    flips: Optional[torch.Tensor]
    num_batches: int
    batch_size: int

    def batch(self, i: int):
        """(indices, offsets, flips) of batch ``i``; views, no copies."""
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return (
            self.indices[s],
            None if self.offsets is None else self.offsets[s],
            None if self.flips is None else self.flips[s],
        )


def num_batches(num_items: int, batch_size: int, drop_last: bool, rank: int, world_size: int) -> int:
    """Batches per epoch for ``rank``.

    With ``drop_last`` every rank gets ``(num_items // world_size) // batch_size`` batches (equal
    counts, as DDP training needs); without it rank r serves all of its ``len(range(r, N, W))``
    samples, the last batch possibly short (exact coverage, for evaluation).
    """
    if drop_last:
        return (num_items // world_size) // batch_size
    mine = len(range(rank, num_items, world_size))
    return -(-mine // batch_size)


def epoch_plan(
    num_items: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    crop_padding: int,
    flip: bool,
    drop_last: bool,
    rank: int,
    world_size: int,
    device="cpu",
) -> EpochPlan:
    """Draw the plan of ``epoch`` for ``rank`` from a generator on ``device`` seeded by (seed, epoch).

    The permutation and the augmentation of each *permutation position* are drawn for the whole
    dataset, identically on every rank, and rank r then takes positions r, r + W, r + 2W, ...:
    shards are disjoint, cover the epoch, and a sample's augmentation does not depend on W.
    ``crop_padding=0`` / ``flip=False`` switch the respective augmentation off.
    Random streams differ between CPU and CUDA generators; each is deterministic on its own.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(mix_seed(seed, epoch))
    if shuffle:
        order = torch.randperm(num_items, generator=gen, device=device)
    else:
        order = torch.arange(num_items, device=device)
    offsets = flips = None
    if crop_padding > 0:
        offsets = torch.randint(0, 2 * crop_padding + 1, (num_items, 2), generator=gen, device=device)
    if flip:
        flips = torch.rand(num_items, generator=gen, device=device) < 0.5
    nb = num_batches(num_items, batch_size, drop_last, rank, world_size)
    keep = slice(rank, num_items, world_size)
    return EpochPlan(
        indices=order[keep],
        offsets=None if offsets is None else offsets[keep],
        flips=None if flips is None else flips[keep],
        num_batches=nb,
        batch_size=batch_size,
    )
