"""Pre-activation ResNet-18, CIFAR variant (He et al., "Identity Mappings in Deep Residual
Networks", ECCV 2016, arXiv:1603.05027), in the layout of kuangliu/pytorch-cifar
``models/preact_resnet.py``.

Stem = a bare 3x3 conv (no BN); each block is ``bn1 -> relu -> conv1 -> bn2 -> relu -> conv2``
and a 1x1 conv ``shortcut`` (no BN) when the shape changes, taken from the pre-activated input.
Like the public layout, there is no BN/ReLU after the last stage: ``linear`` reads the pooled
output of ``layer4`` directly. Keys equal that repository's; 11,171,146 parameters for 10
classes.
"""
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier, global_avg_pool
from .registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation block, ``[B, in_planes, H, W] -> [B, planes, H/stride, W/stride]``."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x), inplace=True)
        # the projection sees the activated input, the identity the raw one (as in the paper)
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        return out + shortcut


class PreActResNet(ImageClassifier):
    """kuangliu/pytorch-cifar ``PreActResNet(PreActBlock, num_blocks)``.

    Args:
        num_blocks: blocks per stage, ``(2, 2, 2, 2)`` for PreActResNet-18.
        num_classes: logits returned, ``[B, num_classes]``.
        normalize: see :class:`ImageClassifier` (default None: identity).
    """

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, normalize=None):
        super().__init__(num_classes, normalize)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            blocks = []
            for s in [stride] + [1] * (num_blocks[i] - 1):
                blocks.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512, num_classes)

    def forward_normalized(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(global_avg_pool(out))


@register_model("preact_resnet18")
def preact_resnet18(num_classes=10):
    """PreActResNet-18 (CIFAR, kuangliu/pytorch-cifar keys)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes)
