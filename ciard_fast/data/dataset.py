"""The in-memory image dataset every loader and evaluator consumes.

A dataset is small enough to live in memory as one uint8 tensor (CIFAR: 150 MB, Tiny-ImageNet
train: 1.2 GB), so there is no per-sample ``__getitem__`` machinery: loaders gather whole batches
from the tensor with index arithmetic (see ``loader.py``).
"""
from dataclasses import dataclass
from typing import Tuple

import torch

SPLITS = ("train", "val", "train_full", "test")


@dataclass(repr=False)
class ImageDataset:
    """A labelled image set held as one tensor.

    Attributes:
        images: uint8 tensor [N, H, W, C] (NHWC, values 0..255), contiguous.
        labels: int64 tensor [N], values in [0, num_classes).
        num_classes: number of classes of the dataset (not of this split: a small split may miss some).
        name: registry name, e.g. ``"cifar10"``.
        split: one of ``"train"``, ``"val"``, ``"train_full"``, ``"test"`` (or any tag for hand-made sets).
        mean, std: per-channel mean/std of the dataset's training images in [0, 1] units, length C;
            for the model's normalisation wrapper (models take [0, 1] images and normalise inside).
        image_size: (H, W).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    split: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    image_size: Tuple[int, int]

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError(
                f"ImageDataset.images must be a uint8 tensor [N, H, W, C]; got "
                f"{_describe(self.images)}. Convert with torch.as_tensor(array, dtype=torch.uint8)."
            )
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(
                f"ImageDataset.labels must be an int64 tensor [N]; got {_describe(self.labels)}. "
                "Convert with labels.long()."
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageDataset has {self.images.shape[0]} images but {self.labels.shape[0]} labels; "
                "they must match one to one."
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {self.num_classes!r}")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels of {self.name!r}/{self.split!r} span [{int(self.labels.min())}, "
                f"{int(self.labels.max())}] but num_classes={self.num_classes}: labels must be in "
                f"[0, {self.num_classes})."
            )
        channels = self.images.shape[3]
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} need one entry per channel ({channels})."
            )
        self.image_size = tuple(int(s) for s in self.image_size)
        if self.image_size != tuple(self.images.shape[1:3]):
            raise ValueError(
                f"image_size {self.image_size} does not match the images' (H, W) "
                f"{tuple(self.images.shape[1:3])}."
            )
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[3]

    def nchw_float(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """All images as a float tensor [N, C, H, W] in [0, 1] (contiguous NCHW).

        Holds 4 bytes per value in fp32: fine for evaluation sets; for training use ``DeviceLoader``,
        which converts per batch.
        """
        x = self.images.to(device) if device is not None else self.images
        return x.permute(0, 3, 1, 2).to(dtype).div_(255).contiguous()

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={n}, image_size=({h}, {w}), "
            f"channels={c}, num_classes={self.num_classes}, device={self.images.device})"
        )


def carve_validation(num_train: int, val_size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split range(num_train) into (train indices, val indices), both sorted, int64.

    The val part is the first ``val_size`` entries of a permutation drawn from a CPU generator
    seeded with ``seed``, so it is the same on every machine and every call, and never overlaps
    the train part.
    """
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
    val = perm[:val_size].sort().values
    train = perm[val_size:].sort().values
    return train, val


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor dtype={x.dtype} shape={tuple(x.shape)}"
    return type(x).__name__
