"""A small, fast conv net for CPU demos and tests (our own layout, no public checkpoint).

Three conv-BN-ReLU layers (``width``, ``2*width``, ``2*width`` channels; the last two with
stride 2), global average pooling and a linear classifier. BatchNorm makes train and eval mode
differ, as in the real students and teachers, so the demo exercises the same mode handling.
With the default ``width=32`` it costs about 8 MMAC (16 MFLOP) per 32x32 image and has 57,130
parameters for 10 classes: the embedded digits demo trains teachers and students with it on two
CPU cores in minutes. Every op is deterministic on CPU.
"""
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier, global_avg_pool
from .registry import register_model


class SmallCNN(ImageClassifier):
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, num_classes]``; H, W >= 4.

    Args:
        num_classes: logits returned.
        width: channels of the first layer (default 32); then 2x, 2x.
        normalize: see :class:`ImageClassifier` (default None: identity).
    """

    def __init__(self, num_classes=10, width=32, normalize=None, stem_stride=1):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"SmallCNN width must be an int >= 1; got {width!r}")
        if stem_stride not in (1, 2):
            raise ValueError(f"SmallCNN stem_stride must be 1 or 2; got {stem_stride!r}")
        super().__init__(num_classes, normalize)
        self.width = width
        self.stem_stride = stem_stride
        self.conv1 = nn.Conv2d(3, width, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_normalized(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = F.relu(self.bn3(self.conv3(out)), inplace=True)
        return self.fc(global_avg_pool(out))

    def extra_repr(self):
        return f"width={self.width}, stem_stride={self.stem_stride}, " + super().extra_repr()


@register_model("small_cnn")
def small_cnn(num_classes=10, width=32, stem_stride=1):
    """SmallCNN (3 conv-BN-ReLU layers, ``width`` default 32): the CPU demo's teacher/student.
    ``stem_stride=2`` makes the first layer strided too (4x cheaper at 32x32): the embedded digits
    demo uses it, as its 8x8 digits upscaled to 32x32 carry no detail a stride-1 stem would keep."""
    return SmallCNN(num_classes=num_classes, width=width, stem_stride=stem_stride)
