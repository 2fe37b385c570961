"""The training engine: exact resume, checkpoints, logs, config handling, the train/teacher CLI."""
import json
import os

import pytest
import torch

import ciard_fast
from ciard_fast.config import TrainConfig, build_config, list_presets
from ciard_fast.engine.checkpoint import load_checkpoint, save_checkpoint

# A run small enough for seconds on a CPU: 16×16 synthetic images, tiny models, 2-step attack.
TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 96, "num_test": 32, "image_size": 16}, val_size=32,
    student="small_cnn", student_args={"width": 4},
    robust_teacher_model="small_cnn", robust_teacher_args={"width": 4}, robust_teacher_normalize=True,
    clean_teacher_model="small_cnn", clean_teacher_args={"width": 4},
    teacher_epochs=1, epochs=4, batch_size=32, attack_steps=2, eval_pgd_steps=2, eval_every=1,
    test_attacks=("clean", "pgd_sat"), test_n=16, compare_natural_student=False,
    progress=False, plot=False, device="cpu",
    E_itt=1,  # ITT from epoch 2: the robust teacher changes during the run, and must resume exactly
)


def tiny_config(tmp_path, name, **overrides):
    return build_config(overrides={**TINY, "out_dir": str(tmp_path / name), **overrides})


def states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bit_exact(tmp_path):
    full = ciard_fast.train(tiny_config(tmp_path, "full"))
    # the same run stopped after epoch 2, then resumed for the remaining 2 epochs
    ciard_fast.train(tiny_config(tmp_path, "split", stop_after=2))
    first_half = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first_half["epoch"] == 2
    resumed = ciard_fast.train(resume=str(tmp_path / "split" / "last.pt"))
    a = load_checkpoint(full.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert a["epoch"] == b["epoch"] == 4 and a["step"] == b["step"]
    states_equal(a["student"], b["student"])
    states_equal(a["method"]["robust_teacher"], b["method"]["robust_teacher"])  # ITT-trained: it moved
    for key in ("tau_adv", "tau_nat", "weights", "initial_losses", "push_lambda"):
        assert torch.equal(a["method"][key], b["method"][key]), key
    assert [r["train_student_loss"] for r in a["history"]] == [r["train_student_loss"] for r in b["history"]]
    assert full.metrics == resumed.metrics
    # the robust teacher really was retrained (ITT), so the comparison above is not vacuous
    teacher0 = load_checkpoint(tmp_path / "full" / "teachers" / "robust" / "last.pt")["student"]
    assert any(not torch.equal(teacher0[k], a["method"]["robust_teacher"][k]) for k in teacher0)


def test_run_writes_logs_checkpoints_and_results(tmp_path):
    result = ciard_fast.train(tiny_config(tmp_path, "run", epochs=2, plot=True))
    out = tmp_path / "run"
    for name in ("last.pt", "best.pt", "metrics.csv", "metrics.jsonl", "results.json", "results.md"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"val_clean", "val_pgd", "train_L_adv", "tau_adv", "w_adv", "lambda"} <= set(rows[0])
    assert set(result.metrics) >= {"clean", "pgd_sat"}
    assert 0 <= result.metrics["pgd_sat"] <= result.metrics["clean"] <= 100
    assert "| ciard student (small_cnn) |" in result.table
    ck = load_checkpoint(result.last_checkpoint)
    assert {"student", "optimizer", "method", "rng", "config", "version", "epoch", "step"} <= set(ck)
    assert {"robust_teacher", "clean_teacher", "teacher_optimizer"} <= set(ck["method"])
    # a teacher cached by the first run is reused (not retrained) by the next run with the same settings
    teacher = out / "teachers" / "robust" / "last.pt"
    stamp = os.path.getmtime(teacher)
    ciard_fast.train(tiny_config(tmp_path, "run", epochs=1, test_attacks=(), overwrite=True))
    assert os.path.getmtime(teacher) == stamp


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    ciard_fast.train(tiny_config(tmp_path, "run", epochs=1, test_attacks=()))
    last = tmp_path / "run" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, as by a crash mid-copy
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ciard_fast.train(resume=str(last))
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert before == after
    with pytest.raises(ValueError, match="does not exist"):
        ciard_fast.train(resume=str(tmp_path / "missing.pt"))
    torch.save({"weight": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a ciard-fast training checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.ones(2)})

    def exploding_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_resume_refuses_a_changed_architecture(tmp_path):
    ciard_fast.train(tiny_config(tmp_path, "run", epochs=1, test_attacks=()))
    with pytest.raises(ValueError, match="cannot change 'student'"):
        ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"), student="resnet18")


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ValueError, match="unknown config key 'epoch'.*Did you mean epochs"):
        build_config(overrides={"epoch": 3})
    with pytest.raises(ValueError, match="T_push"):  # a CIARD option is not a TRADES one
        build_config(overrides={"method": "trades", "T_push": 3})
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        build_config(preset="nope")
    with pytest.raises(ValueError, match="eps must be in"):
        build_config(overrides={"eps": 8})
    with pytest.raises(ValueError, match="unknown method"):
        build_config(overrides={"method": "magic"})
    cfg = build_config(preset="cifar10-resnet18", overrides={"T_push": 3, "itt": False})
    assert cfg.method_args == {"T_push": 3, "itt": False} and cfg.epochs == 300


def test_presets_all_build():
    names = list_presets()
    for required in ("demo", "cifar10-resnet18", "cifar10-mobilenetv2", "cifar100-resnet18",
                     "cifar100-mobilenetv2", "tinyimagenet-resnet18", "tinyimagenet-mobilenetv2"):
        assert required in names
    for name in names:
        assert isinstance(TrainConfig.from_preset(name), TrainConfig)


def test_cli_train_and_teacher(tmp_path, capsys):
    from ciard_fast.cli import main

    args = ["--dataset", "synthetic", "--dataset_args", "{num_samples: 64, num_test: 16, image_size: 16}",
            "--val_size", "16", "--epochs", "1", "--batch_size", "32", "--attack_steps", "1",
            "--eval_pgd_steps", "1", "--test_attacks", "clean,fgsm", "--progress", "false", "--plot", "false"]
    code = main(["teacher", "--method", "sat", "--model", "small_cnn", "--student_args.width", "4",
                 "--out-dir", str(tmp_path / "teacher"), *args])
    assert code == 0
    out = capsys.readouterr().out
    assert "teacher checkpoint:" in out and "| sat student (small_cnn) |" in out
    teacher = str(tmp_path / "teacher" / "best.pt")
    code = main(["train", "--preset", "demo", *args, "--student_args.width", "4", "--robust_teacher", teacher,
                 "--robust_teacher_model", "small_cnn", "--robust_teacher_args.width", "4",
                 "--clean_teacher", teacher, "--clean_teacher_model", "small_cnn", "--clean_teacher_args.width", "4",
                 "--clean_teacher_normalize", "true", "--robust_teacher_normalize", "true",
                 "--compare_natural_student", "false", "--T_push", "2.5", "--out_dir", str(tmp_path / "student"),
                 "--allow_weak_teacher", "true"])  # a 1-epoch teacher on 48 images is near chance
    assert code == 0
    assert "| ciard student (small_cnn) |" in capsys.readouterr().out
    saved = load_checkpoint(tmp_path / "student" / "last.pt")["config"]
    assert saved["method_args"] == {"T_push": 2.5} and saved["robust_teacher"] == teacher


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    from ciard_fast.cli import main

    assert main(["train", "--epochz", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'epochz'" in err and "Traceback" not in err
    assert main(["train", "--resume", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_cli_reads_a_training_checkpoint(tmp_path, capsys):
    """`ciard-fast eval --weights last.pt` rebuilds the run's model (with its kwargs) and dataset."""
    from ciard_fast.cli import main

    ciard_fast.train(tiny_config(tmp_path, "run", epochs=1, test_attacks=()))
    code = main(["eval", "--weights", str(tmp_path / "run" / "last.pt"), "--attacks", "clean,fgsm",
                 "--n", "16", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| clean |" in out.lower() and "model small_cnn" in out
