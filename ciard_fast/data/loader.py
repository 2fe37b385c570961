"""DeviceLoader: the whole uint8 dataset resident on the device, batches augmented there.

Why: a PIL/worker loader costs more than the model step on 32x32 data. Here the dataset is copied
to the device once (CIFAR 150 MB, Tiny-ImageNet 1.2 GB), and each batch is one gather with the
random crop and flip folded into the index arithmetic (``augment.gather_crop_flip``) plus one
conversion to float. No per-image Python work and no host synchronisation per batch.
"""
import numbers

import numpy as np
import torch

from .augment import gather_crop_flip, to_float_nchw
from .dataset import ImageDataset
from .sampling import epoch_plan, num_batches


class BaseLoader:
    """What every loader backend shares: argument checks, epochs, the per-epoch plan, ``len``.

    Subclasses set ``self.images`` (uint8 [N, H, W, C]), ``self.labels`` (int64 [N]) and
    ``self.plan_device`` (where the plan's random draws are made), then implement ``_batches``.
    """

    def _setup(self, dataset_or_images, labels, batch_size, shuffle, augment, crop_padding, flip,
               drop_last, seed, channels_last, dtype, rank, world_size):
        images, labels, self.num_classes = resolve_inputs(dataset_or_images, labels)
        check_loader_args(batch_size, crop_padding, seed, dtype, rank, world_size)
        self.batch_size, self.shuffle, self.augment = int(batch_size), bool(shuffle), bool(augment)
        self.crop_padding, self.flip, self.drop_last = int(crop_padding), bool(flip), bool(drop_last)
        self.seed, self.channels_last, self.dtype = int(seed), bool(channels_last), dtype
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.num_samples = images.shape[0]
        check_not_empty(len(self), self.num_samples, batch_size, drop_last, world_size)
        return images, labels

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size, self.drop_last, self.rank, self.world_size)

    @property
    def image_shape(self):
        """(C, H, W) of the served images."""
        _, h, w, c = self.images.shape
        return (c, h, w)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` on the next ``iter()`` (then epoch + 1, ...)."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int; got {epoch!r}")
        self.epoch = int(epoch)

    def plan(self, epoch: int):
        """The ``EpochPlan`` (order + augmentation) this loader serves in ``epoch``."""
        return epoch_plan(
            self.num_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            crop_padding=self.crop_padding if self.augment else 0,
            flip=self.flip and self.augment,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
            device=self.plan_device,
        )

    def __iter__(self):
        plan = self.plan(self.epoch)
        self.epoch += 1
        return self._batches(plan)

    def _batches(self, plan):
        raise NotImplementedError


class DeviceLoader(BaseLoader):
    """Iterate (x, y) batches of a device-resident dataset.

    Args:
        dataset_or_images: an ``ImageDataset``, or a uint8 tensor/array [N, H, W, C] (NHWC).
        labels: int tensor/array [N]; required with raw images, must be None with an ImageDataset.
        batch_size: samples per batch (default 128).
        device: where the dataset lives and batches are made (default "cpu").
        shuffle: a fresh permutation every epoch (default True); False serves 0..N-1 in order.
        augment: random crop + flip (default True); False serves the images unchanged.
        crop_padding: zero padding of the random crop, in pixels (default 4: the CIFAR recipe).
        flip: random horizontal flip with probability 1/2 (default True).
        drop_last: drop the last short batch, so every batch has the same shape (default True).
        seed: base seed; the epoch's generator is seeded from (seed, epoch) (default 0).
        channels_last: return x in channels_last memory format (default False).
        dtype: floating dtype of x (default float32).
        rank, world_size: for DDP, each rank serves a disjoint 1/world_size of the same per-epoch
            permutation (ranks must share ``seed``); see ``sampling.num_batches`` for the counts.

    Yields ``x``: ``dtype`` [B, C, H, W] in [0, 1] and ``y``: int64 [B], both on ``device``.
    ``len(loader)`` is the number of batches per epoch.

    Epochs: each ``iter(loader)`` serves epoch ``loader.epoch`` and then advances it by one, so a
    plain ``for epoch ...: for x, y in loader`` sees a new order every epoch; ``set_epoch(e)``
    pins the next epoch (resume, DDP). The same (seed, epoch) always gives the same batches on a
    given device type (CPU and CUDA generators draw different streams).
    """

    def __init__(
        self,
        dataset_or_images,
        labels=None,
        batch_size: int = 128,
        device="cpu",
        shuffle: bool = True,
        augment: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ):
        images, labels = self._setup(dataset_or_images, labels, batch_size, shuffle, augment, crop_padding,
                                     flip, drop_last, seed, channels_last, dtype, rank, world_size)
        self.device = self.plan_device = torch.device(device)
        self.images = images.to(self.device).contiguous()  # once; every batch is gathered from here
        self.labels = labels.to(self.device)

    def _batches(self, plan):
        for i in range(plan.num_batches):
            idx, offsets, flips = plan.batch(i)
            raw = gather_crop_flip(self.images, idx, offsets, flips, self.crop_padding)
            yield to_float_nchw(raw, self.dtype, self.channels_last), self.labels.index_select(0, idx)


def resolve_inputs(dataset_or_images, labels):
    """Normalise the loader's data arguments to (uint8 [N, H, W, C], int64 [N], num_classes or None)."""
    if isinstance(dataset_or_images, ImageDataset):
        if labels is not None:
            raise ValueError("labels must be None when an ImageDataset is given (it carries its own labels)")
        return dataset_or_images.images, dataset_or_images.labels, dataset_or_images.num_classes
    images = dataset_or_images
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"expected an ImageDataset or a uint8 tensor [N, H, W, C]; got {type(images).__name__}"
        )
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(
            f"images must be uint8 [N, H, W, C] (NHWC, 0..255); got dtype={images.dtype} "
            f"shape={tuple(images.shape)}. For float NCHW images in [0, 1] use "
            "(x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)."
        )
    if labels is None:
        raise ValueError("labels are required when raw images are given")
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor [N]; got dtype={labels.dtype} shape={tuple(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels; they must match one to one")
    return images, labels.long(), None


def check_loader_args(batch_size, crop_padding, seed, dtype, rank, world_size):
    """Validate the arguments every loader backend shares (raises ValueError/TypeError)."""
    for name, value, low in (("batch_size", batch_size, 1), ("crop_padding", crop_padding, 0),
                             ("seed", seed, 0), ("world_size", world_size, 1), ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}); got rank={rank}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (e.g. torch.float32, torch.bfloat16); got {dtype!r}")


def check_not_empty(batches, n, batch_size, drop_last, world_size):
    """A loader that yields nothing is a silent bug in a training loop: refuse it."""
    if batches == 0:
        raise ValueError(
            f"this loader would yield no batch: {n} samples over world_size={world_size} with "
            f"batch_size={batch_size} and drop_last={drop_last}. Use a smaller batch_size or drop_last=False."
        )
