"""The reference code's data pipeline: a torchvision-style per-image PIL loader with no workers.

The public CIARD script builds ``DataLoader(CIFAR10(transform=Compose([RandomCrop(32, padding=4),
RandomHorizontalFlip(), ToTensor()])), batch_size=128, shuffle=True, num_workers=0)`` and copies
each batch with ``.float().cuda()``. This module does the same work the same way — written here
with PIL and numpy, since torchvision is not a dependency:

  per image, in the training process:  ndarray -> PIL.Image, zero-pad 4 px, crop at a random
  offset, flip with probability 1/2, back to a float CHW tensor / 255;
  per batch:  ``torch.stack`` (the default collate) on the host, then a copy to the device from
  pageable memory.

Random draws use torch's global generator one scalar at a time (``torch.randint(...).item()``,
``torch.rand(1)``), exactly as torchvision's transforms do, unless a generator is given.
"""
import numpy as np
import torch
from PIL import Image, ImageOps


class ReferenceLoader:
    """Iterate shuffled, augmented (x, y) batches on the host, like DataLoader(num_workers=0).

    Args:
        images: uint8 array [N, H, W, 3] (HWC, as torchvision's CIFAR10 keeps ``data``).
        labels: int array [N].
        batch_size: images per batch (default 128).
        padding: zero padding of the random crop in pixels (default 4); 0 turns the crop off.
        flip: random horizontal flip (default True).
        shuffle: a fresh permutation every epoch (default True).
        drop_last: drop the last short batch (default True, so every step has the same shape).
        generator: optional torch.Generator for the permutation and the augmentation draws.

    Yields ``x``: float32 [B, 3, H, W] in [0, 1] and ``y``: int64 [B], both on the CPU; the
    training step copies them to the device (see ``to_device``).
    """

    def __init__(self, images, labels, batch_size=128, padding=4, flip=True, shuffle=True, drop_last=True,
                 generator=None):
        self.images = np.asarray(images)
        self.labels = np.asarray(labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise TypeError(f"images must be uint8 [N, H, W, C]; got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {self.labels.shape}")
        if batch_size < 1 or (drop_last and batch_size > len(self.images)):
            raise ValueError(f"batch_size={batch_size} yields no batch from {len(self.images)} images")
        self.batch_size, self.padding, self.flip = int(batch_size), int(padding), bool(flip)
        self.shuffle, self.drop_last, self.generator = bool(shuffle), bool(drop_last), generator

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else list(range(n))
        for b in range(len(self)):
            indices = order[b * self.batch_size:(b + 1) * self.batch_size]
            samples = [self._sample(i) for i in indices]  # per image, in Python: the point of the baseline
            yield torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples], dtype=torch.int64)

    def _sample(self, index):
        img = Image.fromarray(self.images[index])
        if self.padding > 0:
            img = self._random_crop(img)
        if self.flip and torch.rand(1, generator=self.generator) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img), int(self.labels[index])

    def _random_crop(self, img):
        w, h = img.size
        padded = ImageOps.expand(img, border=self.padding, fill=0)
        top = int(torch.randint(0, 2 * self.padding + 1, size=(1,), generator=self.generator).item())
        left = int(torch.randint(0, 2 * self.padding + 1, size=(1,), generator=self.generator).item())
        return padded.crop((left, top, left + w, top + h))


def to_tensor(img):
    """PIL image -> float32 [C, H, W] in [0, 1] (what torchvision's ToTensor does for uint8 RGB)."""
    array = np.array(img, dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def to_device(x, y, device):
    """The reference's ``.float().cuda()``: a synchronous copy from pageable host memory."""
    return x.float().to(device), y.to(device)
