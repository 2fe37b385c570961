"""WideResNet (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, arXiv:1605.07146)
in the layout of yaodongyu/TRADES ``models/wideresnet.py`` (Zhang et al., "Theoretically
Principled Trade-off between Robustness and Accuracy", ICML 2019, arXiv:1901.08573).

This is the robust teacher of CIARD/ARD/RSLAD on CIFAR-10: the public TRADES checkpoint
``model_cifar_wrn.pt`` (WRN-34-10, trained on raw [0, 1] pixels: use ``normalize=None``) and
RobustBench's ``Zhang2019Theoretically`` load into ``wrn34_10`` with ``strict=True``.

The TRADES layout builds a ``sub_block1`` (a copy of ``block1``) that its forward never runs,
but that every checkpoint of the layout stores. We keep it, by default, with the same keys and
shapes, as *buffers*: checkpoints load strictly, while optimisers, weight decay, gradient
checks and DDP only see the 46,160,474 parameters that WRN-34-10 actually uses (10 classes).
"""
import math

import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier, global_avg_pool, params_to_buffers
from .registry import register_model


class BasicBlock(nn.Module):
    """Pre-activation wide block, ``[B, in_planes, H, W] -> [B, out_planes, H/s, W/s]``.

    When the channel count changes, BN-ReLU is applied once to the input and feeds both the
    3x3 conv and the 1x1 ``convShortcut`` (as in the TRADES code); otherwise the identity
    shortcut carries the raw input.
    """

    def __init__(self, in_planes, out_planes, stride, drop_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x), inplace=True)
        out = F.relu(self.bn2(self.conv1(act)), inplace=True)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """``nb_layers`` blocks; the first changes width and stride. Keys ``layer.{i}.*``."""

    def __init__(self, nb_layers, in_planes, out_planes, stride, drop_rate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                       stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x):
        return self.layer(x)


class WideResNet(ImageClassifier):
    """TRADES-layout WideResNet-``depth``-``widen_factor``.

    Args:
        depth: 6n + 4 (34 -> 5 blocks per stage, 28 -> 4).
        widen_factor: channel multiplier k; stages have 16k, 32k, 64k channels.
        num_classes: logits returned, ``[B, num_classes]``.
        sub_block1: keep the unused ``sub_block1`` keys (True for the TRADES checkpoint and
            RobustBench's ``sub_block1=True`` entries; False for the others).
        drop_rate: dropout inside each block (0 in every robust checkpoint).
        normalize: see :class:`ImageClassifier` (default None: identity, as TRADES trained).
    """

    def __init__(self, depth=34, widen_factor=10, num_classes=10, sub_block1=True,
                 drop_rate=0.0, normalize=None):
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 34); got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WideResNet widen_factor must be >= 1; got {widen_factor}")
        super().__init__(num_classes, normalize)
        n = (depth - 4) // 6
        ch = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        self._init_like_trades()
        if sub_block1:
            params_to_buffers(self.sub_block1)

    def _init_like_trades(self):
        # the TRADES initialisation, so training from scratch matches the public recipe
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_normalized(self, x):
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out), inplace=True)
        return self.fc(global_avg_pool(out))


@register_model("wrn34_10")
def wrn34_10(num_classes=10, sub_block1=True, drop_rate=0.0):
    """WideResNet-34-10 (TRADES keys): CIARD's CIFAR-10 robust teacher."""
    return WideResNet(34, 10, num_classes=num_classes, sub_block1=sub_block1, drop_rate=drop_rate)


@register_model("wide_resnet")
def wide_resnet(num_classes=10, depth=34, widen_factor=10, sub_block1=True, drop_rate=0.0):
    """WideResNet-``depth``-``widen_factor`` (TRADES keys; default 34-10): the RobustBench entries
    of this layout at other depths and widths build it through ``ciard_fast.models.robustbench``."""
    return WideResNet(depth, widen_factor, num_classes=num_classes, sub_block1=sub_block1, drop_rate=drop_rate)


@register_model("wrn28_10")
def wrn28_10(num_classes=10, sub_block1=True, drop_rate=0.0):
    """WideResNet-28-10 (TRADES keys)."""
    return WideResNet(28, 10, num_classes=num_classes, sub_block1=sub_block1, drop_rate=drop_rate)
