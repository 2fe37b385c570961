"""Check everything before training anything (`ciard_fast/engine/preflight.py`), compare's own
teachers and interruptions, and settings that would otherwise be silently ignored."""
import json
import os
import pickle
import signal
import warnings

import numpy as np
import pytest
import torch

import ciard_fast
from ciard_fast.engine import api
from ciard_fast.engine.compare import compare
from ciard_fast.engine.preflight import UnusedSettingWarning
from ciard_fast.engine.signals import RunInterrupted

from _cli import run_cli

TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 96, "num_test": 32, "image_size": 16}, val_size=32,
    student="small_cnn", student_args={"width": 4}, robust_teacher_model="small_cnn",
    robust_teacher_args={"width": 4}, robust_teacher_normalize=True, clean_teacher_model="small_cnn",
    clean_teacher_args={"width": 4}, teacher_epochs=1, epochs=1, batch_size=32, attack_steps=1, eval_pgd_steps=1,
    test_attacks=("clean",), progress=False, plot=False, device="cpu",
)


@pytest.fixture
def trained(monkeypatch):
    """The run configs `_run` (the engine's one way into training) was called with, in order."""
    calls = []
    real = api._run

    def spy(config, *args, **kwargs):
        calls.append(config)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(api, "_run", spy)
    return calls


def truncated_weights(path, model="small_cnn", **kw):
    from ciard_fast.models import create_model

    torch.save(create_model(model, num_classes=10, **kw).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


cli = run_cli


# ---- 5. before the first teacher or student trains -------------------------------------------------
def test_a_truncated_robust_teacher_fails_before_the_clean_teacher_trains(tmp_path, trained):
    robust = truncated_weights(tmp_path / "robust.pt", width=4)
    with pytest.raises(ValueError, match=r"robust_teacher=.*robust\.pt.*truncated or corrupt"):
        ciard_fast.train({**TINY, "robust_teacher": robust, "out_dir": str(tmp_path / "run")})
    assert trained == [] and not (tmp_path / "run" / "teachers").exists()


def test_the_same_on_the_command_line_is_one_line(tmp_path, trained):
    robust = truncated_weights(tmp_path / "robust.pt", width=4)
    code, _, err = cli("train", "--dataset", "synthetic", "--dataset_args", "{num_samples: 96, image_size: 16}",
                       "--student", "small_cnn", "--robust_teacher_model", "small_cnn",
                       "--robust_teacher_args.width", "4", "--robust_teacher", robust, "--clean_teacher_model",
                       "small_cnn", "--device", "cpu", "--out_dir", str(tmp_path / "run"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "robust_teacher=" in err and "truncated" in err
    assert trained == [] and not (tmp_path / "run").exists()


def test_a_teacher_file_of_another_architecture_fails_before_anything_trains(tmp_path, trained):
    from ciard_fast.models import create_model

    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp_path / "resnet20.pt")
    with pytest.raises(ValueError, match=r"robust_teacher=.*resnet20\.pt.*robust_teacher_model='small_cnn'.*"
                                         r"does not fit"):
        ciard_fast.train({**TINY, "robust_teacher": str(tmp_path / "resnet20.pt"), "out_dir": str(tmp_path / "run")})
    assert trained == []


def test_a_used_or_locked_out_dir_fails_before_the_teachers_train(tmp_path, trained):
    used = tmp_path / "used"
    used.mkdir()
    (used / "best.pt").write_bytes(b"an earlier run")
    with pytest.raises(ValueError, match="already holds a run"):
        ciard_fast.train({**TINY, "out_dir": str(used)})
    locked = tmp_path / "locked"
    locked.mkdir()
    import socket

    (locked / "run.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname() + "-elsewhere"}))
    with pytest.raises(ValueError, match="in use by another run"):
        ciard_fast.train({**TINY, "out_dir": str(locked)})
    assert trained == [] and not (used / "teachers").exists() and not (locked / "teachers").exists()


def test_a_damaged_data_file_fails_before_the_teachers_train(tmp_path, trained):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((8, 3072), np.uint8), b"labels": list(range(8))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:50])
    config = {**TINY, "dataset": "cifar10", "dataset_args": {}, "val_size": 8, "data_root": str(tmp_path / "data"),
              "out_dir": str(tmp_path / "run")}
    with pytest.raises(ValueError, match="test_batch is truncated or corrupt"):
        ciard_fast.train(config)
    assert trained == []


def test_a_model_keyword_value_the_model_rejects_fails_before_the_teachers_train(tmp_path, trained):
    with pytest.raises(ValueError, match=r"student_args=\{'width': 'abc'\} for student='small_cnn'.*width"):
        ciard_fast.train({**TINY, "student_args": {"width": "abc"}, "out_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match=r"clean_teacher_args=\{'width': 0\} for clean_teacher_model='small_cnn'"):
        ciard_fast.train({**TINY, "clean_teacher_args": {"width": 0}, "out_dir": str(tmp_path / "run")})
    assert trained == [] and not (tmp_path / "run").exists()


def test_a_missing_device_fails_before_the_teachers_train(tmp_path, trained, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        ciard_fast.train({**TINY, "device": "cuda", "out_dir": str(tmp_path / "run")})
    assert trained == []


def test_compare_checks_every_method_and_teacher_file_before_training(tmp_path, trained):
    with pytest.raises(ValueError, match="kd_scale"):  # rslad's option, checked before natural trains
        compare("natural,rslad", preset=None, out_dir=str(tmp_path / "a"), kd_scale=-1.0, **TINY)
    robust = truncated_weights(tmp_path / "robust.pt", width=4)
    with pytest.raises(ValueError, match=r"robust_teacher=.*truncated"):
        compare("natural,ard", preset=None, out_dir=str(tmp_path / "b"), **{**TINY, "robust_teacher": robust})
    assert trained == []


# ---- 5. compare's own teachers and its interruptions -------------------------------------------------------
def test_compare_warns_about_a_weak_teacher_it_trained_itself_like_train(tmp_path, capsys, monkeypatch):
    """A teacher trained with a vanishing learning rate on 2 classes stays near chance (~50 %, under
    1.5x chance = 75 %): train goes on with a warning for a teacher it trained itself; so does
    compare now (it used to stop, as for a weak file the user brings)."""
    weak = {**TINY, "dataset_args": {**TINY["dataset_args"], "num_classes": 2}, "teacher_lr": 1e-9}
    result = compare("ard", preset=None, out_dir=str(tmp_path / "cmp"), **weak)
    assert "clean" in result.rows["ard"]
    report = json.loads((tmp_path / "cmp" / "ard" / "seed-0" / "teachers.json").read_text())
    assert report["robust"]["weak"] is True  # it was weak: reported, not a stop
    assert "WARNING: weak" in capsys.readouterr().out
    # a weak file the user brings still stops the run (the weak-teacher rule itself is unchanged)
    from ciard_fast.engine import teachers

    monkeypatch.setattr(teachers, "_TRAINED_HERE", set())  # another process: the file is the user's
    with pytest.raises(ValueError, match="allow_weak_teacher"):
        ciard_fast.train({**weak, "method": "ard", "robust_teacher": str(tmp_path / "cmp" / "teachers" / "robust.pt"),
                          "out_dir": str(tmp_path / "user")})


def test_an_interrupted_compare_says_to_rerun_the_same_compare_command(tmp_path, monkeypatch):
    def interrupted(config=None, **kw):
        raise RunInterrupted(signal.SIGINT, os.path.join(config.resolved_out_dir(), "last.pt"), 0, 3)

    monkeypatch.setattr(api, "train", interrupted)
    with pytest.raises(RunInterrupted) as info:
        compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), **TINY)
    assert "the same compare command" in str(info.value) and "train --resume" not in str(info.value)
    code, _, err = cli("compare", "--methods", "natural", "--preset", "demo", "--dataset", "synthetic",
                       "--out_dir", str(tmp_path / "cli"), "--device", "cpu")
    errors = [line for line in err.splitlines() if line.startswith("ciard-fast compare:")]
    assert code == 130 and len(errors) == 1 and "resume with: the same compare command" in errors[0]


def test_a_second_ctrl_c_during_compare_says_to_rerun_it(tmp_path, monkeypatch):
    def second_ctrl_c(config=None, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", second_ctrl_c)
    code, _, err = cli("compare", "--methods", "natural", "--dataset", "synthetic", "--out_dir", str(tmp_path / "c"),
                       "--device", "cpu")
    assert code == 130 and "interrupted; rerun the same compare command" in err


def test_compare_continues_an_interrupted_run_instead_of_retraining_it(tmp_path, capsys):
    from ciard_fast.engine.checkpoint import load_checkpoint, save_checkpoint

    config = {**TINY, "epochs": 2}
    compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), **config)
    folder = tmp_path / "cmp" / "natural" / "seed-0"
    # as a SIGTERM after epoch 1 would have left it: last.pt at epoch 1, no row yet
    state = load_checkpoint(folder / "last.pt")
    save_checkpoint(folder / "last.pt", dict(state, epoch=1, history=state["history"][:1]))
    (folder / "compare_row.json").unlink()
    capsys.readouterr()
    result = compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), **config)
    assert "continuing the interrupted run" in capsys.readouterr().err
    assert result.runs["natural"][0]["epochs"] == 2


def test_a_damaged_row_file_is_said_and_the_run_trained_again(tmp_path, capsys):
    compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), **TINY)
    (tmp_path / "cmp" / "natural" / "seed-0" / "compare_row.json").write_text("{cut")
    compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), **TINY)
    err = capsys.readouterr().err
    assert "compare_row.json could not be read" in err and "training that run again" in err


# ---- 6. nothing the user set is silently ignored ----------------------------------------------------------
def test_a_teacher_file_given_to_a_method_that_uses_none_is_warned_about(tmp_path):
    from ciard_fast.models import create_model

    torch.save(create_model("small_cnn", num_classes=10, width=4).state_dict(), tmp_path / "t.pt")
    with pytest.warns(UnusedSettingWarning, match=r"robust_teacher=.*t\.pt.* is not used: method 'natural'"):
        result = ciard_fast.train({**TINY, "method": "natural", "robust_teacher": str(tmp_path / "t.pt"),
                                   "out_dir": str(tmp_path / "run")})
    assert result.metrics  # a warning, not a stop
    # compare gives a method only the teachers it uses: no warning for its natural row, and that
    # row's config does not claim a teacher it never read
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedSettingWarning)
        result = compare("natural,ard", preset=None, out_dir=str(tmp_path / "cmp"),
                         **{**TINY, "robust_teacher": str(tmp_path / "t.pt"), "allow_weak_teacher": True})
    saved = json.loads((tmp_path / "cmp" / "natural" / "seed-0" / "results.json").read_text())
    assert saved["config"]["robust_teacher"] is None


def test_out_dir_with_resume_is_an_error_unless_it_is_the_runs_folder(tmp_path):
    run = ciard_fast.train({**TINY, "method": "natural", "epochs": 2, "stop_after": 1,
                            "out_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match=r"out_dir .*elsewhere.* given with resume.*continues in the folder"):
        ciard_fast.train(resume=run.last_checkpoint, out_dir=str(tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere").exists()
    resumed = ciard_fast.train(resume=run.last_checkpoint, out_dir=str(tmp_path / "run"))  # the same folder: fine
    assert resumed.history[-1]["epoch"] == 2


def test_empty_attack_lists_are_errors_or_said(tmp_path):
    code, _, err = cli("train", "--test_attacks", "")
    assert code == 2 and "--test_attacks" in err and "none" in err
    code, _, err = cli("train", "--test_attacks", " , ")
    assert code == 2 and "lists nothing" in err
    # `none` asks for no table: the run says how to evaluate it later
    code, out, err = cli("train", "--method", "natural", "--dataset", "synthetic",
                         "--dataset_args", "{num_samples: 96, num_test: 32, image_size: 16}", "--val_size", "32",
                         "--student", "small_cnn", "--student_args.width", "4", "--epochs", "1", "--batch_size", "32",
                         "--test_attacks", "none", "--progress", "false", "--plot", "false", "--device", "cpu",
                         "--out_dir", str(tmp_path / "run"))
    assert code == 0 and "note: no test table (test_attacks is empty)" in err and "ciard-fast eval --weights" in err
    with pytest.raises(ValueError, match="at least one test attack"):
        compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), **{**TINY, "test_attacks": ()})
    with pytest.raises(ValueError, match="attacks lists no column"):
        ciard_fast.evaluate(torch.nn.Linear(4, 2), (torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)),
                            attacks=" , ")


def test_yaml_duplicate_keys_and_method_args_that_are_not_a_mapping(tmp_path):
    from ciard_fast.config import build_config

    (tmp_path / "dup.yaml").write_text("epochs: 3\nlr: 0.1\nepochs: 5\n")
    with pytest.raises(ValueError, match=r"dup\.yaml.*sets 'epochs' twice \(lines 1 and 3\)"):
        build_config(config_file=str(tmp_path / "dup.yaml"))
    (tmp_path / "nested.yaml").write_text("method_args:\n  T_push: 3\n  T_push: 4\n")
    with pytest.raises(ValueError, match="'T_push' twice"):
        build_config(config_file=str(tmp_path / "nested.yaml"))
    # YAML merges (`<<:`) may override keys on purpose: allowed
    (tmp_path / "ok.yaml").write_text("student: small_cnn\nrobust_teacher_model: small_cnn\n"
                                      "student_args: &s {width: 4, stem_stride: 2}\n"
                                      "robust_teacher_args:\n  <<: *s\n  width: 8\n")
    config = build_config(config_file=str(tmp_path / "ok.yaml"))
    assert config.robust_teacher_args == {"width": 8, "stem_stride": 2}
    for text in ("method_args: 3\n", "method_args: [T_push, 3]\n", "base: demo\nmethod_args: oops\n"):
        (tmp_path / "ma.yaml").write_text(text)
        with pytest.raises(TypeError, match=r"ma\.yaml.*method_args must be a mapping"):
            build_config(config_file=str(tmp_path / "ma.yaml"))
    with pytest.raises(TypeError, match="method_args must be a mapping"):
        build_config(overrides={"method_args": "T_push=3"})
