"""CIFAR-10 and CIFAR-100 from the official "python version" pickle archives.

Layout (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html):
    cifar-10-batches-py/data_batch_1..5, test_batch   dict b"data": uint8 [N, 3072], b"labels"
    cifar-100-python/train, test                      dict b"data", b"fine_labels" (100 classes)
Each row of b"data" holds the 1024 R values, then G, then B, of a 32x32 image in row-major order.
"""
import os
import pickle

import numpy as np

from ..models.normalization import DATASET_STATS
from .download import ensure_extracted

# mean/std: per-channel statistics of the 50,000 training images, from the package's one table
# (ciard_fast.models.normalization.DATASET_STATS, which states how they were computed).
_VARIANTS = {
    "cifar10": dict(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        label_key=b"labels",
        num_classes=10,
        stats="cifar10",
    ),
    "cifar100": dict(
        title="CIFAR-100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        files={"train": ["train"], "test": ["test"]},
        label_key=b"fine_labels",
        num_classes=100,
        stats="cifar100",
    ),
}


def load(variant: str, root: str, part: str, download: bool):
    """Load one official part (``"train"`` or ``"test"``) of ``variant`` (``"cifar10"``/``"cifar100"``).

    Returns (images uint8 [N, 32, 32, 3] NHWC, labels int64 [N], meta dict with num_classes,
    mean, std).
    """
    spec = _VARIANTS[variant]
    folder = ensure_extracted(root, spec["folder"], spec["archive"], download, spec["title"])
    images, labels = [], []
    fix = (f"delete {folder} (and keep or re-download {spec['archive']}) so that it is extracted again")
    for name in spec["files"][part]:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder where the {spec['title']} batch file should be: {folder} is "
                             f"damaged; {fix}")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: {folder} is incomplete. Delete it (and keep or re-download "
                f"{spec['archive']}) so that it is extracted again."
            )
        batch = _read_batch(path, fix)
        missing = [key.decode() for key in (b"data", spec["label_key"]) if key not in batch]
        if missing:
            raise ValueError(f"{path} is not a {spec['title']} batch: it has no {' or '.join(missing)} entry "
                             f"(is it a file of the other CIFAR?); {fix}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: b'data' has shape {data.shape}, expected [N, 3072]; {fix}")
        batch_labels = np.asarray(batch[spec["label_key"]], dtype=np.int64)
        if batch_labels.shape != (data.shape[0],):
            raise ValueError(f"{path}: {data.shape[0]} images but labels of shape {batch_labels.shape}; {fix}")
        # rows are R..G..B planes of 32x32 -> [N, 3, 32, 32] -> NHWC
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    mean, std = DATASET_STATS[spec["stats"]]
    meta = dict(num_classes=spec["num_classes"], mean=mean, std=std)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), meta


def _read_batch(path, fix):
    """One batch file -> its dict, or a ValueError naming the file: empty, truncated, not a pickle."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): an interrupted extraction; {fix}")
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "refusing" in str(exc):  # our unpickler's refusal of anything but arrays and containers
            raise ValueError(f"{path} is not a CIFAR batch file ({exc}); {fix}") from None
        raise ValueError(f"{path} is truncated or corrupt, or not a CIFAR batch file ({exc}); {fix}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError,
            UnicodeDecodeError) as exc:  # what the unpickler raises on cut or foreign bytes
        raise ValueError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR batch file (it holds a {type(batch).__name__}, not a dict); {fix}")
    return batch


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays (plus builtins' dicts/lists/bytes/str/ints).

    The batches are pickles, and a pickle can run arbitrary code; the official files need nothing
    beyond numpy's array reconstruction, so anything else is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes through it
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a CIFAR batch file: the official files contain "
            "only numpy arrays and plain Python containers"
        )
