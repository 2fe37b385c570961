"""Bad input over the Python API and the CLI: each case must fail at once with the right exception
type (CLI: exit 2 and one line, no traceback) and a message naming the offending field or value.

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


CASES = PY + CLI


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
    assert len(CASES) >= 60 and len(CLI) >= 20
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
