"""Per-dataset input statistics and the one resolver of a ``normalize=`` value.

Every model in the zoo takes images in [0, 1] (NCHW) and normalises them itself, so attacks,
losses and the evaluation never need to know which statistics a checkpoint was trained with.

``DATASET_STATS`` is the package's one table of dataset statistics (the CIFAR and Tiny-ImageNet
loaders in ``ciard_fast.data`` read theirs from it). It maps a name to ``(mean, std)``, each a
tuple of 3 per-channel floats in [0, 1] pixel units, rounded to 4 decimals:

- ``"cifar10"``: the exact statistics of the 50,000 CIFAR-10 training images: per channel, the
  population mean and std over all their pixels, as computed from the official python batches
  (full precision: mean 0.49139968, 0.48215841, 0.44653091; std 0.24703223, 0.24348513,
  0.26158784). Rounded: std (0.2470, 0.2435, 0.2616); the 0.2471 some repositories print is a
  rounding slip.
- ``"cifar10_legacy"``: same mean, but the std ``(0.2023, 0.1994, 0.2010)`` that
  kuangliu/pytorch-cifar popularised (the mean of the per-image stds, not the population std)
  and chenyaofo/pytorch-cifar-models used to train its ``cifar10_resnet*`` hub checkpoints; use
  it to get those checkpoints' exact accuracy.
- ``"cifar100"``: CIFAR-100 training-set population statistics (mean (0.50707, 0.48655,
  0.44092), std (0.26733, 0.25644, 0.27615)).
- ``"tinyimagenet"``: Tiny-ImageNet-200 training-set population statistics (100,000 images):
  std (0.2770, 0.2691, 0.2821), the same definition as CIFAR's.
- ``"tinyimagenet_legacy"``: same mean, std ``(0.2302, 0.2265, 0.2262)``: what averaging per-image
  (or per-batch) stds gives, which many Tiny-ImageNet training scripts copy; for checkpoints
  trained with it.
- ``"deepmind_cifar10"``: CIFAR-10's mean with std ``(0.2471, 0.2435, 0.2616)``: the constants
  DeepMind's WideResNet code hard-codes (and RobustBench's ``dm_wide_resnet.py`` copies), which
  every DeepMind-layout CIFAR-10 checkpoint of the RobustBench zoo normalises with. The 0.2471 is
  a rounding slip, but it is what those weights were trained and listed with, so their logits are
  reproduced only with it. (Their CIFAR-100 constants equal ``"cifar100"``.) The name does not
  start with ``cifar10`` on purpose: it is not one of the ``auto`` candidates of a CIFAR-10 teacher.

The dict is a plain ``dict`` on purpose: a user may add their own dataset's statistics.

``resolve_normalization(value, dataset)`` turns every spelling of a normalisation (a config's
``student_normalize`` / ``*_teacher_normalize``, ``ciard-fast eval --normalize``, a model's
``normalize=``) into the concrete ``(mean, std)`` or ``None``; training, evaluation and
comparison all call it, so a run is always evaluated with the statistics it was trained with.
"""
import math
from numbers import Real

_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)

DATASET_STATS = {
    "cifar10": (_CIFAR10_MEAN, (0.2470, 0.2435, 0.2616)),
    "cifar10_legacy": (_CIFAR10_MEAN, (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": (_TINYIMAGENET_MEAN, (0.2770, 0.2691, 0.2821)),
    "tinyimagenet_legacy": (_TINYIMAGENET_MEAN, (0.2302, 0.2265, 0.2262)),
    "deepmind_cifar10": (_CIFAR10_MEAN, (0.2471, 0.2435, 0.2616)),
}

# A teacher given as a file may be trained with or without normalisation; "auto" asks the
# teacher check to try the candidates on the validation split and keep the most accurate. That
# needs the weights and the data, so it is resolved there, before any model is built.
AUTO = "auto"


def resolve_normalization(value, dataset=None, *, channels=None):
    """The concrete statistics a ``normalize`` value stands for: ``None`` or ``(mean, std)``.

    Args:
        value: ``True`` (the statistics of ``dataset``), ``False`` or ``None`` (raw [0, 1]
            pixels, no normalisation), a key of ``DATASET_STATS`` (e.g. ``"cifar10_legacy"``),
            or a ``(mean, std)`` pair of per-channel sequences of numbers.
        dataset: what ``True`` refers to: a loaded ``ImageDataset`` (anything with ``mean``,
            ``std``: its training images' statistics, whatever the split) or a dataset name
            with an entry in ``DATASET_STATS``. Not needed for the other values.
        channels: number of input channels the statistics must cover (default: the dataset's
            channels when a loaded dataset is given, else 3).

    Returns:
        ``None`` or ``(mean, std)``: tuples of ``channels`` finite floats, every std > 0.

    Raises:
        ValueError: an unknown name (the valid ones are listed), ``"auto"`` (to be resolved
            by the teacher check first), ``True`` without a dataset or for a dataset name with
            no statistics in the table, wrong lengths, non-finite values or a std <= 0.
        TypeError: a value or dataset of another type.
    """
    if dataset is not None and not isinstance(dataset, str) and not (
            hasattr(dataset, "mean") and hasattr(dataset, "std")):
        raise TypeError(
            f"dataset must be a dataset name, a loaded ImageDataset or None; got {dataset!r}"
            + (" (give the number of channels as channels=...)" if isinstance(dataset, int) else "")
        )
    if channels is None:
        channels = getattr(dataset, "channels", None) if not isinstance(dataset, str) else None
        channels = channels or 3
    if value is None or value is False:
        return None
    if value is True:
        return _check_pair(_statistics_of(dataset), channels)
    if isinstance(value, str):
        if value == AUTO:
            raise ValueError(
                f"normalize={AUTO!r} must be resolved by the teacher check first (it tries the candidate "
                "normalisations of a teacher given as a file on the validation split); here give True, "
                f"False, a (mean, std) pair or one of {sorted(DATASET_STATS)}"
            )
        if value not in DATASET_STATS:
            raise ValueError(
                f"normalize={value!r} is not a known dataset; use one of "
                f"{sorted(DATASET_STATS)}, True (the dataset's own statistics), a (mean, std) pair, "
                "or False/None for no normalisation"
            )
        return _check_pair(DATASET_STATS[value], channels)
    return _check_pair(value, channels)


def _statistics_of(dataset):
    if dataset is None:
        raise ValueError(
            "normalize=True means the dataset's own statistics, but no dataset was given; pass the "
            f"dataset (its name or the loaded ImageDataset), a name from {sorted(DATASET_STATS)}, or a "
            "(mean, std) pair"
        )
    if isinstance(dataset, str):
        if dataset not in DATASET_STATS:
            raise ValueError(
                f"normalize=True means the statistics of dataset {dataset!r}, which has none in "
                f"DATASET_STATS (known: {sorted(DATASET_STATS)}): its statistics are measured on its "
                "training images when it is loaded, so pass the loaded ImageDataset instead, or give a "
                "(mean, std) pair"
            )
        return DATASET_STATS[dataset]
    return dataset.mean, dataset.std


def _check_pair(normalize, channels):
    if isinstance(normalize, bool) or not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise TypeError(
            f"normalize must be True, False/None, a dataset name or a (mean, std) pair; got {normalize!r}"
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
