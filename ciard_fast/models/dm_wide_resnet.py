"""WideResNet in the DeepMind layout (Gowal et al., "Uncovering the Limits of Adversarial
Training against Norm-Bounded Adversarial Examples", arXiv:2010.03593; Rebuffi et al., "Fixing
Data Augmentation to Improve Adversarial Robustness", arXiv:2103.01946), as RobustBench ships it
in ``robustbench/model_zoo/architectures/dm_wide_resnet.py`` (``DMWideResNet``).

CIARD's CIFAR-100 robust teacher is the WRN-70-16 of that layout (e.g. RobustBench's
``Gowal2020Uncovering_extra``): 266,796,506 parameters for 10 classes, about 39 GMAC per 32x32
image. Differences from the TRADES layout: Swish (SiLU) activations; TensorFlow "SAME" padding
done by hand (1 pixel all round at stride 1, right/bottom only at stride 2); module names
``init_conv``, ``layer.{g}.block.{i}.{batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut}``,
``batchnorm``, ``logits``.

Normalisation: like ``DMWideResNet``, the model always holds ``mean``/``std`` tensors of shape
``[3, 1, 1]`` and computes ``(x - mean) / std`` itself; by default the CIFAR-10 statistics, or
the CIFAR-100 ones for ``num_classes=100`` -- exactly how RobustBench builds its CIFAR-10 and
CIFAR-100 entries. They are non-persistent, as in RobustBench's current code
(``register_buffer(..., persistent=False)``, "to not put these tensors in the module's
state_dict"; DeepMind's original held them as plain attributes): the released checkpoints carry
no such keys. A checkpoint saved from the RobustBench revision that briefly persisted them has
its ``mean``/``std`` adopted as this model's normalisation by :func:`load_weights`.
"""
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier, global_avg_pool
from .normalization import DATASET_STATS
from .registry import register_model


def _same_pad(x, stride):
    # TensorFlow "SAME" for a 3x3 kernel: symmetric at stride 1, extra row/col at the end at 2
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class _Block(nn.Module):
    """DM wide block (pre-activation, Swish), ``[B, in, H, W] -> [B, out, H/s, W/s]``."""

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DM WideResNet blocks support stride 1 or 2; got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = None
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        self.stride = stride

    def forward(self, x):
        act = F.silu(self.batchnorm_0(x))
        out = self.conv_0(_same_pad(act, self.stride))
        out = self.conv_1(F.silu(self.batchnorm_1(out)))
        # as in the public code: a projection shortcut reads the activated input
        return out + (self.shortcut(act) if self.has_shortcut else x)


class _BlockGroup(nn.Module):
    """``num_blocks`` blocks; the first changes width and stride. Keys ``block.{i}.*``."""

    def __init__(self, num_blocks, in_planes, out_planes, stride):
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(num_blocks)
        ])

    def forward(self, x):
        return self.block(x)


class DMWideResNet(ImageClassifier):
    """DeepMind-layout WideResNet-``depth``-``width`` with Swish activations.

    Args:
        num_classes: logits returned, ``[B, num_classes]``.
        depth: 6n + 4 (70 -> 11 blocks per stage, 28 -> 4).
        width: channel multiplier; stages have 16w, 32w, 64w channels.
        normalize: statistics held in ``mean``/``std``; ``None`` means the DM default
            (CIFAR-10 statistics). ``set_normalization(None)`` later makes it the identity.
    """

    _always_holds_stats = True
    normalization_state_keys = ("mean", "std")

    def __init__(self, num_classes=10, depth=70, width=16, normalize=None):
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"DMWideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 70); got {depth}")
        if width < 1:
            raise ValueError(f"DMWideResNet width must be >= 1; got {width}")
        super().__init__(num_classes, "cifar10" if normalize is None else normalize)
        n = (depth - 4) // 6
        ch = (16, 16 * width, 32 * width, 64 * width)
        self.init_conv = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _BlockGroup(n, ch[0], ch[1], 1),
            _BlockGroup(n, ch[1], ch[2], 2),
            _BlockGroup(n, ch[2], ch[3], 2),
        )
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.logits = nn.Linear(ch[3], num_classes)

    def forward_normalized(self, x):
        out = self.layer(self.init_conv(x))
        out = F.silu(self.batchnorm(out))
        return self.logits(global_avg_pool(out))


@register_model("wrn70_16")
def wrn70_16(num_classes=10):
    """WideResNet-70-16, DeepMind/RobustBench layout (Swish): CIARD's CIFAR-100 robust teacher.

    Holds CIFAR-100 statistics for ``num_classes=100`` and CIFAR-10 ones otherwise (the
    RobustBench convention); pass ``normalize=`` to ``create_model`` to choose others.
    """
    stats = DATASET_STATS["cifar100"] if num_classes == 100 else DATASET_STATS["cifar10"]
    return DMWideResNet(num_classes=num_classes, depth=70, width=16, normalize=stats)
