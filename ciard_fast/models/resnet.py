"""ResNet-18, CIFAR variant (He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016, arXiv:1512.03385), in the layout of kuangliu/pytorch-cifar ``models/resnet.py``.

That layout is the de-facto format of adversarial-distillation students (ARD, RSLAD, IAD,
AdaAD, MTARD, CIARD) and of AutoAttack's example ResNet-18: a 3x3 stride-1 stem without max
pooling, four stages of two BasicBlocks (64, 128, 256, 512 channels), shortcut = 1x1 conv + BN
when the shape changes, classifier ``linear``. The ``state_dict`` keys and shapes are that
repository's, so its checkpoints load with ``strict=True``; 11,173,962 parameters for 10
classes. Forward cost about 0.56 GMAC per 32x32 image.
"""
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier, global_avg_pool
from .registry import register_model


class BasicBlock(nn.Module):
    """Post-activation residual block: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))``.

    ``[B, in_planes, H, W] -> [B, planes, H/stride, W/stride]``.
    """

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # the public layout keeps an empty Sequential for the identity: no keys either way
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out, inplace=True)


class ResNet(ImageClassifier):
    """kuangliu/pytorch-cifar ``ResNet(BasicBlock, num_blocks)``.

    Args:
        num_blocks: blocks per stage, ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: logits returned, ``[B, num_classes]``.
        normalize: see :class:`ImageClassifier` (default None: identity).
    """

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, normalize=None):
        super().__init__(num_classes, normalize)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            blocks = []
            for s in [stride] + [1] * (num_blocks[i] - 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512, num_classes)

    def forward_normalized(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(global_avg_pool(out))


@register_model("resnet18")
def resnet18(num_classes=10):
    """ResNet-18 (CIFAR, kuangliu/pytorch-cifar keys): the standard distillation student."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes)
