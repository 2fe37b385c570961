"""The 8x8 handwritten digits that ship with scikit-learn, as 32x32 RGB images.

1,797 real images (UCI "Optical Recognition of Handwritten Digits", values 0..16), available offline
right after install, so demos and tests can train on real data. Each image is bilinearly resized to
32x32 (``torch.nn.functional.interpolate``, ``align_corners=False``), scaled to 0..255 uint8 and
replicated to 3 channels so CIFAR models apply unchanged.

Fixed split: the last ``TEST_SIZE`` = 300 images (in scikit-learn's order, which cycles through
the writers, so every digit appears 27-33 times) are the test set; the first 1,497 the training set.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

TEST_SIZE = 300
IMAGE_SIZE = 32


def load(part: str):
    """Load ``part`` (``"train"`` or ``"test"``) as (uint8 [N, 32, 32, 3], int64 [N], meta)."""
    images, labels, meta = _prepared()
    keep = slice(None, -TEST_SIZE) if part == "train" else slice(-TEST_SIZE, None)
    # copies: callers own (and may modify) what they get; the cached arrays stay pristine
    return images[keep].copy(), labels[keep].copy(), dict(meta)


@functools.lru_cache(maxsize=1)
def _prepared():
    images, labels = _all_images()
    # statistics of the training images, per channel (the 3 channels are copies)
    x = images[:-TEST_SIZE].astype(np.float32) / 255.0
    meta = dict(
        num_classes=10,
        mean=tuple(x.mean(axis=(0, 1, 2), dtype=np.float64).tolist()),
        std=tuple(x.std(axis=(0, 1, 2), dtype=np.float64).tolist()),
    )
    return images, labels, meta


def _all_images():
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp_(0, 1) * 255).round_().to(torch.uint8)  # [N, 1, 32, 32]
    images = x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous().numpy()  # NHWC, 3 channels
    return images, digits.target.astype(np.int64)
