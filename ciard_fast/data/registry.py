"""load_dataset: one entry point for every dataset, split and root."""
import numbers
import os

import torch

from ..registry import Registry
from . import cifar, digits, synthetic, tinyimagenet
from .dataset import SPLITS, ImageDataset, carve_validation

# name -> (loader(root, part, download, **kw) -> (images, labels, meta), default val_size or None
# meaning "a tenth of the training set", accepted extra kwargs); see register_dataset
DATASETS = Registry("dataset")


def register_dataset(name, loader=None, val_size=None, accepted=()):
    """Register ``loader(root, part, download, **kw) -> (images, labels, meta)`` as dataset `name`.

    `part` is "train" or "test"; images uint8 numpy [N, H, W, C], labels int64 [N], meta a dict
    with "num_classes", "mean" and "std". `val_size`: the default number of validation images
    carved from train (None: a tenth). `accepted`: names of the extra keyword arguments the
    loader takes (anything else is a TypeError naming them). Usable as a decorator
    (``@register_dataset("mine")``) or directly; returns the loader.
    """
    if val_size is not None and (isinstance(val_size, bool) or not isinstance(val_size, numbers.Integral)
                                 or val_size < 0):
        raise ValueError(f"register_dataset({name!r}): val_size must be an int >= 0 or None, got {val_size!r}")

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"register_dataset({name!r}) needs a callable loader, got {fn!r}")
        DATASETS.register(name, (fn, val_size, tuple(accepted)))
        return fn

    return decorator if loader is None else decorator(loader)


register_dataset("cifar10", lambda root, part, download: cifar.load("cifar10", root, part, download), 1000)
register_dataset("cifar100", lambda root, part, download: cifar.load("cifar100", root, part, download), 1000)
register_dataset("tinyimagenet", tinyimagenet.load, 1000)
register_dataset("digits", lambda root, part, download: digits.load(part), 300)
register_dataset("synthetic", lambda root, part, download, **kw: synthetic.load(part, **kw), None,
                 ("num_samples", "num_test", "image_size", "num_classes", "channels", "noise", "data_seed"))


def list_datasets():
    """Names ``load_dataset`` accepts."""
    return DATASETS.names()


def default_root() -> str:
    """``$CIARD_FAST_DATA`` if set, else ``~/.cache/ciard_fast/data``."""
    return os.environ.get("CIARD_FAST_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "ciard_fast", "data")


def load_dataset(name: str, root: str = None, split: str = "train", val_size: int = None,
                 download: bool = True, seed: int = 0, **kw) -> ImageDataset:
    """Load a dataset split into memory as an ``ImageDataset`` (uint8 NHWC images, int64 labels).

    Args:
        name: ``"cifar10"``, ``"cifar100"`` (fine labels), ``"tinyimagenet"`` (64x64, 200 classes),
            ``"digits"`` (scikit-learn's 8x8 digits as 32x32x3, offline), ``"synthetic"``.
        root: folder holding the datasets (default ``$CIARD_FAST_DATA`` or ``~/.cache/ciard_fast/data``).
            CIFAR/Tiny-ImageNet may sit there extracted (``cifar-10-batches-py/``,
            ``cifar-100-python/``, ``tiny-imagenet-200/``) or as the official archive.
        split: ``"train"`` = training set minus the validation part, ``"val"`` = the validation
            part, ``"train_full"`` = the whole training set, ``"test"`` = the test set
            (Tiny-ImageNet: the official val set, as the official test set has no labels).
        val_size: images held out of the training set for validation (default 1,000; 300 for
            digits; ``num_samples // 10`` for synthetic). 0 makes "train" the whole training set.
        download: fetch a missing CIFAR/Tiny-ImageNet archive (MD5-checked) when online.
        seed: seed of the fixed permutation that picks the validation images.
        **kw: synthetic only: num_samples, num_test, image_size, num_classes, channels, noise,
            data_seed (see ``synthetic.load``).
    """
    loader, default_val, accepted = DATASETS.get(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        hint = f"it accepts {', '.join(accepted)}" if accepted else "it takes no extra arguments"
        raise TypeError(f"load_dataset({name!r}) got unexpected argument(s) {unknown}; {hint}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    # argument errors surface before any download or decode
    if val_size is not None and (isinstance(val_size, bool) or not isinstance(val_size, numbers.Integral)
                                 or val_size < 0):
        raise ValueError(f"val_size must be an int >= 0 (or None for the default); got {val_size!r}")
    if split == "val" and val_size == 0:
        raise _empty_val(name)
    root = os.path.expanduser(root) if root is not None else default_root()

    part = "test" if split == "test" else "train"
    images, labels, meta = loader(root, part, download, **kw)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)

    if split in ("train", "val"):
        if val_size is None:
            val_size = default_val if default_val is not None else len(labels) // 10
            if split == "val" and val_size == 0:
                raise _empty_val(name)
        if val_size >= len(labels):
            raise ValueError(
                f"val_size={val_size} leaves no training images: {name} has {len(labels)} training "
                f"images; use val_size < {len(labels)}"
            )
        if val_size > 0:
            train_idx, val_idx = carve_validation(len(labels), val_size, seed)
            keep = val_idx if split == "val" else train_idx
            images, labels = images[keep], labels[keep]
    return ImageDataset(
        images=images,
        labels=labels,
        num_classes=meta["num_classes"],
        name=name,
        split=split,
        mean=meta["mean"],
        std=meta["std"],
        image_size=tuple(images.shape[1:3]),
    )



def _empty_val(name):
    return ValueError(
        f"split='val' of {name} is empty because val_size=0; pass val_size > 0 "
        "(or use split='test' / 'train_full')"
    )
