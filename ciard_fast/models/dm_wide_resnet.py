"""WideResNet in the DeepMind layout (Gowal et al., "Uncovering the Limits of Adversarial
Training against Norm-Bounded Adversarial Examples", arXiv:2010.03593; Rebuffi et al., "Fixing
Data Augmentation to Improve Adversarial Robustness", arXiv:2103.01946), as RobustBench ships it
in ``robustbench/model_zoo/architectures/dm_wide_resnet.py`` (``DMWideResNet``).

CIARD's CIFAR-100 robust teacher is the WRN-70-16 of that layout (e.g. RobustBench's
``Gowal2020Uncovering_extra``): 266,796,506 parameters for 10 classes, about 39 GMAC per 32x32
image. Differences from the TRADES layout: Swish activations (x·sigmoid(x), which PyTorch calls
SiLU: DeepMind's ``Swish`` and ``nn.SiLU`` compute the same function; a few zoo entries use
ReLU); TensorFlow "SAME" padding done by hand (1 pixel all round at stride 1, right/bottom only
at stride 2); module names ``init_conv``, ``layer.{g}.block.{i}.{batchnorm_0, conv_0,
batchnorm_1, conv_1, shortcut}``, ``batchnorm``, ``logits``.

Registered as ``wrn70_16`` (the 70-16 with Swish) and ``dm_wide_resnet`` (any depth, width and
activation: the RobustBench entries build it through ``ciard_fast.models.robustbench``).

Normalisation: like ``DMWideResNet``, the model always holds ``mean``/``std`` tensors of shape
``[3, 1, 1]`` and computes ``(x - mean) / std`` itself; by default the CIFAR-10 constants of the
DeepMind code (``DATASET_STATS["deepmind_cifar10"]``: std 0.2471 for red), or the CIFAR-100
ones for ``num_classes=100`` -- exactly how RobustBench builds its CIFAR-10 and CIFAR-100
entries. They are non-persistent, as in RobustBench's current code
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


# the activations of the DeepMind layout: Swish (= SiLU, the zoo's default for this layout) or ReLU
ACTIVATIONS = {"silu": F.silu, "relu": F.relu}


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"DMWideResNet activation must be one of {', '.join(ACTIVATIONS)} (Swish is 'silu'); "
                         f"got {name!r}")
    return ACTIVATIONS[name]


class _Block(nn.Module):
    """DM wide block (pre-activation), ``[B, in, H, W] -> [B, out, H/s, W/s]``."""

    def __init__(self, in_planes, out_planes, stride, activation="silu"):
        super().__init__()
        self.act = _activation(activation)
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
        act = self.act(self.batchnorm_0(x))
        out = self.conv_0(_same_pad(act, self.stride))
        out = self.conv_1(self.act(self.batchnorm_1(out)))
        # as in the public code: a projection shortcut reads the activated input
        return out + (self.shortcut(act) if self.has_shortcut else x)


class _BlockGroup(nn.Module):
    """``num_blocks`` blocks; the first changes width and stride. Keys ``block.{i}.*``."""

    def __init__(self, num_blocks, in_planes, out_planes, stride, activation="silu"):
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
            for i in range(num_blocks)
        ])

    def forward(self, x):
        return self.block(x)


class DMWideResNet(ImageClassifier):
    """DeepMind-layout WideResNet-``depth``-``width``.

    Args:
        num_classes: logits returned, ``[B, num_classes]``.
        depth: 6n + 4 (70 -> 11 blocks per stage, 28 -> 4).
        width: channel multiplier; stages have 16w, 32w, 64w channels.
        normalize: statistics held in ``mean``/``std``; ``None`` means the DM default
            (``DATASET_STATS["deepmind_cifar10"]``). ``set_normalization(None)`` later makes it
            the identity.
        activation: "silu" (Swish, default) or "relu".
    """

    _always_holds_stats = True
    normalization_state_keys = ("mean", "std")

    def __init__(self, num_classes=10, depth=70, width=16, normalize=None, activation="silu"):
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"DMWideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 70); got {depth}")
        if width < 1:
            raise ValueError(f"DMWideResNet width must be >= 1; got {width}")
        super().__init__(num_classes, "deepmind_cifar10" if normalize is None else normalize)
        self.act = _activation(activation)
        n = (depth - 4) // 6
        ch = (16, 16 * width, 32 * width, 64 * width)
        self.init_conv = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _BlockGroup(n, ch[0], ch[1], 1, activation),
            _BlockGroup(n, ch[1], ch[2], 2, activation),
            _BlockGroup(n, ch[2], ch[3], 2, activation),
        )
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.logits = nn.Linear(ch[3], num_classes)

    def forward_normalized(self, x):
        out = self.layer(self.init_conv(x))
        out = self.act(self.batchnorm(out))
        return self.logits(global_avg_pool(out))


def default_statistics(num_classes):
    """The statistics RobustBench's DM entries hold: CIFAR-100's for 100 classes, else the DeepMind
    code's CIFAR-10 constants."""
    return DATASET_STATS["cifar100"] if num_classes == 100 else DATASET_STATS["deepmind_cifar10"]


@register_model("wrn70_16")
def wrn70_16(num_classes=10):
    """WideResNet-70-16, DeepMind/RobustBench layout (Swish): CIARD's CIFAR-100 robust teacher.

    Holds CIFAR-100 statistics for ``num_classes=100`` and the DeepMind CIFAR-10 constants
    otherwise (the RobustBench convention); pass ``normalize=`` to ``create_model`` to choose others.
    """
    return DMWideResNet(num_classes=num_classes, depth=70, width=16, normalize=default_statistics(num_classes))


@register_model("dm_wide_resnet")
def dm_wide_resnet(num_classes=10, depth=28, width=10, activation="silu"):
    """WideResNet-``depth``-``width`` in the DeepMind/RobustBench layout (default 28-10, Swish;
    ``activation="relu"`` for the zoo's ReLU entries), with the statistics of :func:`wrn70_16`."""
    return DMWideResNet(num_classes=num_classes, depth=depth, width=width, normalize=default_statistics(num_classes),
                        activation=activation)
