"""Runs that never report a wrong number: run-folder lock and numbered folders, best.pt/last.pt
agreement, divergence, signals and mid-epoch checkpoints, file permissions (in-process; the
subprocess kill loop is in test_kill_resume.py)."""
import json
import os
import signal
import stat
import subprocess
import sys

import pytest
import torch

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine import rundir
from ciard_fast.engine.divergence import DivergenceError
from ciard_fast.engine.signals import RunInterrupted

TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 96, "num_test": 16, "image_size": 16}, val_size=16,
    student="small_cnn", student_args={"width": 4}, method="natural", epochs=3, batch_size=16, attack_steps=1,
    eval_pgd_steps=1, eval_every=1, test_attacks=("clean",), test_n=16, compare_natural_student=False,
    progress=False, plot=False, device="cpu", log_every=2,
)


def tiny(tmp_path, name, **kw):
    return build_config(overrides={**TINY, "out_dir": str(tmp_path / name), **kw})


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- one folder, one run ----------------------------------------------------------------------
def test_lock_names_the_holder_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    with rundir.RunLock(folder) as lock:
        holder = json.loads((folder / "run.lock").read_text())
        assert holder["pid"] == os.getpid() and {"host", "started"} <= set(holder)
        with pytest.raises(rundir.RunFolderError, match=f"in use by another run \\(pid {os.getpid()} on host"):
            rundir.RunLock(folder).acquire()
        assert lock.held
    assert not (folder / "run.lock").exists()
    (folder / "run.lock").write_text(json.dumps({"pid": dead_pid(), "host": holder["host"], "started": "x"}))
    with rundir.RunLock(folder):
        assert json.loads((folder / "run.lock").read_text())["pid"] == os.getpid()
    assert "no longer runs" in capsys.readouterr().err


def test_a_second_run_in_a_locked_folder_stops_at_once(tmp_path):
    config = tiny(tmp_path, "run")
    with rundir.RunLock(tmp_path / "run"):
        with pytest.raises(ValueError, match="in use by another run"):
            ciard_fast.train(config)
    assert sorted(os.listdir(tmp_path / "run")) == []  # nothing written by the refused run


def test_default_folder_moves_to_the_next_numbered_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    overrides = {**TINY, "epochs": 1}
    first = ciard_fast.train("demo", **overrides)
    second = ciard_fast.train("demo", **overrides)
    assert os.path.normpath(first.out_dir) == os.path.join("runs", "demo")
    assert os.path.normpath(second.out_dir) == os.path.join("runs", "demo-2")
    assert "runs/demo already holds a run; this run writes to runs/demo-2" in capsys.readouterr().err
    assert ckpt.load_checkpoint(second.last_checkpoint)["config"]["out_dir"] == second.out_dir


def test_user_folder_with_a_run_is_refused_unless_overwrite(tmp_path):
    ciard_fast.train(tiny(tmp_path, "run", epochs=1, seed=1))
    with pytest.raises(ValueError, match="already holds a run.*--resume .*last.pt.*--overwrite true"):
        ciard_fast.train(tiny(tmp_path, "run", epochs=1, seed=2))
    assert ckpt.load_checkpoint(tmp_path / "run" / "best.pt")["config"]["seed"] == 1  # untouched
    # overwrite: the earlier run's best.pt is removed first, so it can never be reported as this one's
    result = ciard_fast.train(tiny(tmp_path, "run", epochs=1, seed=2, overwrite=True, eval_every=5, val_size=0))
    assert not (tmp_path / "run" / "best.pt").exists() and result.best_checkpoint is None
    assert result.evaluated == "last.pt (epoch 1; no validation, so no best.pt)"


def test_overwrite_removes_every_file_of_the_earlier_run_before_training(tmp_path, monkeypatch):
    """A run that replaces another and then crashes leaves none of the earlier run's results,
    model card or teacher report beside its own files."""
    from ciard_fast.engine import rundir

    ciard_fast.train(tiny(tmp_path, "run", epochs=1, seed=1))
    folder = tmp_path / "run"
    (folder / "teachers.json").write_text("{}")  # as a distillation run writes it
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events").write_text("x")
    assert (folder / "model_card.json").exists() and (folder / "results.json").exists()
    from ciard_fast.engine import trainer as trainer_module

    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        ciard_fast.train(tiny(tmp_path, "run", epochs=1, seed=2, overwrite=True))
    left = set(os.listdir(folder))
    assert not left & set(rundir.RUN_FILES) and "tensorboard" not in left, left


def test_resume_continues_in_the_folder_that_holds_the_checkpoint(tmp_path):
    ciard_fast.train(tiny(tmp_path, "old", stop_after=1))
    os.rename(tmp_path / "old", tmp_path / "moved")
    result = ciard_fast.train(resume=str(tmp_path / "moved" / "last.pt"))
    assert not (tmp_path / "old").exists()
    assert os.path.samefile(result.out_dir, tmp_path / "moved")
    assert ckpt.load_checkpoint(tmp_path / "moved" / "last.pt")["epoch"] == 3


# ---- checkpoints that agree ---------------------------------------------------------------------
def test_best_is_written_before_last_and_the_table_names_its_epoch(tmp_path, monkeypatch):
    order = []
    save = ckpt.save_checkpoint

    def recording(path, state):
        order.append((os.path.basename(path), state["epoch"]))
        return save(path, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", recording)
    result = ciard_fast.train(tiny(tmp_path, "run"))
    for i, (name, epoch) in enumerate(order):
        if name == "best.pt":
            assert order[i + 1] == ("last.pt", epoch)
    best_epoch = ckpt.load_checkpoint(result.last_checkpoint)["best_epoch"]
    assert ckpt.load_checkpoint(result.best_checkpoint)["epoch"] == best_epoch
    assert result.evaluated == f"best.pt (epoch {best_epoch})"
    assert f"student weights: best.pt (epoch {best_epoch})" in result.table
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["evaluated"] == result.evaluated


def test_a_best_pt_of_another_epoch_is_refused(tmp_path):
    ciard_fast.train(tiny(tmp_path, "run", stop_after=2))
    last = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    stale = dict(last, epoch=7)  # as if from another run
    ckpt.save_checkpoint(tmp_path / "run" / "best.pt", stale)
    with pytest.raises(ValueError, match="holds epoch 7 .*names best epoch"):
        ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))
    os.remove(tmp_path / "run" / "best.pt")
    with pytest.raises(ValueError, match="best.pt is missing"):
        ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))


def test_final_evaluation_refuses_a_best_pt_that_is_not_the_best_epoch(tmp_path, monkeypatch):
    from ciard_fast.engine import trainer as trainer_module

    real_save = trainer_module.Trainer.save

    def save_then_corrupt(self, row):  # best.pt replaced by another epoch's weights behind the run's back
        real_save(self, row)
        if row["epoch"] == 3:
            ckpt.save_checkpoint(self.best_path, dict(self.checkpoint_state(), epoch=99))

    monkeypatch.setattr(trainer_module.Trainer, "save", save_then_corrupt)
    with pytest.raises(RuntimeError, match="holds epoch 99 but this run's best epoch is"):
        ciard_fast.train(tiny(tmp_path, "run"))
    assert not (tmp_path / "run" / "results.json").exists()


# ---- divergence -------------------------------------------------------------------------------
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from ciard_fast.methods.natural import Natural

    ciard_fast.train(tiny(tmp_path, "run", stop_after=1))
    before = {n: (tmp_path / "run" / n).read_bytes() for n in ("last.pt", "best.pt")}
    real_step = Natural.training_step
    calls = {"n": 0}

    def poisoned(self, x, y):
        out = real_step(self, x, y)
        calls["n"] += 1
        if calls["n"] == 3:  # one bad step in epoch 2; the flag remembers it until the next host read
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(Natural, "training_step", poisoned)
    with pytest.raises(DivergenceError) as info:
        ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))
    message = str(info.value)
    # 80 training images / 16 = 5 steps an epoch: the bad step 8 is read at the log step 9
    assert "epoch 2, step 9 (lr 0.001)" in message and "ce=nan" in message
    assert "last.pt (after epoch 1) is untouched" in message
    assert {n: (tmp_path / "run" / n).read_bytes() for n in before} == before


def test_the_divergence_flag_is_updated_without_a_host_sync(monkeypatch):
    from ciard_fast.engine.divergence import FiniteMonitor

    sys.path.insert(0, os.path.dirname(__file__))
    from test_ciard_method import forbid_host_sync

    monitor = FiniteMonitor()
    good = {"loss": torch.tensor(1.0), "ce": torch.tensor(0.5)}
    bad = {"loss": torch.tensor(float("inf")), "ce": torch.tensor(0.5)}
    with forbid_host_sync(monkeypatch) as calls:
        monitor.update(good)
        monitor.update(bad)
        monitor.update(good)  # the flag remembers the bad step
    assert calls == []
    with pytest.raises(DivergenceError, match=r"epoch 3, step 7 \(lr 0.5\).*ce=0.5"):
        monitor.check(3, 7, 0.5, {"ce": torch.tensor(1.0)}, 2, "x is untouched")
    monitor.reset()
    monitor.update(good)
    monitor.check(3, 8, 0.5, {}, 1, "")  # finite again after a reset: no error


def test_nan_weights_are_never_saved(tmp_path):
    with pytest.raises(DivergenceError, match="weights became non-finite|loss became non-finite"):
        ciard_fast.train(tiny(tmp_path, "run", lr=1e12, epochs=2))
    if (tmp_path / "run" / "last.pt").exists():
        state = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
        assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


# ---- signals and mid-epoch checkpoints --------------------------------------------------------
def _signal_at_step(monkeypatch, step, signum):
    from ciard_fast.engine import trainer as trainer_module

    real = trainer_module.step_update
    count = {"n": 0}

    def update(*args):
        real(*args)
        count["n"] += 1
        if count["n"] == step:
            os.kill(os.getpid(), signum)  # a real signal, handled by the run's handler

    monkeypatch.setattr(trainer_module, "step_update", update)


def _same_run(a, b):
    sa, sb = ckpt.load_checkpoint(a), ckpt.load_checkpoint(b)
    assert sa["epoch"] == sb["epoch"] and sa["step"] == sb["step"] and sa["best_epoch"] == sb["best_epoch"]
    for key in sa["student"]:
        assert torch.equal(sa["student"][key], sb["student"][key]), key
    drop = ("train_seconds", "train_images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in sa["history"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in sb["history"]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_epoch_writes_a_checkpoint_and_resume_is_bit_exact(tmp_path, monkeypatch, signum):
    full = ciard_fast.train(tiny(tmp_path, "full", method="sat"))
    with monkeypatch.context() as m:
        _signal_at_step(m, 8, signum)  # epoch 2, its 3rd of 5 steps
        with pytest.raises(RunInterrupted) as info:
            ciard_fast.train(tiny(tmp_path, "cut", method="sat"))
    stop = info.value
    assert stop.exit_code == 128 + signum and stop.epoch == 2 and stop.step == 8
    assert f"resume with: ciard-fast train --resume {tmp_path / 'cut' / 'last.pt'}" in str(stop)
    state = ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["epoch"] == 1 and state["mid_epoch"]["epoch"] == 2 and state["mid_epoch"]["steps"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the run
    resumed = ciard_fast.train(resume=str(tmp_path / "cut" / "last.pt"))
    _same_run(full.last_checkpoint, resumed.last_checkpoint)
    assert resumed.metrics == full.metrics


def test_checkpoint_every_steps_writes_resumable_mid_epoch_checkpoints(tmp_path, monkeypatch):
    full = ciard_fast.train(tiny(tmp_path, "full", method="ciard", robust_teacher_model="small_cnn",
                                 robust_teacher_args={"width": 4}, clean_teacher_model="small_cnn",
                                 clean_teacher_args={"width": 4}, teacher_epochs=1, E_itt=1))
    written = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda p, s: (written.append((str(p), s.get("mid_epoch"))),
                                                               real(p, s))[1])
    # stop_after=... cannot stop inside an epoch: copy the mid-epoch last.pt when it is written
    cut = tiny(tmp_path, "cut", method="ciard", robust_teacher_model="small_cnn", robust_teacher_args={"width": 4},
               clean_teacher_model="small_cnn", clean_teacher_args={"width": 4}, teacher_epochs=1, E_itt=1,
               checkpoint_every_steps=4)
    ciard_fast.train(cut)
    # 5 steps an epoch: global steps 4, 8, 12 fall inside epochs 1, 2, 3 (the teachers, trained
    # first with the same setting, write their own mid-epoch checkpoints in teachers/)
    student = [(m["epoch"], m["steps"]) for p, m in written if m is not None and "teachers" not in p]
    assert student == [(1, 4), (2, 3), (3, 2)]
    assert any(m is not None and "teachers" in p for p, m in written)
    _same_run(full.last_checkpoint, os.path.join(cut.out_dir, "last.pt"))
    # resume from a mid-epoch checkpoint taken in epoch 2 (ITT active: the robust teacher moves)
    monkeypatch.undo()
    # steps count the two 1-epoch teacher runs (5 steps each) too: student epoch 2, its 2nd step
    _signal_at_step(monkeypatch, 5 + 5 + 5 + 2, signal.SIGTERM)
    with pytest.raises(RunInterrupted):
        ciard_fast.train(cut.replace(out_dir=str(tmp_path / "cut2")))
    monkeypatch.undo()
    resumed = ciard_fast.train(resume=str(tmp_path / "cut2" / "last.pt"))
    _same_run(full.last_checkpoint, resumed.last_checkpoint)
    a, b = ckpt.load_checkpoint(full.last_checkpoint), ckpt.load_checkpoint(resumed.last_checkpoint)
    for key in a["method"]["robust_teacher"]:
        assert torch.equal(a["method"]["robust_teacher"][key], b["method"]["robust_teacher"][key]), key


def test_an_interrupted_teacher_continues_when_the_command_is_run_again(tmp_path, monkeypatch):
    config = tiny(tmp_path, "run", method="rslad", robust_teacher_model="small_cnn", robust_teacher_args={"width": 4},
                  teacher_epochs=2, epochs=1)
    full = ciard_fast.train(config.replace(out_dir=str(tmp_path / "full")))
    with monkeypatch.context() as m:
        _signal_at_step(m, 7, signal.SIGTERM)  # the robust teacher's epoch 2
        with pytest.raises(RunInterrupted) as info:
            ciard_fast.train(config)
    assert "the same command again" in str(info.value) and "teachers" in str(info.value)
    result = ciard_fast.train(config)  # the same call: the user-given folder holds only the teacher cache
    teacher = tmp_path / "run" / "teachers" / "robust" / "last.pt"
    _same_run(tmp_path / "full" / "teachers" / "robust" / "last.pt", teacher)
    _same_run(full.last_checkpoint, result.last_checkpoint)


def test_a_signal_during_the_final_evaluation_stops_at_once_and_resume_evaluates(tmp_path, monkeypatch):
    from ciard_fast.engine import api

    real = api._test_metrics
    monkeypatch.setattr(api, "_test_metrics", lambda *a: (os.kill(os.getpid(), signal.SIGTERM), real(*a))[1])
    with pytest.raises(RunInterrupted, match="SIGTERM received: stopped at epoch 3"):
        ciard_fast.train(tiny(tmp_path, "run"))
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.undo()
    result = ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))
    assert result.metrics and (tmp_path / "run" / "results.json").exists()


def test_the_teacher_command_numbers_its_default_folder(tmp_path, monkeypatch, capsys):
    from ciard_fast.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["teacher", "--method", "natural", "--model", "small_cnn", "--dataset", "synthetic",
            "--dataset_args", "{num_samples: 48, num_test: 16, image_size: 16}", "--val_size", "16",
            "--student_args.width", "4", "--epochs", "1", "--batch_size", "16", "--test_attacks", "clean",
            "--progress", "false", "--plot", "false", "--device", "cpu"]
    assert main(args) == 0 and main(args) == 0
    assert "this run writes to runs/teacher-natural-synthetic-small_cnn-2" in capsys.readouterr().err


# ---- disk full --------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_naming_the_file_and_the_space_and_keeps_the_checkpoints(tmp_path, monkeypatch,
                                                                                       capsys):
    import errno

    from ciard_fast.cli import main

    ciard_fast.train(tiny(tmp_path, "run", stop_after=1))
    before = {n: (tmp_path / "run" / n).read_bytes() for n in ("last.pt", "best.pt")}
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    code = main(["train", "--resume", str(tmp_path / "run" / "last.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "could not write" in err and ("run/best.pt:" in err or "run/last.pt:" in err)
    assert "the disk is full" in err and "MiB free" in err
    assert {n: (tmp_path / "run" / n).read_bytes() for n in before} == before
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".tmp-")]


# ---- files --------------------------------------------------------------------------------------
def test_run_outputs_are_0644_and_no_temporaries_are_left(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".tmp-last.pt-abc123").write_bytes(b"left by a killed write")
    ciard_fast.train(tiny(tmp_path, "run", epochs=1, plot=True))
    names = sorted(os.listdir(folder))
    assert not [n for n in names if n.startswith(".tmp-")] and "run.lock" not in names
    for name in ("last.pt", "best.pt", "metrics.csv", "metrics.jsonl", "results.json", "results.md"):
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o644, name
