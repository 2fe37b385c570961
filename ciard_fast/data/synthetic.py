"""Deterministic, learnable random images for tests and benchmarks.

Each class has a smooth template (a random 4x4 grid per channel, bilinearly upsampled to the image
size, values in [0.2, 0.8]); a sample is its class template plus i.i.d. Gaussian pixel noise,
clipped to [0, 1] and quantised to uint8. Templates are low-frequency, so they survive a 4-pixel
random crop and a flip well enough for a small convnet to fit the data in a few epochs.

Everything is drawn from CPU generators seeded from ``data_seed``: the same arguments give the same
bytes on every machine. Train and test share the templates and use independent noise streams.
"""
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from .sampling import mix_seed

_CHUNK = 4096  # samples generated per step, bounding the float temporaries


def load(part: str, num_samples: int = 1024, num_test: int = None, image_size=32, num_classes: int = 10,
         channels: int = 3, noise: float = 0.15, data_seed: int = 0):
    """Generate ``part`` (``"train"`` or ``"test"``) as (uint8 [N, H, W, C], int64 [N], meta).

    Args:
        num_samples: size of the training set (default 1,024).
        num_test: size of the test set (default max(num_samples // 4, num_classes)).
        image_size: int or (H, W) (default 32).
        num_classes: classes, balanced (default 10).
        channels: image channels (default 3).
        noise: std of the per-pixel Gaussian noise, in [0, 1] units (default 0.15).
        data_seed: seed of the templates and noise (default 0).
    mean/std in meta are measured on the training images.
    """
    h, w = _pair(image_size)
    for name, value, low in (("num_samples", num_samples, 1), ("num_classes", num_classes, 1),
                             ("channels", channels, 1), ("data_seed", data_seed, 0)):
        _check_int(name, value, low)
    if num_test is None:
        num_test = max(num_samples // 4, num_classes)
    _check_int("num_test", num_test, 1)
    if not isinstance(noise, numbers.Real) or noise < 0:
        raise ValueError(f"noise must be a float >= 0; got {noise!r}")

    templates = _templates(num_classes, channels, h, w, data_seed)
    train = _generate(templates, num_samples, noise, mix_seed(data_seed, 1))
    x = train[0].reshape(-1, channels).astype(np.float64) / 255.0
    meta = dict(num_classes=num_classes, mean=tuple(x.mean(0).tolist()), std=tuple(x.std(0).tolist()))
    if part == "train":
        return train[0], train[1], meta
    images, labels = _generate(templates, num_test, noise, mix_seed(data_seed, 2))
    return images, labels, meta


def _templates(num_classes, channels, h, w, data_seed):
    gen = torch.Generator().manual_seed(mix_seed(data_seed, 0))
    coarse = 0.2 + 0.6 * torch.rand(num_classes, channels, 4, 4, generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)  # [K, C, H, W]


def _generate(templates, n, noise, seed):
    k, c, h, w = templates.shape
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    images = torch.empty(n, h, w, c, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        y = labels[start:start + _CHUNK]
        x = templates[y] + noise * torch.randn(y.shape[0], c, h, w, generator=gen)
        images[start:start + _CHUNK] = (x.clamp_(0, 1) * 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
    return images.numpy(), labels.numpy()


def _pair(size):
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise ValueError(f"image_size must be a positive int or an (H, W) pair of them; got {size!r}")
    return int(size[0]), int(size[1])


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
