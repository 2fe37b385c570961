"""MobileNetV2, CIFAR variant (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018, arXiv:1801.04381), in the layout of kuangliu/pytorch-cifar
``models/mobilenetv2.py`` -- the MobileNetV2 student of ARD/RSLAD/CIARD.

CIFAR changes of that layout: stem conv stride 1 (not 2) and the second stage's stride 1
(not 2), so a 32x32 input ends at 4x4. Unlike torchvision, every block with stride 1 is
residual; when its channel count changes the residual goes through a 1x1 conv + BN
``shortcut``. Keys equal that repository's; 2,296,922 parameters for 10 classes.
"""
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier, global_avg_pool
from .registry import register_model

# (expansion, out_planes, num_blocks, stride) of each stage, as in the public layout
CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class Block(nn.Module):
    """Inverted residual: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection.

    ``[B, in_planes, H, W] -> [B, out_planes, H/stride, W/stride]``; residual iff stride 1.
    """

    def __init__(self, in_planes, out_planes, expansion, stride):
        super().__init__()
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.residual = stride == 1
        self.shortcut = None
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return out


class MobileNetV2(ImageClassifier):
    """kuangliu/pytorch-cifar ``MobileNetV2``: stem 32 ch, 17 blocks (``layers``), 1x1 conv to
    1280 ch, global pool, ``linear``.

    Args:
        num_classes: logits returned, ``[B, num_classes]``.
        normalize: see :class:`ImageClassifier` (default None: identity).
    """

    def __init__(self, num_classes=10, normalize=None):
        super().__init__(num_classes, normalize)
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for expansion, out_planes, num_blocks, stride in CFG:
            for s in [stride] + [1] * (num_blocks - 1):
                blocks.append(Block(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward_normalized(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return self.linear(global_avg_pool(out))


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes=10):
    """MobileNetV2 (CIFAR, kuangliu/pytorch-cifar keys): the light distillation student."""
    return MobileNetV2(num_classes=num_classes)
