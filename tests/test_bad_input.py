"""Bad input over the Python API and the CLI: each case must fail at once with the right exception
type (CLI: exit 2 and one line, no traceback) and a message naming the offending field or value.

Two batteries: the first (PY, CLI) and a second (SECOND, issue 20: files read, paths written, the
command line's convention, checks before training, settings that would be ignored), whose ids
start with the class they test (1 output paths, 3 command line, 4 files read, 5 before training,
6 nothing ignored, 7 export). On the code before issue 20 the second battery counted 6 clear /
46 confusing / 20 silent of 72; all 188 cases are clear since.

`outcome(case)` classifies a case as clear / confusing (an error, but the wrong type, a message
that does not name the field, or a traceback) / silent (no error at all); the test requires every
case to be clear. Run this file as a script to print the counts.
"""
import contextlib
import dataclasses
import io
import json
import math
import os
import socket
import sys
import warnings

import pytest
import torch

import ciard_fast
from ciard_fast.config import TrainConfig, build_config

sys.path.insert(0, os.path.dirname(__file__))
from _tiny import tiny_convnet  # noqa: E402

TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 16}, val_size=16,
    student="small_cnn", student_args={"width": 4}, robust_teacher_model="small_cnn",
    robust_teacher_args={"width": 4}, robust_teacher_normalize=True, clean_teacher_model="small_cnn",
    clean_teacher_args={"width": 4}, teacher_epochs=1, epochs=1, batch_size=32, attack_steps=1,
    eval_pgd_steps=1, test_attacks=(), compare_natural_student=False, progress=False, plot=False, device="cpu",
)
CLI_TINY = ["--dataset", "synthetic", "--dataset_args", "{num_samples: 64, num_test: 16, image_size: 16}",
            "--val_size", "16", "--student", "small_cnn", "--student_args.width", "4", "--epochs", "1",
            "--batch_size", "32", "--attack_steps", "1", "--eval_pgd_steps", "1", "--test_attacks", "clean",
            "--progress", "false", "--plot", "false", "--compare_natural_student", "false", "--device", "cpu"]


@dataclasses.dataclass
class Case:
    id: str
    run: object                 # callable(tmp) for "py"/"warn"; callable(tmp) -> argv for "cli"
    names: tuple                # substrings the message must contain (case-insensitive)
    exc: type = ValueError      # expected exception type ("py"); warning category ("warn")
    kind: str = "py"


def cfg(**kw):
    return lambda tmp: build_config(overrides=kw)


def tiny_train(**kw):
    return lambda tmp: ciard_fast.train({**TINY, "out_dir": str(tmp / "run"), **kw})


def write(tmp, name, text):
    path = tmp / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


def nan_model():
    model = tiny_convnet(num_classes=10, width=4).eval()
    with torch.no_grad():
        model[-1].weight.fill_(float("nan"))
    return model


def images(n=4):
    return torch.rand(n, 3, 8, 8)


def labels(n=4, top=9):
    return torch.randint(0, top + 1, (n,))


def pgd(model, x, y, **kw):
    from ciard_fast.attacks import pgd as attack

    return attack(model, x, y, steps=1, **kw)


def evaluate(model, data, **kw):
    from ciard_fast.attacks.evaluate import evaluate as ev

    return ev(model, data, **{"attacks": ("clean",), "progress": False, **kw})


def later_batch_label_out_of_range(tmp):
    x, y = images(8), labels(8)
    y[6] = 10  # second batch of 4: 10 classes, so 10 is out of range
    return evaluate(tiny_convnet(10, 4).eval(), (x, y), batch_size=4)


def locked_folder(tmp):
    folder = tmp / "locked"
    folder.mkdir()
    (folder / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "started": "earlier"}))
    return ciard_fast.train({**TINY, "out_dir": str(folder)})


def used_folder(tmp):
    folder = tmp / "used"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"an earlier run")
    return ciard_fast.train({**TINY, "out_dir": str(folder)})


def meta_model(tmp):
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    return pgd(model, images(), labels())


PY = [
    Case("epochs=0", cfg(epochs=0), ("epochs", "0")),
    Case("epochs=-3", cfg(epochs=-3), ("epochs", "-3")),
    Case("epochs=2.5", cfg(epochs=2.5), ("epochs", "2.5"), TypeError),
    Case("epochs='3'", cfg(epochs="3"), ("epochs", "'3'"), TypeError),
    Case("epochs=True", cfg(epochs=True), ("epochs", "True"), TypeError),
    Case("lr=-1", cfg(lr=-1), ("lr", "-1")),
    Case("lr=0", cfg(lr=0), ("lr", "0")),
    Case("lr='0.1'", cfg(lr="0.1"), ("lr", "'0.1'"), TypeError),
    Case("lr=nan", cfg(lr=math.nan), ("lr", "nan")),
    Case("lr=inf", cfg(lr=math.inf), ("lr", "inf")),
    Case("eps=8", cfg(eps=8), ("eps", "8/255")),
    Case("eps=-0.1", cfg(eps=-0.1), ("eps", "-0.1")),
    Case("alpha=0", cfg(alpha=0), ("alpha",)),
    Case("attack_steps=0", cfg(attack_steps=0), ("attack_steps",)),
    Case("batch_size=0", cfg(batch_size=0), ("batch_size",)),
    Case("batch_size=32.0", cfg(batch_size=32.0), ("batch_size",), TypeError),
    Case("momentum=1.5", cfg(momentum=1.5), ("momentum", "1.5")),
    Case("weight_decay=-1e-4", cfg(weight_decay=-1e-4), ("weight_decay",)),
    Case("flip='false'", cfg(flip="false"), ("flip", "'false'"), TypeError),
    Case("progress=1", cfg(progress=1), ("progress",), TypeError),
    Case("test_attacks unknown", cfg(test_attacks=("clean", "pgd20")), ("test_attacks", "pgd20")),
    Case("test_attacks as a string", cfg(test_attacks="clean,fgsm"), ("test_attacks",), TypeError),
    Case("test_attacks twice", cfg(test_attacks=("clean", "clean")), ("test_attacks", "twice")),
    Case("method unknown", cfg(method="magic"), ("method", "magic")),
    Case("dataset unknown", cfg(dataset="imagenet"), ("dataset", "imagenet")),
    Case("student unknown", cfg(student="resnet19"), ("student", "resnet19")),
    Case("robust_teacher_model unknown", cfg(robust_teacher_model="wrn99"), ("robust_teacher_model", "wrn99")),
    Case("clean_teacher_model unknown", cfg(clean_teacher_model="nope"), ("clean_teacher_model", "nope")),
    Case("precision=fp16", cfg(precision="fp16"), ("precision", "fp16")),
    Case("loader=torch", cfg(loader="torch"), ("loader", "torch")),
    Case("optimizer=adam", cfg(optimizer="adam"), ("optimizer", "adam")),
    Case("attack_random_start=gauss", cfg(attack_random_start="gauss"), ("attack_random_start", "gauss")),
    Case("robust_teacher_method=ciard", cfg(robust_teacher_method="ciard"), ("robust_teacher_method", "ciard")),
    Case("device=gpu", cfg(device="gpu"), ("device", "gpu")),
    Case("device=cuda:x", cfg(device="cuda:x"), ("device", "cuda:x")),
    Case("teacher_epochs=0", cfg(teacher_epochs=0), ("teacher_epochs",)),
    Case("teacher_lr=-0.1", cfg(teacher_lr=-0.1), ("teacher_lr", "-0.1")),
    Case("teacher_lr='0.1'", cfg(teacher_lr="0.1"), ("teacher_lr",), TypeError),
    Case("eval_every=0", cfg(eval_every=0), ("eval_every",)),
    Case("eval_pgd_steps=0", cfg(eval_pgd_steps=0), ("eval_pgd_steps",)),
    Case("eval_n=0", cfg(eval_n=0), ("eval_n",)),
    Case("test_n=-5", cfg(test_n=-5), ("test_n", "-5")),
    Case("seed=-1", cfg(seed=-1), ("seed", "-1")),
    Case("stop_after=0", cfg(stop_after=0), ("stop_after",)),
    Case("log_every=0", cfg(log_every=0), ("log_every",)),
    Case("checkpoint_every_steps=0", cfg(checkpoint_every_steps=0), ("checkpoint_every_steps",)),
    Case("crop_padding=-2", cfg(crop_padding=-2), ("crop_padding", "-2")),
    Case("val_size=-1", cfg(val_size=-1), ("val_size", "-1")),
    Case("student_args as a string", cfg(student_args="width=4"), ("student_args",), TypeError),
    Case("dataset_args as a list", cfg(dataset_args=[1]), ("dataset_args",), TypeError),
    Case("out_dir=''", cfg(out_dir=""), ("out_dir",)),
    Case("robust_teacher_args unknown keyword", cfg(robust_teacher_model="small_cnn",
                                                    robust_teacher_args={"widht": 4}),
         ("robust_teacher_args", "widht", "width"), TypeError),
    Case("student_args unknown keyword", cfg(student="small_cnn", student_args={"depth": 4}),
         ("student_args", "depth"), TypeError),
    Case("E_itt=-5", cfg(E_itt=-5), ("E_itt", "-5")),
    Case("T_push=0", cfg(T_push=0), ("T_push",)),
    Case("T_push='3'", cfg(T_push="3"), ("T_push", "'3'"), TypeError),
    Case("itt='no'", cfg(itt="no"), ("itt", "'no'"), TypeError),
    Case("weighting=adaptiv", cfg(weighting="adaptiv"), ("weighting", "adaptiv")),
    Case("rslad kd_scale=0", cfg(method="rslad", kd_scale=0), ("kd_scale",)),
    Case("fair_ard weight_bounds reversed", cfg(method="fair_ard", weight_bounds=(3.0, 1.0)), ("weight_bounds",)),
    Case("ciard rate_decay_epochs negative", cfg(rate_decay_epochs=(-1,)), ("rate_decay_epochs",)),
    Case("T_push for trades", cfg(method="trades", T_push=3), ("T_push",)),
    Case("key typo epoch", cfg(epoch=3), ("epoch", "epochs")),
    Case("preset unknown", lambda tmp: build_config(preset="nope"), ("nope",)),
    Case("YAML syntax error", lambda tmp: build_config(config_file=write(tmp, "bad.yaml", "epochs: [1,\n lr: 2\n")),
         ("bad.yaml", "yaml")),
    Case("YAML not a mapping", lambda tmp: build_config(config_file=write(tmp, "list.yaml", "- 1\n- 2\n")),
         ("list.yaml", "mapping")),
    Case("YAML eps as text", lambda tmp: build_config(config_file=write(tmp, "eps.yaml", "eps: 8/255\n")),
         ("eps", "8/255"), TypeError),
    Case("YAML missing", lambda tmp: build_config(config_file=str(tmp / "missing.yaml")), ("missing.yaml",)),
    Case("TrainConfig(epochs=0)", lambda tmp: TrainConfig(epochs=0), ("epochs",)),
    Case("dataclasses.replace lr=-1", lambda tmp: dataclasses.replace(TrainConfig(), lr=-1), ("lr",)),
    Case("TrainConfig.replace eps=2", lambda tmp: TrainConfig().replace(eps=2), ("eps",)),
    Case("train(config=123)", lambda tmp: ciard_fast.train(123), ("config", "int"), TypeError),
    Case("resume missing", lambda tmp: ciard_fast.train(resume=str(tmp / "none.pt")), ("none.pt", "does not exist")),
    Case("resume empty file", lambda tmp: ciard_fast.train(resume=write(tmp, "empty.pt", b"")),
         ("empty.pt", "corrupt")),
    Case("robust_teacher empty file", lambda tmp: tiny_train(robust_teacher=write(tmp, "t.pt", b""))(tmp),
         ("robust_teacher", "t.pt", "empty")),
    Case("clean_teacher missing", lambda tmp: tiny_train(clean_teacher=str(tmp / "nope.pt"))(tmp),
         ("clean_teacher", "nope.pt")),
    Case("device=cuda without a GPU", tiny_train(device="cuda"), ("cuda",)),
    Case("out_dir holds a run", used_folder, ("used", "already holds a run", "--resume")),
    Case("out_dir locked by another run", locked_folder, ("locked", "in use", str(os.getpid()))),
    Case("lr=1e12 diverges", tiny_train(method="natural", lr=1e12, epochs=2, test_attacks=("clean",), log_every=1),
         ("diverged", "epoch 2", "lr 1e+", "untouched"), RuntimeError),
    Case("evaluate NaN model strict", lambda tmp: evaluate(nan_model(), (images(), labels()), strict=True),
         ("non-finite",), RuntimeError),
    Case("evaluate NaN model warns", lambda tmp: evaluate(nan_model(), (images(), labels())),
         ("non-finite",), UserWarning, "warn"),
    Case("evaluate label out of range in a later batch", later_batch_label_out_of_range, ("10", "classes")),
    Case("evaluate unknown attack", lambda tmp: evaluate(tiny_convnet(10, 4), (images(), labels()),
                                                         attacks=("pgd20",)), ("pgd20",)),
    Case("pgd NaN model", lambda tmp: pgd(nan_model(), images(), labels()), ("non-finite",)),
    Case("pgd float64 model, float32 images", lambda tmp: pgd(tiny_convnet(10, 4).double().eval(), images(), labels()),
         ("float64", "float32"), TypeError),
    Case("pgd meta model", meta_model, ("meta",)),
    Case("pgd meta images", lambda tmp: pgd(tiny_convnet(10, 4).eval(), torch.empty(4, 3, 8, 8, device="meta"),
                                            labels()), ("meta",)),
    Case("pgd eps=8", lambda tmp: pgd(tiny_convnet(10, 4).eval(), images(), labels(), eps=8), ("eps", "8")),
]


def cli(*argv):
    return lambda tmp: list(argv)


CLI = [
    Case("--epochs without a value", cli("train", "--epochs"), ("--epochs", "value"), kind="cli"),
    Case("--eps 8/0", cli("train", "--eps", "8/0"), ("eps", "8/0"), kind="cli"),
    Case("--eps 8", cli("train", "--eps", "8"), ("eps",), kind="cli"),
    Case("--epochs abc", cli("train", "--epochs", "abc"), ("epochs", "abc"), kind="cli"),
    Case("--flip maybe", cli("train", "--flip", "maybe"), ("flip", "maybe"), kind="cli"),
    Case("--lr -1", cli("train", "--lr", "-1"), ("lr",), kind="cli"),
    Case("--batch_size 0", cli("train", "--batch_size", "0"), ("batch_size",), kind="cli"),
    Case("--E_itt -5", cli("train", "--E_itt", "-5"), ("E_itt",), kind="cli"),
    Case("--teacher_epochs 0", cli("train", "--teacher_epochs", "0"), ("teacher_epochs",), kind="cli"),
    Case("--seed -1", cli("train", "--seed", "-1"), ("seed",), kind="cli"),
    Case("--precision fp16", cli("train", "--precision", "fp16"), ("precision", "fp16"), kind="cli"),
    Case("--method magic", cli("train", "--method", "magic"), ("magic",), kind="cli"),
    Case("--student resnet19", cli("train", "--student", "resnet19"), ("resnet19",), kind="cli"),
    Case("--test_attacks clean,pgd20", cli("train", "--test_attacks", "clean,pgd20"), ("pgd20",), kind="cli"),
    Case("--epochz 3", cli("train", "--epochz", "3"), ("epochz",), kind="cli"),
    Case("stray positional", cli("train", "extra"), ("extra",), kind="cli"),
    Case("--config bad YAML", lambda tmp: ["train", "--config", write(tmp, "bad.yaml", "a: [1,\n")],
         ("bad.yaml", "yaml"), kind="cli"),
    Case("--config missing", lambda tmp: ["train", "--config", str(tmp / "missing.yaml")], ("missing.yaml",),
         kind="cli"),
    Case("--resume missing", lambda tmp: ["train", "--resume", str(tmp / "none.pt")], ("none.pt",), kind="cli"),
    Case("--resume empty file", lambda tmp: ["train", "--resume", write(tmp, "empty.pt", b"")], ("empty.pt",),
         kind="cli"),
    Case("--device cuda without a GPU", lambda tmp: ["train", *CLI_TINY, "--device", "cuda",
                                                     "--out_dir", str(tmp / "gpu")], ("cuda",), kind="cli"),
    Case("--robust_teacher empty file", lambda tmp: ["train", *CLI_TINY, "--robust_teacher", write(tmp, "t.pt", b""),
                                                     "--out_dir", str(tmp / "t")], ("robust_teacher", "t.pt"),
         kind="cli"),
    Case("--out_dir holding a run", lambda tmp: ["train", *CLI_TINY, "--out_dir", str(_used(tmp))],
         ("already holds a run", "--overwrite"), kind="cli"),
    Case("teacher --method ciard", cli("teacher", "--method", "ciard", "--model", "small_cnn"), ("ciard",), kind="cli"),
    Case("teacher without --model", cli("teacher", "--method", "sat"), ("--model",), kind="cli"),
    Case("--clean_teacher_args.widht", cli("train", "--clean_teacher_args.widht", "4"),
         ("clean_teacher_args", "widht"), kind="cli"),
    Case("eval --weights missing", lambda tmp: ["eval", "--weights", str(tmp / "w.pt"), "--model", "small_cnn",
                                                "--dataset", "digits"], ("w.pt",), kind="cli"),
]


def _used(tmp):
    folder = tmp / "used-cli"
    folder.mkdir(exist_ok=True)
    (folder / "best.pt").write_bytes(b"an earlier run")
    return folder


# ---- the second battery (issue 20): files read, paths written, the CLI's convention, ----------
# checks before training, settings that would be ignored. Ids start with the class they test.
class _Late(Exception):
    """The error came, but only after something had trained: not a clear, early answer."""


def finished_run(tmp, name="done", **kw):
    """A finished tiny run (natural: no teachers) whose folder holds last.pt, best.pt, results.*"""
    folder = tmp / name
    if not (folder / "best.pt").is_file():
        ciard_fast.train({**TINY, "method": "natural", "test_attacks": ("clean",), "out_dir": str(folder), **kw})
    return folder


def student_run(tmp):
    """A finished tiny distillation run (ARD, its robust teacher trained first): what export is for."""
    folder = tmp / "student"
    if not (folder / "best.pt").is_file():
        ciard_fast.train({**TINY, "method": "ard", "test_attacks": ("clean",), "out_dir": str(folder)})
    return folder


def state_dict_file(tmp, name="w.pt"):
    from ciard_fast.models import create_model

    path = tmp / name
    torch.save(create_model("small_cnn", num_classes=10).state_dict(), path)
    return str(path)


def damaged(tmp, name, kind):
    """A file named `name` that is empty, truncated, text, a folder, or a pickle without weights."""
    path = tmp / name
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = open(state_dict_file(tmp, "whole.pt"), "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "folder":
        path.mkdir()
    elif kind == "no weights":
        torch.save({"epoch": 3, "note": "no tensors here"}, path)
    return str(path)


def load_weights_from(kind):
    def run(tmp):
        from ciard_fast.models import create_model, load_weights

        return load_weights(create_model("small_cnn", width=4), damaged(tmp, "w.pt", kind))
    return run


def resume_from(kind):
    return lambda tmp: ciard_fast.train(resume=damaged(tmp, "last.pt", kind))


def resume_without_keys(tmp):
    from ciard_fast.engine.checkpoint import save_checkpoint

    path = tmp / "last.pt"
    save_checkpoint(path, {"config": TrainConfig(**{**TINY, "out_dir": str(tmp)}).to_dict(), "epoch": 1})
    return ciard_fast.train(resume=str(path))


def early(fn, *must_not_exist):
    """`fn` must fail before any of `must_not_exist` (folders a teacher or run trains in) appears."""
    def run(tmp):
        try:
            return fn(tmp)
        except Exception:
            late = [p for p in must_not_exist if (tmp / p).exists()]
            if late:
                raise _Late(f"failed only after {late} had been trained")
            raise
    return run


def robust_teacher_file(kind):
    def run(tmp):
        return ciard_fast.train({**TINY, "robust_teacher": damaged(tmp, "robust.pt", kind), "out_dir": str(tmp / "run")})
    return run


def robust_teacher_of_another_architecture(tmp):
    from ciard_fast.models import create_model

    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp / "resnet20.pt")
    return ciard_fast.train({**TINY, "robust_teacher": str(tmp / "resnet20.pt"), "out_dir": str(tmp / "run")})


def cifar_folder(tmp, broken=None, kind=None):
    """A small cifar-10-batches-py under tmp/data; `broken` (a file name) made `kind`."""
    import pickle

    import numpy as np

    folder = tmp / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    if broken:
        path = folder / broken
        data = path.read_bytes()
        path.unlink()
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif kind == "text":
            path.write_text("not a pickle\n")
        elif kind == "folder":
            path.mkdir()
        elif kind == "no labels":
            path.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)}, protocol=2))
    return str(tmp / "data")


def load_cifar(broken, kind):
    split = "test" if broken == "test_batch" else "train_full"
    return lambda tmp: ciard_fast.load_dataset("cifar10", root=cifar_folder(tmp, broken, kind), split=split,
                                               download=False)


def tiny_imagenet(tmp, wnids="n01\n", image=None, cache=None):
    """A one-class tiny-imagenet-200 under tmp/data: `image` bytes for its one training image
    (default a real PNG); `cache` "truncated" writes a cut .npy cache."""
    import numpy as np
    from PIL import Image

    root = tmp / "data" / "tiny-imagenet-200"
    images = root / "train" / "n01" / "images"
    images.mkdir(parents=True)
    if wnids is None:
        (root / "wnids.txt").mkdir()
    else:
        (root / "wnids.txt").write_text(wnids)
    if image is None:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    else:
        (images / "a.JPEG").write_bytes(image)
    if cache == "truncated":
        cache_dir = root / "ciard_fast_cache_v1"
        cache_dir.mkdir()
        np.save(cache_dir / "train_labels.npy", np.zeros(1, np.int64))
        np.save(cache_dir / "train_images.npy", np.zeros((1, 8, 8, 3), np.uint8))
        data = (cache_dir / "train_images.npy").read_bytes()
        (cache_dir / "train_images.npy").write_bytes(data[:60])
    return str(tmp / "data")


def load_tiny(**kw):
    return lambda tmp: ciard_fast.load_dataset("tinyimagenet", root=tiny_imagenet(tmp, **kw), split="train_full",
                                               val_size=0, download=False)


def teachers_json_damaged(tmp):
    run = ciard_fast.train({**TINY, "robust_teacher_normalize": "auto", "robust_teacher": None, "epochs": 2,
                            "stop_after": 1, "out_dir": str(tmp / "run")})
    (tmp / "run" / "teachers.json").write_text("{not json")
    return ciard_fast.train(resume=run.last_checkpoint)


class _TupleModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_convnet(10, 4).eval()

    def forward(self, x):
        return self.net(x), x.mean()


def compare_late_bad_option(tmp):
    from ciard_fast.engine.compare import compare

    return compare("natural,rslad", preset=None, out_dir=str(tmp / "cmp"),
                   **{**TINY, "test_attacks": ("clean",), "kd_scale": -1.0})


def compare_truncated_teacher(tmp):
    from ciard_fast.engine.compare import compare

    return compare("ard", preset=None, out_dir=str(tmp / "cmp"),
                   **{**TINY, "test_attacks": ("clean",), "robust_teacher": damaged(tmp, "robust.pt", "truncated")})


def compare_in_a_run_folder(tmp):
    from ciard_fast.engine.compare import compare

    return compare("natural", preset=None, out_dir=str(finished_run(tmp)), **{**TINY, "test_attacks": ("clean",)})


def compare_without_attacks(tmp):
    from ciard_fast.engine.compare import compare

    return compare("natural", preset=None, out_dir=str(tmp / "cmp"), **{**TINY, "test_attacks": ()})


def overwrite_deletes_the_teacher_it_reads(tmp):
    folder = finished_run(tmp)
    return ciard_fast.train({**TINY, "method": "ard", "robust_teacher": str(folder / "best.pt"),
                             "out_dir": str(folder), "overwrite": True})


def out_dir_is_a_file(tmp):
    (tmp / "afile").write_text("x")
    return ciard_fast.train({**TINY, "out_dir": str(tmp / "afile")})


def resume_elsewhere(tmp):
    run = finished_run(tmp, epochs=2, stop_after=1)
    return ciard_fast.train(resume=str(run / "last.pt"), out_dir=str(tmp / "elsewhere"))


def unused_teacher(tmp):
    return ciard_fast.train({**TINY, "method": "natural", "test_attacks": ("clean",),
                             "robust_teacher": state_dict_file(tmp), "out_dir": str(tmp / "run")})


def export_argv(checkpoint, out, *extra):
    return ["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out), *extra]


def eval_argv(weights, *extra):
    return ["eval", "--weights", str(weights), "--model", "small_cnn", "--dataset", "digits", "--n", "4",
            "--attacks", "clean", *extra]


def export_mid_epoch(tmp):
    from ciard_fast.engine.checkpoint import load_checkpoint, save_checkpoint

    run = student_run(tmp)
    save_checkpoint(tmp / "early" / "last.pt", dict(load_checkpoint(run / "last.pt"), epoch=0))
    return export_argv(tmp / "early" / "last.pt", tmp / "e.safetensors")


SECOND = [
    # 1. nothing a user owns is overwritten
    Case("1 export --out = the checkpoint it reads", lambda tmp: export_argv(student_run(tmp) / "best.pt",
                                                                            student_run(tmp) / "best.pt"),
         ("best.pt", "reads"), kind="cli"),
    Case("1 export --out = last.pt of the run", lambda tmp: export_argv(student_run(tmp) / "best.pt",
                                                                       student_run(tmp) / "last.pt"),
         ("last.pt", "run folder"), kind="cli"),
    Case("1 export --out = results.json of the run", lambda tmp: export_argv(student_run(tmp) / "best.pt",
                                                                            student_run(tmp) / "results.json"),
         ("results.json", "run folder"), kind="cli"),
    Case("1 export --out into the run's teachers/", lambda tmp: export_argv(
        student_run(tmp) / "best.pt", student_run(tmp) / "teachers" / "robust" / "last.pt"), ("teachers/",),
        kind="cli"),
    Case("1 eval --json = the weights it reads", lambda tmp: eval_argv(state_dict_file(tmp), "--json",
                                                                       str(tmp / "w.pt")),
         ("--json", "reads"), kind="cli"),
    Case("1 eval --json = results.md of a run", lambda tmp: eval_argv(finished_run(tmp) / "best.pt", "--json",
                                                                      str(finished_run(tmp) / "results.md")),
         ("results.md", "run folder"), kind="cli"),
    Case("1 out_dir is a file", out_dir_is_a_file, ("afile", "is a file")),
    Case("1 overwrite would delete the teacher file it reads", overwrite_deletes_the_teacher_it_reads,
         ("best.pt", "overwrite")),
    Case("1 compare out_dir = a training run's folder", compare_in_a_run_folder, ("holds a training run",)),
    # 3. the command line means what it says
    Case("3 compare --method (a prefix of --methods)", cli("compare", "--method", "ard"), ("--methods",), kind="cli"),
    Case("3 eval --weight (a prefix of --weights)", cli("eval", "--weight", "w.pt"), ("--weights",), kind="cli"),
    Case("3 export --check (a prefix of --checkpoint)", cli("export", "--check", "c.pt", "--format", "onnx",
                                                            "--out", "x.onnx"), ("--checkpoint",), kind="cli"),
    Case("3 train --pre (a prefix of --preset)", cli("train", "--pre", "demo"), ("pre",), kind="cli"),
    Case("3 train --lr abc", cli("train", "--lr", "abc"), ("--lr", "number"), kind="cli"),
    Case("3 train --eps nan", cli("train", "--eps", "nan"), ("--eps", "finite"), kind="cli"),
    Case("3 train --alpha inf", cli("train", "--alpha", "inf"), ("--alpha", "finite"), kind="cli"),
    Case("3 train --epochs 2.5", cli("train", "--epochs", "2.5"), ("--epochs", "integer"), kind="cli"),
    Case("3 eval --n abc", lambda tmp: eval_argv(state_dict_file(tmp), "--n", "abc"), ("--n", "integer"),
         kind="cli"),
    Case("3 eval --seed -1", lambda tmp: eval_argv(state_dict_file(tmp), "--seed", "-1"), ("--seed", ">= 0"),
         kind="cli"),
    Case("3 eval --strict maybe", lambda tmp: eval_argv(state_dict_file(tmp), "--strict", "maybe"),
         ("--strict", "true or false"), kind="cli"),
    # 4. every file the library reads fails clearly
    Case("4 load_weights: empty file", load_weights_from("empty"), ("w.pt", "empty")),
    Case("4 load_weights: truncated file", load_weights_from("truncated"), ("w.pt", "truncated")),
    Case("4 load_weights: a text file", load_weights_from("text"), ("w.pt", "text file")),
    Case("4 load_weights: a folder", load_weights_from("folder"), ("w.pt", "folder")),
    Case("4 load_weights: a pickle without weights", load_weights_from("no weights"), ("w.pt", "state_dict")),
    Case("4 resume: a folder", resume_from("folder"), ("last.pt", "folder")),
    Case("4 resume: truncated", resume_from("truncated"), ("last.pt", "truncated")),
    Case("4 resume: a text file", resume_from("text"), ("last.pt", "text file")),
    Case("4 resume: a checkpoint without its state", resume_without_keys, ("last.pt", "cannot be resumed")),
    Case("4 robust_teacher: truncated", robust_teacher_file("truncated"), ("robust_teacher", "truncated")),
    Case("4 robust_teacher: a folder", robust_teacher_file("folder"), ("robust_teacher", "folder")),
    Case("4 robust_teacher: a text file", robust_teacher_file("text"), ("robust_teacher", "text file")),
    Case("4 CIFAR batch: empty", load_cifar("data_batch_2", "empty"), ("data_batch_2", "empty")),
    Case("4 CIFAR batch: truncated", load_cifar("data_batch_3", "truncated"), ("data_batch_3", "truncated")),
    Case("4 CIFAR batch: text", load_cifar("test_batch", "text"), ("test_batch", "not a CIFAR batch")),
    Case("4 CIFAR batch: a folder", load_cifar("data_batch_1", "folder"), ("data_batch_1", "folder")),
    Case("4 CIFAR batch: no labels", load_cifar("data_batch_4", "no labels"), ("data_batch_4", "labels")),
    Case("4 data root is a file", lambda tmp: ciard_fast.load_dataset("cifar10", root=write(tmp, "root", "x"),
                                                                       download=False), ("root", "is a file")),
    Case("4 Tiny-ImageNet wnids.txt empty", load_tiny(wnids=""), ("wnids.txt", "no wnids")),
    Case("4 Tiny-ImageNet wnids.txt a folder", load_tiny(wnids=None), ("wnids.txt", "folder")),
    Case("4 Tiny-ImageNet image is text", load_tiny(image=b"not an image"), ("a.JPEG", "not a readable image")),
    Case("4 Tiny-ImageNet cache truncated", load_tiny(cache="truncated"), ("cache", "decoding the images again"),
         UserWarning, "warn"),
    Case("4 YAML: empty", lambda tmp: build_config(config_file=write(tmp, "empty.yaml", "")),
         ("empty.yaml", "empty")),
    Case("4 YAML: a folder", lambda tmp: build_config(config_file=str(tmp)), ("folder",)),
    Case("4 YAML: binary", lambda tmp: build_config(config_file=write(tmp, "bin.yaml", b"\xff\xfe\x00\x81")),
         ("bin.yaml", "could not be read")),
    Case("4 teachers.json damaged on resume", teachers_json_damaged, ("teachers.json",)),
    Case("4 eval --weights empty", lambda tmp: eval_argv(damaged(tmp, "w.pt", "empty")), ("w.pt", "empty"),
         kind="cli"),
    Case("4 eval --weights a folder", lambda tmp: eval_argv(damaged(tmp, "w.pt", "folder")), ("w.pt", "folder"),
         kind="cli"),
    Case("4 export --checkpoint truncated", lambda tmp: export_argv(damaged(tmp, "c.pt", "truncated"),
                                                                   tmp / "x.safetensors"),
         ("c.pt", "truncated"), kind="cli"),
    Case("4 eval --device cuda without a GPU", lambda tmp: eval_argv(state_dict_file(tmp), "--device", "cuda"),
         ("cuda",), kind="cli"),
    Case("4 eval --device gpu", lambda tmp: eval_argv(state_dict_file(tmp), "--device", "gpu"), ("device", "gpu"),
         kind="cli"),
    Case("4 teacher --device cuda without a GPU", lambda tmp: ["teacher", "--method", "natural", "--model",
                                                               "small_cnn", *CLI_TINY, "--device", "cuda",
                                                               "--out_dir", str(tmp / "t")], ("cuda",), kind="cli"),
    Case("4 compare --device cuda without a GPU", lambda tmp: ["compare", "--methods", "natural", *CLI_TINY,
                                                               "--device", "cuda", "--out_dir", str(tmp / "c")],
         ("cuda",), kind="cli"),
    # 5. everything checked before anything trains
    Case("5 truncated robust teacher, no clean teacher", early(robust_teacher_file("truncated"), "run/teachers/clean"),
         ("robust_teacher", "truncated")),
    Case("5 robust teacher of another architecture", early(robust_teacher_of_another_architecture,
                                                           "run/teachers/clean"), ("robust_teacher", "fit")),
    Case("5 a student width the model rejects: before the teachers train",
         early(tiny_train(student_args={"width": "abc"}), "run/teachers"), ("student_args", "width")),
    Case("5 out_dir holds a run: before the teachers train", early(used_folder, "used/teachers"),
         ("used", "already holds a run")),
    Case("5 compare: a bad option of the second method", early(compare_late_bad_option, "cmp/natural"),
         ("kd_scale",)),
    Case("5 compare: a truncated teacher file", early(compare_truncated_teacher, "cmp/ard"),
         ("robust_teacher", "truncated")),
    # 6. nothing the user set is silently ignored
    Case("6 robust_teacher given to natural", unused_teacher, ("robust_teacher", "natural"), UserWarning, "warn"),
    Case("6 out_dir with resume", resume_elsewhere, ("out_dir", "resume")),
    Case("6 --out_dir with --resume", lambda tmp: ["train", "--resume", str(finished_run(tmp) / "last.pt"),
                                                   "--out_dir", str(tmp / "elsewhere")], ("out_dir", "resume"),
         kind="cli"),
    Case("6 --test_attacks ''", cli("train", "--test_attacks", ""), ("--test_attacks", "none"), kind="cli"),
    Case("6 eval --attacks ''", lambda tmp: eval_argv(state_dict_file(tmp), "--attacks", ","), ("--attacks",),
         kind="cli"),
    Case("6 evaluate(attacks='')", lambda tmp: evaluate(tiny_convnet(10, 4).eval(), (images(), labels()),
                                                        attacks=""), ("attacks",)),
    Case("6 compare with no test attack", compare_without_attacks, ("test attack",)),
    Case("6 YAML key given twice", lambda tmp: build_config(config_file=write(tmp, "dup.yaml",
                                                                              "epochs: 3\nlr: 0.1\nepochs: 5\n")),
         ("dup.yaml", "epochs", "twice")),
    Case("6 YAML method_args not a mapping", lambda tmp: build_config(config_file=write(tmp, "ma.yaml",
                                                                                        "method_args: 3\n")),
         ("method_args", "mapping"), TypeError),
    Case("6 method_args=[1, 2]", cfg(method_args=[1, 2]), ("method_args", "mapping"), TypeError),
    Case("6 pgd: forward returns a tuple", lambda tmp: pgd(_TupleModel(), images(), labels()), ("tuple", "logits"),
         TypeError),
    Case("6 evaluate: forward returns a tuple", lambda tmp: evaluate(_TupleModel(), (images(), labels())),
         ("tuple", "logits"), TypeError),
    # 7. export refuses what is not a trained model
    Case("7 export a checkpoint from before the first epoch", export_mid_epoch, ("no trained model",), kind="cli"),
]

CASES = PY + CLI + SECOND


def _names_in(message, names):
    return all(n.lower() in message.lower() for n in names)


def outcome(case, tmp):
    """'clear', 'confusing' or 'silent' (see the module docstring)."""
    if case.kind == "cli":
        from ciard_fast.cli import main

        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = main(case.run(tmp))
        except SystemExit as exit_:
            code = exit_.code
        except _Proceeded:
            return "silent"
        except BaseException:  # an uncaught exception is a traceback for the user
            return "confusing"
        text = err.getvalue().strip()
        if code == 0:
            return "silent"
        one_line = len(text.splitlines()) == 1 and "Traceback" not in text
        return "clear" if code == 2 and one_line and _names_in(text, case.names) else "confusing"
    if case.kind == "warn":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                case.run(tmp)
            except Exception:
                return "confusing"
        hits = [w for w in caught if issubclass(w.category, case.exc) and _names_in(str(w.message), case.names)]
        return "clear" if hits else "silent"
    try:
        case.run(tmp)
    except _Proceeded:
        return "silent"
    except Exception as exc:  # noqa: BLE001 (classifying any failure is the point)
        return "clear" if isinstance(exc, case.exc) and _names_in(str(exc), case.names) else "confusing"
    return "silent"


def test_the_table_is_large_enough():
    assert len(CASES) >= 188 and len(CLI) >= 20 and len(SECOND) >= 72
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_clearly(case, tmp_path):
    result = outcome(case, tmp_path)
    if result != "clear" and case.kind != "warn":  # show what the user would have seen
        if case.kind == "cli":
            from ciard_fast.cli import main

            main(case.run(tmp_path))
        else:
            case.run(tmp_path)
    assert result == "clear", case.id


def test_the_classifier_can_fail(tmp_path):
    """A case whose input is fine is 'silent'; a wrong expected name is 'confusing'."""
    assert outcome(Case("fine", cfg(epochs=3), ("epochs",)), tmp_path) == "silent"
    assert outcome(Case("wrong name", cfg(epochs=0), ("lr",)), tmp_path) == "confusing"
    assert outcome(Case("wrong type", cfg(epochs=0), ("epochs",), TypeError), tmp_path) == "confusing"


class _Proceeded(Exception):
    """Raised instead of training a full-size run: the input was accepted (silent)."""


def _stop_full_size_runs():
    """For counting on code that accepts bad input: a case that gets as far as training anything
    but the tiny synthetic set is 'silent' at that point (instead of training the demo for minutes)."""
    from ciard_fast.engine import api

    real = api._run

    def guarded(config, *args, **kwargs):
        if config.dataset != "synthetic":
            raise _Proceeded(f"training started with {config.dataset}")
        return real(config, *args, **kwargs)

    api._run = guarded


if __name__ == "__main__":  # python tests/test_bad_input.py: the counts
    import tempfile

    torch.set_num_threads(1)
    _stop_full_size_runs()
    counts, details = {"clear": 0, "confusing": 0, "silent": 0}, []
    for i, case in enumerate(CASES):
        with tempfile.TemporaryDirectory() as d:
            import pathlib

            cwd = os.getcwd()
            os.chdir(d)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = outcome(case, pathlib.Path(d))
            finally:
                os.chdir(cwd)
        counts[result] += 1
        details.append(f"{result:9s} {case.kind:4s} {case.id}")
    print("\n".join(details))
    print(f"cases tried {len(CASES)} / clear {counts['clear']} / confusing {counts['confusing']} / "
          f"silent {counts['silent']}")
