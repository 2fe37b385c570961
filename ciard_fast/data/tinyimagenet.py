"""Tiny-ImageNet-200 from the official folder layout, decoded once into a .npy cache.

Layout (http://cs231n.stanford.edu/tiny-imagenet-200.zip):
    tiny-imagenet-200/wnids.txt                      200 WordNet ids, one per line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 per class, 64x64
    tiny-imagenet-200/val/images/*.JPEG              10,000 images
    tiny-imagenet-200/val/val_annotations.txt        "<file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>"
The official test set has no labels, so our ``"test"`` part is the official val set.

Label ``k`` is the k-th wnid in *sorted* order, the order torchvision's ``ImageFolder`` gives the
train folders, so teachers trained with it keep their class indices.

The JPEGs (some greyscale) are decoded with PIL, converted to RGB, and stored as
``tiny-imagenet-200/ciard_fast_cache_v1/<part>_{images,labels}.npy``; later loads read the .npy
(about a second instead of a minute). Delete that folder to rebuild it.
"""
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..atomic import save_npy_atomic
from ..models.normalization import DATASET_STATS
from .download import ensure_extracted

FOLDER = "tiny-imagenet-200"
ARCHIVE = "tiny-imagenet-200.zip"
CACHE_DIR = "ciard_fast_cache_v1"
_IMAGE_EXTS = (".jpeg", ".jpg", ".png")
_REEXTRACT = "delete {folder} and extract " + ARCHIVE + " again (or let it be downloaded)"


def load(root: str, part: str, download: bool):
    """Load ``part`` (``"train"`` or ``"test"`` = official val) as (uint8 [N, H, W, 3], int64 [N], meta)."""
    folder = ensure_extracted(root, FOLDER, ARCHIVE, download, "Tiny-ImageNet-200")
    wnids = read_wnids(folder)
    mean, std = DATASET_STATS["tinyimagenet"]  # the package's one table of statistics
    meta = dict(num_classes=len(wnids), mean=mean, std=std)
    cache = os.path.join(folder, CACHE_DIR)
    img_path = os.path.join(cache, f"{part}_images.npy")
    lab_path = os.path.join(cache, f"{part}_labels.npy")
    if os.path.isfile(img_path) and os.path.isfile(lab_path):
        try:
            images, labels = np.load(img_path), np.load(lab_path)
        except (ValueError, OSError, EOFError) as err:  # a cache cut short (a killed process, a full disk)
            images = labels = None
            warnings.warn(f"ignoring an unreadable cache in {cache} ({type(err).__name__}: {err}); decoding the "
                          "images again")
        if images is not None:
            if images.ndim == 4 and images.dtype == np.uint8 and labels.shape == (images.shape[0],):
                return images, labels.astype(np.int64, copy=False), meta
            warnings.warn(f"ignoring an inconsistent cache in {cache}; decoding the images again")

    paths, labels = (_list_train if part == "train" else _list_val)(folder, wnids)
    images = _decode_all(paths)
    try:
        # labels first: the images file is written last, so its presence means the pair is complete
        save_npy_atomic(lab_path, labels)
        save_npy_atomic(img_path, images)
    except OSError as err:  # a read-only dataset folder still works, just without the cache
        warnings.warn(f"could not write the Tiny-ImageNet cache in {cache} ({err}); decoding again next time")
    return images, labels, meta


def read_wnids(folder: str):
    """Sorted list of the wnids in ``folder/wnids.txt``."""
    path = os.path.join(folder, "wnids.txt")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not the list of class ids; {_REEXTRACT.format(folder=folder)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; {folder} is not a tiny-imagenet-200 folder")
    try:
        with open(path, encoding="utf-8") as f:
            wnids = sorted({line.strip() for line in f if line.strip()})
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of class ids; {_REEXTRACT.format(folder=folder)}") from None
    if not wnids:
        raise ValueError(f"{path} lists no wnids (an empty file); {_REEXTRACT.format(folder=folder)}")
    return wnids


def _list_train(folder, wnids):
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        img_dir = os.path.join(folder, "train", wnid, "images")
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(f"{img_dir} is missing: wnid {wnid} is listed in wnids.txt but has no images")
        names = sorted(n for n in os.listdir(img_dir) if n.lower().endswith(_IMAGE_EXTS))
        paths += [os.path.join(img_dir, n) for n in names]
        labels += [label] * len(names)
    return paths, np.asarray(labels, dtype=np.int64)


def _list_val(folder, wnids):
    index = {w: i for i, w in enumerate(wnids)}
    ann = os.path.join(folder, "val", "val_annotations.txt")
    if os.path.isdir(ann):
        raise ValueError(f"{ann} is a folder, not the val labels file; {_REEXTRACT.format(folder=folder)}")
    if not os.path.isfile(ann):
        raise FileNotFoundError(f"{ann} is missing; the val (our test) labels come from it")
    paths, labels = [], []
    with open(ann, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.strip().split("\t")
            if fields == [""]:
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(f"{ann}:{lineno}: expected '<file>\\t<wnid>...' with a wnid from wnids.txt; got {line!r}")
            paths.append(os.path.join(folder, "val", "images", fields[0]))
            labels.append(index[fields[1]])
    return paths, np.asarray(labels, dtype=np.int64)


def _decode_image(path: str) -> np.ndarray:
    """One image file -> uint8 [H, W, 3] RGB (greyscale/CMYK/palette files are converted)."""
    from PIL import Image

    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not an image; the dataset folder is damaged: delete it and extract "
                         f"{ARCHIVE} again")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing (listed in val_annotations.txt or expected in its class "
                                f"folder); the dataset folder is incomplete: delete it and extract {ARCHIVE} "
                                "again") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL: unidentified, truncated or damaged image
        raise ValueError(f"{path} is not a readable image ({type(err).__name__}: {err}); the dataset folder is "
                         f"damaged: delete it and extract {ARCHIVE} again") from None


def _decode_all(paths) -> np.ndarray:
    if not paths:
        raise ValueError("no images found to decode")
    first = _decode_image(paths[0])
    out = np.empty((len(paths),) + first.shape, dtype=np.uint8)
    out[0] = first

    def work(i):
        img = _decode_image(paths[i])  # looked up at call time, so tests can replace it
        if img.shape != first.shape:
            raise ValueError(f"{paths[i]} is {img.shape}, but {paths[0]} is {first.shape}; all images must share one size")
        out[i] = img

    # PIL releases the GIL while decoding, so threads give a real speed-up on the 110k JPEGs.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(1, len(paths)), chunksize=256))
    return out
