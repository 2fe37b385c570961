"""Tests of ciard_fast.data: datasets (CIFAR, Tiny-ImageNet, digits, synthetic) and DeviceLoader.

CIFAR and Tiny-ImageNet are exercised on small archives/folders written here in the official
formats (nothing is downloaded); the download path is exercised through file:// URLs.
"""
import io
import os
import pickle
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ciard_fast.data import (
    ChecksumError,
    DatasetNotFoundError,
    DeviceLoader,
    ImageDataset,
    default_root,
    list_datasets,
    load_dataset,
    make_loader,
)
from ciard_fast.data import download as dl
from ciard_fast.data import tinyimagenet
from ciard_fast.data.augment import gather_crop_flip


# --------------------------------------------------------------------------------------------
# DeviceLoader
# --------------------------------------------------------------------------------------------

def ramp_images(n, h=8, w=8, c=2):
    """uint8 [n, h, w, c]: every pixel of every image distinct and non-zero, so a crop/flip is identifiable."""
    base = torch.arange(h * w).view(h, w)
    chans = [((base + 1 + 7 * k) % 250 + 1) for k in range(c)]  # distinct, 1..250
    img = torch.stack(chans, -1)
    # image i: the ramp with its values cyclically shifted by 3i (still distinct, still non-zero)
    return torch.stack([((img - 1 + 3 * i) % 250 + 1) for i in range(n)]).to(torch.uint8)


def reference_crops(image_hwc, padding):
    """All (dy, dx, flip) -> float [C, H, W] a padded crop + flip of one image can give (per-sample loop)."""
    h, w, _ = image_hwc.shape
    chw = image_hwc.permute(2, 0, 1).float() / 255
    padded = F.pad(chw, (padding,) * 4)
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop.flip(-1)
    return out


def test_crop_flip_each_output_is_a_shifted_and_maybe_flipped_padded_image():
    n, pad = 40, 3
    images = ramp_images(n)
    loader = DeviceLoader(images, torch.arange(n), batch_size=8, crop_padding=pad, seed=3)
    seen = set()
    for x, y in loader:
        for xi, yi in zip(x, y):
            candidates = reference_crops(images[yi], pad)
            matches = [k for k, ref in candidates.items() if torch.equal(xi, ref)]
            assert len(matches) == 1, f"output of sample {int(yi)} is no padded crop (+flip) of it"
            seen.add(matches[0])
    # the augmentation really varies: both flips and many of the (2*3+1)^2 offsets occur
    assert {k[2] for k in seen} == {False, True}
    assert len({k[:2] for k in seen}) >= 20


def test_crop_flip_follows_the_plan_exactly():
    n, pad = 16, 4
    images = ramp_images(n, h=8, w=6, c=3)
    loader = DeviceLoader(images, torch.arange(n), batch_size=16, crop_padding=pad, seed=1)
    plan = loader.plan(0)
    (x, y), = list(loader)
    for b in range(n):
        dy, dx = plan.offsets[b].tolist()
        ref = reference_crops(images[plan.indices[b]], pad)[(dy, dx, bool(plan.flips[b]))]
        assert int(y[b]) == int(plan.indices[b])
        assert torch.equal(x[b], ref)


def test_gather_without_augmentation_is_plain_indexing():
    images = ramp_images(5)
    idx = torch.tensor([4, 0, 2])
    assert torch.equal(gather_crop_flip(images, idx), images[idx])
    zero = torch.full((3, 2), 2)  # offset == padding: the crop is the image itself
    assert torch.equal(gather_crop_flip(images, idx, zero, None, padding=2), images[idx])
    flipped = gather_crop_flip(images, idx, None, torch.tensor([True, False, True]), padding=0)
    assert torch.equal(flipped[0], images[4].flip(1)) and torch.equal(flipped[1], images[0])


def test_same_seed_and_epoch_give_identical_batches_and_epochs_differ():
    images, labels = ramp_images(64), torch.arange(64)
    a = DeviceLoader(images, labels, batch_size=16, seed=7)
    b = DeviceLoader(images, labels, batch_size=16, seed=7)
    first, again = list(a), list(b)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again))
    second = list(a)  # epoch advanced to 1 by itself
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in second]))
    a.set_epoch(0)
    replay = list(a)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, replay))
    other_seed = list(DeviceLoader(images, labels, batch_size=16, seed=8))
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other_seed]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_dtype_shape_range_and_memory_format(dtype, channels_last):
    images = torch.randint(0, 256, (20, 12, 10, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[0] = 255
    images[1] = 0
    loader = DeviceLoader(images, torch.arange(20) % 4, batch_size=5, dtype=dtype, channels_last=channels_last,
                          shuffle=False, augment=False)
    assert len(loader) == 4 and loader.image_shape == (3, 12, 10)
    batches = list(loader)
    for x, y in batches:
        assert x.shape == (5, 3, 12, 10) and x.dtype == dtype and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    x0 = batches[0][0]
    assert float(x0[0].min()) == 1.0 and float(x0[1].max()) == 0.0


def test_unaugmented_ordered_batches_are_the_dataset():
    images, labels = ramp_images(23, c=3), torch.arange(23) % 5
    loader = DeviceLoader(images, labels, batch_size=10, shuffle=False, augment=False, drop_last=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10, 10, 3] and len(loader) == 3
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, images.permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), labels)


def test_drop_last():
    images, labels = ramp_images(10), torch.arange(10)
    kept = DeviceLoader(images, labels, batch_size=4, drop_last=True)
    assert len(kept) == 2 and [len(y) for _, y in kept] == [4, 4]
    full = DeviceLoader(images, labels, batch_size=4, drop_last=False)
    ys = [y for _, y in full]
    assert len(full) == 3 and [len(y) for y in ys] == [4, 4, 2]
    assert sorted(torch.cat(ys).tolist()) == list(range(10))


@pytest.mark.parametrize("n,world_size,drop_last", [(30, 3, True), (31, 3, False), (29, 4, True)])
def test_rank_shards_are_disjoint_slices_of_one_permutation(n, world_size, drop_last):
    images, labels = ramp_images(n), torch.arange(n)
    kw = dict(batch_size=2, seed=5, drop_last=drop_last)
    single = torch.cat([y for _, y in DeviceLoader(images, labels, drop_last=False, batch_size=1, seed=5)])
    shards = []
    for rank in range(world_size):
        loader = DeviceLoader(images, labels, rank=rank, world_size=world_size, **kw)
        loader.set_epoch(0)
        ys = torch.cat([y for _, y in loader])
        assert len(ys) == len(loader) * 2 or not drop_last
        # rank r serves positions r, r + W, ... of the same permutation as world_size=1
        assert torch.equal(ys, single[rank::world_size][:len(ys)])
        shards.append(ys)
    everything = torch.cat(shards).tolist()
    assert len(everything) == len(set(everything))  # disjoint
    if not drop_last:
        assert sorted(everything) == list(range(n))  # covering
    else:
        assert {len(s) for s in shards} == {(n // world_size) // 2 * 2}  # equal counts for DDP


def test_augmentation_of_a_sample_does_not_depend_on_world_size():
    images, labels = ramp_images(12), torch.arange(12)
    one = {int(y): x for xb, yb in DeviceLoader(images, labels, batch_size=3, seed=2) for x, y in zip(xb, yb)}
    for rank in range(2):
        for xb, yb in DeviceLoader(images, labels, batch_size=3, seed=2, rank=rank, world_size=2):
            for x, y in zip(xb, yb):
                assert torch.equal(x, one[int(y)])


def test_loader_accepts_dataset_and_numpy(tmp_path):
    ds = load_dataset("synthetic", num_samples=40, image_size=8, num_classes=4)
    loader = DeviceLoader(ds, batch_size=8)
    assert loader.num_classes == 4 and len(loader) == len(ds) // 8
    arr_loader = DeviceLoader(ds.images.numpy(), ds.labels.numpy().astype(np.int32), batch_size=8)
    assert torch.equal(next(iter(loader))[0], next(iter(arr_loader))[0])
    assert isinstance(make_loader("device", ds, batch_size=8), DeviceLoader)


def test_no_host_sync_calls_while_iterating(monkeypatch):
    images, labels = ramp_images(40), torch.arange(40)
    loader = DeviceLoader(images, labels, batch_size=8)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync (.item/.tolist/bool/int of a tensor) inside the batch loop")

    for name in ("item", "tolist", "__bool__", "__int__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    count = sum(1 for _ in loader)
    monkeypatch.undo()
    assert count == 5


@pytest.mark.parametrize("kwargs,err,fragment", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(rank=2, world_size=2), ValueError, "rank"),
    (dict(crop_padding=-1), ValueError, "crop_padding"),
    (dict(dtype=torch.int32), TypeError, "floating"),
    (dict(batch_size=64), ValueError, "no batch"),
])
def test_loader_rejects_bad_arguments(kwargs, err, fragment):
    with pytest.raises(err, match=fragment):
        DeviceLoader(ramp_images(10), torch.arange(10), **kwargs)


def test_loader_rejects_bad_inputs():
    with pytest.raises(TypeError, match="uint8"):
        DeviceLoader(torch.rand(4, 8, 8, 3), torch.arange(4), batch_size=2)
    with pytest.raises(ValueError, match="labels are required"):
        DeviceLoader(ramp_images(4), batch_size=2)
    with pytest.raises(ValueError, match="3 labels"):
        DeviceLoader(ramp_images(4), torch.arange(3), batch_size=2)
    ds = load_dataset("synthetic", num_samples=8, image_size=4)
    with pytest.raises(ValueError, match="labels must be None"):
        DeviceLoader(ds, torch.arange(len(ds)), batch_size=2)
    with pytest.raises(ValueError, match="unknown loader kind 'nope'"):
        make_loader("nope", ds)


# --------------------------------------------------------------------------------------------
# CIFAR (official pickle archives, written small)
# --------------------------------------------------------------------------------------------

CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                    parts={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                    per_file={"train": 4, "test": 6}, classes=10),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz",
                     parts={"train": ["train"], "test": ["test"]}, per_file={"train": 20, "test": 6}, classes=100),
}


def make_cifar_files(variant, seed=0):
    """{relative path: bytes} of a small CIFAR in the official format, and the expected arrays."""
    spec, rng = CIFAR[variant], np.random.default_rng(seed)
    files, expected = {}, {}
    for part, names in spec["parts"].items():
        imgs, labs = [], []
        for name in names:
            n = spec["per_file"][part]
            nhwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, spec["classes"], n).tolist()
            # official rows: the 1024 R values, then G, then B
            entry = {b"batch_label": name.encode(), b"data": nhwc.transpose(0, 3, 1, 2).reshape(n, 3072),
                     b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
            if variant == "cifar10":
                entry[b"labels"] = labels
            else:
                entry[b"fine_labels"] = labels
                entry[b"coarse_labels"] = [lab // 5 for lab in labels]  # must not be the labels used
            files[f"{spec['folder']}/{name}"] = pickle.dumps(entry, protocol=2)
            imgs.append(nhwc)
            labs += labels
        expected[part] = (np.concatenate(imgs), np.asarray(labs))
    return files, expected


def write_tarball(path, files):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def write_folder(root, files):
    for name, data in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)


def check_cifar(root, variant, expected):
    spec = CIFAR[variant]
    full = load_dataset(variant, root=root, split="train_full", download=False)
    assert full.num_classes == spec["classes"] and full.image_size == (32, 32) and len(full.mean) == 3
    np.testing.assert_array_equal(full.images.numpy(), expected["train"][0])
    np.testing.assert_array_equal(full.labels.numpy(), expected["train"][1])
    test = load_dataset(variant, root=root, split="test", download=False)
    np.testing.assert_array_equal(test.images.numpy(), expected["test"][0])
    np.testing.assert_array_equal(test.labels.numpy(), expected["test"][1])
    val = load_dataset(variant, root=root, split="val", val_size=5, download=False)
    train = load_dataset(variant, root=root, split="train", val_size=5, download=False)
    assert len(val) == 5 and len(train) == len(full) - 5
    rows = lambda ds: sorted(bytes(r) for r in ds.images.reshape(len(ds), -1).numpy())  # noqa: E731
    assert sorted(rows(val) + rows(train)) == rows(full)
    assert not set(rows(val)) & set(rows(train))


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_from_tarball_and_from_folder(tmp_path, monkeypatch, variant):
    spec = CIFAR[variant]
    files, expected = make_cifar_files(variant)
    # from the archive: verified, extracted into place, no temp leftovers
    root = tmp_path / "tar"
    root.mkdir()
    write_tarball(root / spec["archive"], files)
    monkeypatch.setitem(dl.MD5, spec["archive"], dl.md5sum(str(root / spec["archive"])))
    check_cifar(str(root), variant, expected)
    assert sorted(os.listdir(root)) == sorted([spec["archive"], spec["folder"]])
    # from an extracted folder alone
    folder_root = tmp_path / "folder"
    write_folder(folder_root, files)
    check_cifar(str(folder_root), variant, expected)


def test_cifar_wrong_md5_is_refused_and_nothing_is_extracted(tmp_path, monkeypatch):
    files, _ = make_cifar_files("cifar10")
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_tarball(archive, files)
    good = dl.md5sum(str(archive))
    monkeypatch.setitem(dl.MD5, "cifar-10-python.tar.gz", "0" * 32)
    with pytest.raises(ChecksumError) as info:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert good in str(info.value) and "0" * 32 in str(info.value)
    assert os.listdir(tmp_path) == ["cifar-10-python.tar.gz"]


def test_cifar_missing_offline_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", root=str(tmp_path), download=False)
    msg = str(info.value)
    assert "cifar-100-python.tar.gz" in msg and "cifar-100-python/" in msg and str(tmp_path) in msg


def test_download_verifies_and_writes_atomically(tmp_path, monkeypatch):
    files, expected = make_cifar_files("cifar10", seed=1)
    served = tmp_path / "server" / "cifar-10-python.tar.gz"
    served.parent.mkdir()
    write_tarball(served, files)
    monkeypatch.setitem(dl.URLS, "cifar-10-python.tar.gz", served.as_uri())
    # wrong checksum: nothing is left under the final name, no temp file, nothing extracted
    bad_root = tmp_path / "bad"
    monkeypatch.setitem(dl.MD5, "cifar-10-python.tar.gz", "f" * 32)
    with pytest.raises(ChecksumError, match="f" * 32):
        load_dataset("cifar10", root=str(bad_root), split="test")
    assert os.listdir(bad_root) == []
    # right checksum: downloaded, extracted, loaded
    monkeypatch.setitem(dl.MD5, "cifar-10-python.tar.gz", dl.md5sum(str(served)))
    good_root = tmp_path / "good"
    test = load_dataset("cifar10", root=str(good_root), split="test")
    np.testing.assert_array_equal(test.images.numpy(), expected["test"][0])
    assert sorted(os.listdir(good_root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # unreachable URL: a clear error, no partial file
    monkeypatch.setitem(dl.URLS, "cifar-10-python.tar.gz", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(DatasetNotFoundError, match="offline"):
        load_dataset("cifar10", root=str(tmp_path / "offline"), split="test")
    assert not any(os.scandir(tmp_path / "offline"))


def test_archive_without_the_expected_folder_is_rejected(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_tarball(archive, {"something-else/data_batch_1": b"x"})
    monkeypatch.setitem(dl.MD5, "cifar-10-python.tar.gz", dl.md5sum(str(archive)))
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert os.listdir(tmp_path) == ["cifar-10-python.tar.gz"]


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "test").write_bytes(pickle.dumps({b"data": os.getcwd}))  # a callable, not an array
    with pytest.raises(ValueError, match="not a CIFAR batch file.*refusing to load posix.getcwd"):
        load_dataset("cifar100", root=str(tmp_path), split="test", download=False)


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet (official folder layout, written small)
# --------------------------------------------------------------------------------------------

WNIDS = ["n03000000", "n01000000", "n02000000"]  # deliberately unsorted, as in the real wnids.txt
COLOURS = {"n01000000": (230, 20, 20), "n02000000": (20, 230, 20), "n03000000": (20, 20, 230)}


def write_tiny_imagenet(root, size=16, per_class=3):
    from PIL import Image

    base = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(os.path.join(base, "val", "images"))
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        img_dir = os.path.join(base, "train", wnid, "images")
        os.makedirs(img_dir)
        for i in range(per_class):
            Image.new("RGB", (size, size), COLOURS[wnid]).save(os.path.join(img_dir, f"{wnid}_{i}.JPEG"))
    val_wnids = ["n02000000", "n03000000", "n01000000", "n02000000", "n01000000"]
    lines = []
    for i, wnid in enumerate(val_wnids):
        name = f"val_{i}.JPEG"
        img = Image.new("RGB", (size, size), COLOURS[wnid])
        if i == 0:
            img = img.convert("L")  # the real set has greyscale JPEGs; they must come out RGB
        img.save(os.path.join(base, "val", "images", name))
        lines.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return val_wnids


def test_tiny_imagenet_folder_labels_and_npy_cache(tmp_path, monkeypatch):
    val_wnids = write_tiny_imagenet(tmp_path)
    order = sorted(WNIDS)
    full = load_dataset("tinyimagenet", root=str(tmp_path), split="train_full", download=False)
    assert full.images.shape == (9, 16, 16, 3) and full.num_classes == 3
    assert full.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for img, label in zip(full.images, full.labels):
        colour = torch.tensor(COLOURS[order[label]], dtype=torch.float32)
        assert (img.float().mean((0, 1)) - colour).abs().max() < 8  # JPEG is lossy
    test = load_dataset("tinyimagenet", root=str(tmp_path), split="test", download=False)
    assert test.labels.tolist() == [order.index(w) for w in val_wnids]
    assert test.images.shape == (5, 16, 16, 3)
    grey = test.images[0].float()
    assert (grey[..., 0] - grey[..., 1]).abs().max() == 0  # greyscale replicated to RGB
    cache = tmp_path / "tiny-imagenet-200" / tinyimagenet.CACHE_DIR
    assert sorted(os.listdir(cache)) == ["test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"]

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the .npy cache exists")

    monkeypatch.setattr(tinyimagenet, "_decode_image", no_decoding)
    again = load_dataset("tinyimagenet", root=str(tmp_path), split="train", val_size=2, download=False)
    assert len(again) == 7
    cached_test = load_dataset("tinyimagenet", root=str(tmp_path), split="test", download=False)
    assert torch.equal(cached_test.images, test.images) and torch.equal(cached_test.labels, test.labels)


def test_tiny_imagenet_bad_annotation_names_the_line(tmp_path):
    write_tiny_imagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt:6"):
        load_dataset("tinyimagenet", root=str(tmp_path), split="test", download=False)


def test_tiny_imagenet_zip_is_extracted(tmp_path, monkeypatch):
    import shutil

    write_tiny_imagenet(tmp_path / "src")
    shutil.make_archive(str(tmp_path / "root" / "tiny-imagenet-200"), "zip", tmp_path / "src")
    archive = tmp_path / "root" / "tiny-imagenet-200.zip"
    monkeypatch.setitem(dl.MD5, "tiny-imagenet-200.zip", dl.md5sum(str(archive)))
    test = load_dataset("tinyimagenet", root=str(tmp_path / "root"), split="test", download=False)
    assert len(test) == 5


# --------------------------------------------------------------------------------------------
# digits, synthetic, registry
# --------------------------------------------------------------------------------------------

def test_digits_offline_shapes_labels_and_splits():
    full = load_dataset("digits", split="train_full")
    test = load_dataset("digits", split="test")
    train, val = load_dataset("digits"), load_dataset("digits", split="val")
    assert full.images.shape == (1497, 32, 32, 3) and test.images.shape == (300, 32, 32, 3)
    assert len(train) == 1197 and len(val) == 300 and full.num_classes == 10
    assert sorted(torch.cat([full.labels, test.labels]).unique().tolist()) == list(range(10))
    assert torch.equal(full.images[..., 0], full.images[..., 2])  # grey replicated to 3 channels
    assert int(full.images.max()) == 255 and int(full.images.min()) == 0
    assert full.mean == train.mean == test.mean  # dataset statistics, not split statistics
    rows = lambda ds: sorted(bytes(r) + bytes([int(l)]) for r, l in zip(ds.images.reshape(len(ds), -1).numpy(), ds.labels))  # noqa: E731
    assert sorted(rows(train) + rows(val)) == rows(full)
    other = load_dataset("digits", split="val", seed=1)
    assert not torch.equal(other.images, val.images)
    whole = load_dataset("digits", split="train", val_size=0)
    assert torch.equal(whole.images, full.images)
    with pytest.raises(ValueError, match="val_size=0"):
        load_dataset("digits", split="val", val_size=0)
    x = test.nchw_float()
    assert x.shape == (300, 3, 32, 32) and x.dtype == torch.float32 and float(x.max()) <= 1.0


def test_synthetic_is_deterministic_shaped_and_learnable():
    kw = dict(num_samples=600, num_test=200, image_size=(12, 10), num_classes=3, channels=2)
    a, b = load_dataset("synthetic", split="train_full", **kw), load_dataset("synthetic", split="train_full", **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (600, 12, 10, 2) and a.num_classes == 3 and len(a.mean) == 2
    assert torch.bincount(a.labels).tolist() == [200, 200, 200]
    c = load_dataset("synthetic", split="train_full", data_seed=1, **kw)
    assert not torch.equal(a.images, c.images)
    test = load_dataset("synthetic", split="test", **kw)
    assert len(test) == 200 and not torch.equal(test.images[:10], a.images[:10])
    assert len(load_dataset("synthetic", **kw)) == 540  # default val_size = num_samples // 10
    # a nearest-class-mean classifier fitted on train is near perfect on test
    x, xt = a.images.flatten(1).float(), test.images.flatten(1).float()
    means = torch.stack([x[a.labels == k].mean(0) for k in range(3)])
    accuracy = (torch.cdist(xt, means).argmin(1) == test.labels).float().mean()
    assert accuracy > 0.95


@pytest.mark.parametrize("call,err,fragment", [
    (dict(name="imagenet"), ValueError, "cifar10, cifar100, digits, synthetic, tinyimagenet"),
    (dict(name="digits", split="validation"), ValueError, "train, val, train_full, test"),
    (dict(name="digits", val_size=1497), ValueError, "val_size=1497"),
    (dict(name="digits", val_size=-1), ValueError, "val_size"),
    (dict(name="digits", num_samples=5), TypeError, "num_samples"),
    (dict(name="synthetic", colour=True), TypeError, "colour"),
    (dict(name="synthetic", image_size=(3, 0)), ValueError, "image_size"),
    (dict(name="synthetic", split="val", num_samples=5), ValueError, "val_size=0"),
])
def test_load_dataset_rejects_bad_arguments(call, err, fragment):
    with pytest.raises(err, match=fragment):
        load_dataset(**call)


def test_list_datasets_and_default_root(monkeypatch, tmp_path):
    assert list_datasets() == ["cifar10", "cifar100", "digits", "synthetic", "tinyimagenet"]
    monkeypatch.setenv("CIARD_FAST_DATA", str(tmp_path))
    assert default_root() == str(tmp_path)
    monkeypatch.delenv("CIARD_FAST_DATA")
    assert default_root().endswith(os.path.join(".cache", "ciard_fast", "data"))


def test_image_dataset_validates_its_fields():
    images, labels = torch.zeros(4, 8, 8, 3, dtype=torch.uint8), torch.tensor([0, 1, 2, 1])
    ok = ImageDataset(images, labels, 3, "x", "train", (0.5,) * 3, (0.2,) * 3, (8, 8))
    assert len(ok) == 4 and ok.channels == 3 and "n=4" in repr(ok)
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(images.float(), labels, 3, "x", "train", (0.5,) * 3, (0.2,) * 3, (8, 8))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        ImageDataset(images, labels, 2, "x", "train", (0.5,) * 3, (0.2,) * 3, (8, 8))
    with pytest.raises(ValueError, match="one entry per channel"):
        ImageDataset(images, labels, 3, "x", "train", (0.5,), (0.2,), (8, 8))


def test_importing_the_data_package_is_light():
    # scikit-learn and PIL are imported only when digits / Tiny-ImageNet are loaded
    import subprocess

    code = ("import sys, ciard_fast.data; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'PIL', 'nvidia')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
