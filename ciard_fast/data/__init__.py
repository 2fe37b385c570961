"""Datasets (CIFAR-10/100, Tiny-ImageNet, embedded digits, synthetic) and batch loaders.

    >>> from ciard_fast.data import load_dataset, DeviceLoader
    >>> train = load_dataset("cifar10", split="train")          # uint8 NHWC in memory, 49,000 images
    >>> loader = DeviceLoader(train, batch_size=128, device="cuda")
    >>> for x, y in loader: ...                                   # x float [128, 3, 32, 32] in [0, 1]

Importing this package does not import NVIDIA DALI (``DaliLoader`` imports it when constructed).
"""
from .dali import DaliLoader
from .dataset import SPLITS, ImageDataset
from .download import ChecksumError, DatasetNotFoundError
from .factory import make_loader
from .loader import DeviceLoader
from .registry import default_root, list_datasets, load_dataset, register_dataset

__all__ = [
    "ChecksumError",
    "DaliLoader",
    "DatasetNotFoundError",
    "DeviceLoader",
    "ImageDataset",
    "SPLITS",
    "default_root",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "make_loader",
]
