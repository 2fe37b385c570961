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
    for name in spec["files"][part]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: {folder} is incomplete. Delete it (and keep or re-download "
                f"{spec['archive']}) so that it is extracted again."
            )
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: b'data' has shape {data.shape}, expected [N, 3072]")
        # rows are R..G..B planes of 32x32 -> [N, 3, 32, 32] -> NHWC
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[spec["label_key"]], dtype=np.int64))
    mean, std = DATASET_STATS[spec["stats"]]
    meta = dict(num_classes=spec["num_classes"], mean=mean, std=std)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), meta


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
