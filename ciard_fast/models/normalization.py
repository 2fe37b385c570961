"""Per-dataset input statistics and the parsing of a ``normalize=`` argument.

Every model in the zoo takes images in [0, 1] (NCHW) and normalises them itself, so attacks,
losses and the evaluation never need to know which statistics a checkpoint was trained with.

``DATASET_STATS`` maps a name to ``(mean, std)``, each a tuple of 3 per-channel floats:

- ``"cifar10"``: the exact per-pixel statistics of the CIFAR-10 training set (also the default
  of the DeepMind/RobustBench WideResNets).
- ``"cifar10_legacy"``: same mean, but the std ``(0.2023, 0.1994, 0.2010)`` that
  kuangliu/pytorch-cifar popularised and chenyaofo/pytorch-cifar-models used to train its
  ``cifar10_resnet*`` hub checkpoints; use it to get those checkpoints' exact accuracy.
- ``"cifar100"``: CIFAR-100 training-set statistics.
- ``"tinyimagenet"``: Tiny-ImageNet-200 training-set statistics.

The dict is a plain ``dict`` on purpose: a user may add their own dataset's statistics.
"""
import math
from numbers import Real

DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar10_legacy": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}


def resolve_normalization(normalize, channels=3):
    """Turn a ``normalize=`` argument into ``None`` or ``(mean, std)`` tuples of floats.

    Args:
        normalize: ``None`` (identity), a key of ``DATASET_STATS``, or a ``(mean, std)`` pair of
            per-channel sequences (e.g. ``((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))``).
        channels: number of input channels the statistics must cover (3 for RGB).

    Returns:
        ``None`` or ``(mean, std)`` with ``len(mean) == len(std) == channels``, all finite,
        every std > 0.

    Raises:
        ValueError: unknown dataset name (the valid names are listed), wrong lengths,
            non-finite values or a std <= 0.
        TypeError: anything that is not None, a str or a pair of sequences of numbers.
    """
    if normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize not in DATASET_STATS:
            raise ValueError(
                f"normalize={normalize!r} is not a known dataset; use one of "
                f"{sorted(DATASET_STATS)}, a (mean, std) pair, or None for no normalisation"
            )
        normalize = DATASET_STATS[normalize]
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise TypeError(
            f"normalize must be None, a dataset name or a (mean, std) pair; got {normalize!r}"
        )
    mean, std = (_as_floats(v, what, channels) for v, what in zip(normalize, ("mean", "std")))
    bad = [s for s in std if not s > 0]
    if bad:
        raise ValueError(f"normalize std must be > 0 for every channel; got std={std}")
    return mean, std


def _as_floats(values, what, channels):
    # tensors and numpy arrays are accepted too: anything iterable of real numbers
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"normalize {what} must be a sequence of {channels} numbers; got {values!r}")
    out = []
    for v in values:
        if hasattr(v, "item"):  # a 0-d tensor / numpy scalar
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"normalize {what} must hold numbers; got {values!r}")
        out.append(float(v))
    if len(out) != channels:
        raise ValueError(
            f"normalize {what} must have {channels} per-channel values; got {len(out)}: {out}"
        )
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"normalize {what} must be finite; got {out}")
    return tuple(out)
