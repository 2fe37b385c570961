"""Fault injection over every file the library reads: weights, training checkpoints (load, resume,
export, eval), teacher files, CIFAR batches and archives, Tiny-ImageNet files, YAML configs, each
empty, truncated, not a zip/pickle, text, a folder where a file should be (and a file where a
folder should be), a pickle without the expected keys. Each must end as one ValueError /
FileNotFoundError naming the file and what to do (the command line: exit 2, one line) — never
IndexError, KeyError, EOFError, UnpicklingError or a traceback."""
import io
import os
import pickle

import numpy as np
import pytest
import torch

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.models import create_model, load_weights

from _cli import run_cli

FAULTS = ("empty", "truncated", "not torch", "text", "folder", "no keys")
# words of a fix: every message says what to do
FIXES = ("again", "give", "delete", "resume", "restore", "start a new run", "copy", "load it", "point", "put",
         "leave", "extract")

TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 16}, val_size=16,
    student="small_cnn", student_args={"width": 4}, robust_teacher_model="small_cnn",
    robust_teacher_args={"width": 4}, robust_teacher_normalize=True, clean_teacher_model="small_cnn",
    clean_teacher_args={"width": 4}, teacher_epochs=1, epochs=1, batch_size=32, attack_steps=1, eval_pgd_steps=1,
    test_attacks=(), progress=False, plot=False, device="cpu",
)


def make(path, fault, whole=None):
    """Write `path` with `fault`; `whole`: the bytes of a good file of that kind (for truncation)."""
    path = os.fspath(path)
    if fault == "empty":
        open(path, "wb").close()
    elif fault == "truncated":
        with open(path, "wb") as f:
            f.write(whole[: len(whole) // 2])
    elif fault == "not torch":
        with open(path, "wb") as f:
            f.write(bytes(range(256)) * 4)  # binary, neither a zip archive nor a pickle
    elif fault == "text":
        with open(path, "w") as f:
            f.write("model weights go here\n")
    elif fault == "folder":
        os.makedirs(path)
    elif fault == "no keys":
        torch.save({"epoch": 3, "notes": ["no weights in here"]}, path)
    return path


def good_weights():
    buffer = io.BytesIO()
    torch.save(create_model("small_cnn", num_classes=10, width=4).state_dict(), buffer)
    return buffer.getvalue()


def clear(exc, path):
    message = str(exc)
    return (isinstance(exc, (ValueError, FileNotFoundError)) and os.path.basename(os.fspath(path)) in message
            and any(word in message.lower() for word in FIXES)), message


def cli(*argv):
    """(exit status, stderr) of `ciard-fast *argv`."""
    code, _, err = run_cli(*argv)
    return code, err


def one_line(code, err, path):
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and "Traceback" not in err and os.path.basename(str(path)) in err


# ---- torch files: weights, checkpoints, teachers ---------------------------------------------------
@pytest.mark.parametrize("fault", FAULTS)
def test_load_weights(tmp_path, fault):
    path = make(tmp_path / "weights.pt", fault, good_weights())
    with pytest.raises(Exception) as info:
        load_weights(create_model("small_cnn", width=4), path)
    ok, message = clear(info.value, path)
    assert ok, (type(info.value).__name__, message)


@pytest.mark.parametrize("fault", FAULTS)
def test_load_checkpoint(tmp_path, fault):
    from ciard_fast.engine.checkpoint import load_checkpoint

    path = make(tmp_path / "last.pt", fault, good_weights())
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    ok, message = clear(info.value, path) if fault != "no keys" else (True, str(info.value))
    assert ok and "last.pt" in message, message


@pytest.mark.parametrize("fault", FAULTS + ("marker, no state",))
def test_resume(tmp_path, fault):
    from ciard_fast.engine.checkpoint import save_checkpoint

    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    if fault == "marker, no state":
        save_checkpoint(path, {"config": {"method": "ciard"}})  # ours, but without what a resume needs
    else:
        make(path, fault, good_weights())
    with pytest.raises(ValueError) as info:
        ciard_fast.train(resume=str(path))
    assert "last.pt" in str(info.value) and any(w in str(info.value).lower() for w in FIXES), str(info.value)
    code, err = cli("train", "--resume", str(path))
    assert one_line(code, err, path), err


@pytest.mark.parametrize("fault", FAULTS + ("another architecture",))
def test_teacher_file(tmp_path, fault):
    path = tmp_path / "robust.pt"
    if fault == "another architecture":
        torch.save(create_model("resnet20", num_classes=10).state_dict(), path)
    else:
        make(path, fault, good_weights())
    with pytest.raises(ValueError) as info:
        ciard_fast.train({**TINY, "robust_teacher": str(path), "out_dir": str(tmp_path / "run")})
    message = str(info.value)
    assert "robust_teacher=" in message and "robust.pt" in message, message
    assert not (tmp_path / "run" / "teachers").exists()  # found before the clean teacher trained


@pytest.mark.parametrize("fault", FAULTS)
def test_eval_weights(tmp_path, fault):
    path = make(tmp_path / "weights.pt", fault, good_weights())
    code, err = cli("eval", "--weights", path, "--model", "small_cnn", "--dataset", "digits", "--progress", "false")
    assert one_line(code, err, path), err


@pytest.mark.parametrize("fault", FAULTS)
def test_export_checkpoint(tmp_path, fault):
    path = make(tmp_path / "best.pt", fault, good_weights())
    code, err = cli("export", "--checkpoint", path, "--format", "safetensors", "--out", str(tmp_path / "x.st"))
    assert one_line(code, err, path), err
    assert not (tmp_path / "x.st").exists()


def test_an_empty_file_does_not_crash_the_message_builder(tmp_path):
    """torch.load of an empty file raises EOFError('') whose message has no first line: the error
    builder used to crash on it with an IndexError."""
    path = make(tmp_path / "w.pt", "empty")
    with pytest.raises(ValueError, match="is empty"):
        load_weights(create_model("small_cnn", width=4), path)
    from ciard_fast.cli_eval import read_checkpoint

    with pytest.raises(ValueError, match="is empty"):
        read_checkpoint(path)


# ---- CIFAR --------------------------------------------------------------------------------------------
def cifar(tmp_path, name=None, fault=None):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if batch != name:
            (folder / batch).write_bytes(good)
    if name:
        if fault == "no keys":
            (folder / name).write_bytes(pickle.dumps({b"batch_label": b"x"}, protocol=2))
        else:
            make(folder / name, fault, good)
    return str(tmp_path / "data"), str(folder / name) if name else None


@pytest.mark.parametrize("fault", FAULTS)
def test_cifar_batch(tmp_path, fault):
    root, path = cifar(tmp_path, "data_batch_3", fault)
    with pytest.raises(ValueError) as info:
        ciard_fast.load_dataset("cifar10", root=root, split="train_full", download=False)
    ok, message = clear(info.value, path)
    assert ok, message


def test_cifar_archive_truncated_or_not_an_archive(tmp_path, monkeypatch):
    from ciard_fast.data import download

    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + bytes(100))  # gzip magic, then nothing
    with pytest.raises(ValueError, match="MD5.*Delete it and download"):  # the checksum catches it first
        ciard_fast.load_dataset("cifar10", root=str(root), download=False)
    # a mirror with its own checksums: the archive itself is found to be cut short
    monkeypatch.setitem(download.MD5, "cifar-10-python.tar.gz", download.md5sum(str(root / "cifar-10-python.tar.gz")))
    with pytest.raises(ValueError, match="could not be unpacked.*Delete it and download it again"):
        ciard_fast.load_dataset("cifar10", root=str(root), download=False)
    assert sorted(os.listdir(root)) == ["cifar-10-python.tar.gz"]  # nothing half-extracted left


@pytest.mark.parametrize("where", ["root", "extracted folder", "archive"])
def test_a_file_where_a_folder_is_expected_and_the_reverse(tmp_path, where):
    root = tmp_path / "data"
    if where == "root":
        root.write_text("not a folder")
    else:
        root.mkdir()
        if where == "extracted folder":
            (root / "cifar-10-batches-py").write_text("not a folder")
        else:
            (root / "cifar-10-python.tar.gz").mkdir()
    with pytest.raises(ValueError) as info:
        ciard_fast.load_dataset("cifar10", root=str(root), download=False)
    assert ("is a file" in str(info.value) or "is a folder" in str(info.value)), str(info.value)
    assert any(w in str(info.value).lower() for w in FIXES), str(info.value)


# ---- Tiny-ImageNet ---------------------------------------------------------------------------------------
def tiny(tmp_path, wnids="n01\n", image=None, annotations=True, wnids_fault=None):
    from PIL import Image

    root = tmp_path / "data" / "tiny-imagenet-200"
    (root / "train" / "n01" / "images").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    if wnids_fault is None:
        (root / "wnids.txt").write_text(wnids)
    else:
        make(root / "wnids.txt", wnids_fault)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "n01" / "images" / "a.png")
    if image is not None:
        make(root / "train" / "n01" / "images" / "b.JPEG", image, (root / "train" / "n01" / "images" /
                                                                    "a.png").read_bytes())
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "images" / "v.png")
    if annotations is True:
        (root / "val" / "val_annotations.txt").write_text("v.png\tn01\t0\t0\t8\t8\n")
    elif annotations == "folder":
        (root / "val" / "val_annotations.txt").mkdir()
    return str(tmp_path / "data")


@pytest.mark.parametrize("fault", ["empty", "text", "truncated", "not torch", "folder"])
def test_tinyimagenet_image(tmp_path, fault):
    root = tiny(tmp_path, image=fault)
    with pytest.raises(ValueError) as info:
        ciard_fast.load_dataset("tinyimagenet", root=root, split="train_full", download=False)
    assert "b.JPEG" in str(info.value) and any(w in str(info.value).lower() for w in FIXES), str(info.value)


@pytest.mark.parametrize("fault", ["empty", "folder", "not torch"])
def test_tinyimagenet_wnids(tmp_path, fault):
    root = tiny(tmp_path, wnids_fault=fault)
    with pytest.raises(ValueError) as info:
        ciard_fast.load_dataset("tinyimagenet", root=root, split="train_full", download=False)
    assert "wnids.txt" in str(info.value) and "extract" in str(info.value), str(info.value)


def test_tinyimagenet_annotations_as_a_folder(tmp_path):
    root = tiny(tmp_path, annotations="folder")
    with pytest.raises(ValueError, match="val_annotations.txt is a folder"):
        ciard_fast.load_dataset("tinyimagenet", root=root, split="test", download=False)


def test_a_cut_tinyimagenet_cache_is_rebuilt_with_a_warning(tmp_path):
    root = tiny(tmp_path)
    first = ciard_fast.load_dataset("tinyimagenet", root=root, split="train_full", download=False)
    cache = tmp_path / "data" / "tiny-imagenet-200" / "ciard_fast_cache_v1" / "train_images.npy"
    cache.write_bytes(cache.read_bytes()[:40])
    with pytest.warns(UserWarning, match="unreadable cache.*decoding the images again"):
        again = ciard_fast.load_dataset("tinyimagenet", root=root, split="train_full", download=False)
    assert torch.equal(first.images, again.images)


# ---- YAML -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault,words", [("empty", "is empty"), ("truncated", "not valid YAML"),
                                         ("not torch", "could not be read"), ("text", "must hold a mapping"),
                                         ("folder", "is a folder"), ("no keys", "could not be read")])
def test_yaml_config(tmp_path, fault, words):
    whole = b"epochs: [1, 2, 3]\nlr: 0.1\n"
    path = make(tmp_path / "run.yaml", fault, whole)
    with pytest.raises(ValueError) as info:
        build_config(config_file=path)
    assert "run.yaml" in str(info.value) and words in str(info.value), str(info.value)
    code, err = cli("train", "--config", path)
    assert one_line(code, err, path), err


def test_eval_reads_a_safetensors_file_and_a_cut_one_fails_clearly(tmp_path):
    from safetensors.torch import save_file

    from ciard_fast.cli_eval import read_checkpoint

    state = create_model("small_cnn", num_classes=10, width=4).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "student.safetensors"))
    read, config = read_checkpoint(str(tmp_path / "student.safetensors"))
    assert config is None and set(read) == set(state)
    data = (tmp_path / "student.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    code, err = cli("eval", "--weights", str(tmp_path / "cut.safetensors"), "--model", "small_cnn", "--dataset",
                    "digits")
    assert one_line(code, err, tmp_path / "cut.safetensors") and "safetensors" in err, err
