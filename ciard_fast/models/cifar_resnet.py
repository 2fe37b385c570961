"""The 3-stage "CIFAR ResNet" (He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016, arXiv:1512.03385, section 4.2: depth 6n + 2, stages of 16, 32, 64 channels), in
the layout of chenyaofo/pytorch-cifar-models ``pytorch_cifar_models/resnet.py``, whose torch.hub
checkpoints (``cifar10_resnet56``, ``cifar100_resnet20``, ...) load here with ``strict=True``.

CIARD uses ResNet-56 (n = 9, 855,770 parameters for 10 classes, about 0.13 GMAC per image) as
its frozen clean teacher. The hub checkpoints were trained on inputs normalised with mean
(0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010) on CIFAR-10 (``normalize=
"cifar10_legacy"``) and with the CIFAR-100 statistics on CIFAR-100 (``"cifar100"``).

``small_resnet`` is the same layout with one block per stage and a ``width`` knob: a ResNet-8
for CPU demos and tests (width 16: 78,042 parameters, about 12 MMAC per 32x32 image).
"""
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier, global_avg_pool
from .registry import register_model


class BasicBlock(nn.Module):
    """torchvision-style basic block, ``[B, inplanes, H, W] -> [B, planes, H/s, W/s]``;
    ``downsample`` (1x1 conv + BN) when the shape changes."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out, inplace=True)


class CifarResNet(ImageClassifier):
    """chenyaofo/pytorch-cifar-models ``CifarResNet(BasicBlock, layers)``.

    Args:
        layers: blocks per stage, e.g. ``(9, 9, 9)`` for ResNet-56, ``(3, 3, 3)`` for ResNet-20.
        num_classes: logits returned, ``[B, num_classes]``.
        width: channels of the first stage (16 in the paper); the others have 2x and 4x.
        normalize: see :class:`ImageClassifier` (default None: identity).
    """

    def __init__(self, layers=(9, 9, 9), num_classes=10, width=16, normalize=None):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"CifarResNet width must be an int >= 1; got {width!r}")
        if len(layers) != 3 or any(int(n) < 1 for n in layers):
            raise ValueError(f"CifarResNet needs 3 stages of >= 1 block each; got layers={layers}")
        super().__init__(num_classes, normalize)
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        inplanes = width
        for i, (planes, stride) in enumerate(zip((width, 2 * width, 4 * width), (1, 2, 2))):
            blocks = []
            for s in [stride] + [1] * (int(layers[i]) - 1):
                blocks.append(BasicBlock(inplanes, planes, s))
                inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(4 * width, num_classes)
        # the public initialisation (training from scratch matches its recipe)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_normalized(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(global_avg_pool(out))


@register_model("resnet56")
def resnet56(num_classes=10):
    """ResNet-56 (chenyaofo/pytorch-cifar-models keys): CIARD's CIFAR-10 clean teacher."""
    return CifarResNet((9, 9, 9), num_classes=num_classes)


@register_model("resnet20")
def resnet20(num_classes=10):
    """ResNet-20 (chenyaofo/pytorch-cifar-models keys)."""
    return CifarResNet((3, 3, 3), num_classes=num_classes)


@register_model("small_resnet")
def small_resnet(num_classes=10, width=16):
    """ResNet-8: 3 stages of 1 BasicBlock, ``width`` channels in the first stage (default 16).

    A student for the embedded CPU demo: BN + ReLU, deterministic, ~12 MMAC per 32x32 image.
    """
    return CifarResNet((1, 1, 1), num_classes=num_classes, width=width)
