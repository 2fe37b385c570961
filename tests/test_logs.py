"""Run logs: tqdm progress on a terminal, one line per epoch otherwise; TensorBoard scalars."""
import io
import json
import sys

import pytest

import ciard_fast
from ciard_fast.attacks.progress import Progress as EvalProgress
from ciard_fast.config import build_config
from ciard_fast.engine.logs import Progress

from test_compare import TINY


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_training_progress_is_a_tqdm_bar_on_a_terminal():
    stream = Terminal()
    progress = Progress(True, stream=stream, prefix="[robust teacher] ")
    for step in (5, 10, 12):
        progress.update(1, 3, step, 12, {"loss": 0.5}, 250.0)
    progress.end_epoch("epoch 1: loss=0.5")
    text = stream.getvalue()
    assert "\r" in text and "[robust teacher] epoch 1/3" in text
    assert "12/12" in text and "step/s" in text and "loss=0.5 250 img/s" in text  # tqdm's rate and ETA
    assert "<" in text  # elapsed<remaining
    assert text.endswith("[robust teacher] epoch 1: loss=0.5\n")


def test_training_progress_off_a_terminal_is_one_line_per_epoch():
    stream = io.StringIO()
    progress = Progress(True, stream=stream)
    for epoch in (1, 2):
        for step in (5, 10, 12):
            progress.update(epoch, 2, step, 12, {"loss": 0.25}, 100.0)
        progress.end_epoch(f"epoch {epoch}: loss=0.25")
    assert stream.getvalue().splitlines() == [
        "epoch 1/2 step 12/12 loss=0.25 100 img/s", "epoch 1: loss=0.25",
        "epoch 2/2 step 12/12 loss=0.25 100 img/s", "epoch 2: loss=0.25"]
    quiet = io.StringIO()
    Progress(False, stream=quiet).update(1, 1, 1, 1, {}, 1.0)
    assert quiet.getvalue() == ""


def test_evaluation_progress_on_and_off_a_terminal():
    stream = Terminal()
    bar = EvalProgress(total=4, stream=stream)
    for column in ("clean", "fgsm", "clean", "fgsm"):
        bar.update(1, column)
    bar.close()
    assert "evaluate" in stream.getvalue() and "4/4" in stream.getvalue() and "\r" in stream.getvalue()

    log = io.StringIO()
    bar = EvalProgress(total=4, stream=log, log_interval=3600)
    for column in ("clean", "fgsm", "clean", "fgsm"):
        bar.update(1, column)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()  # the first update, then the end
    assert lines[0].startswith("evaluate:  25% 1/4") and lines[-1].startswith("evaluate: 100% 4/4")
    assert lines[-1].endswith("done]")


def test_tensorboard_gets_every_logged_scalar(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = build_config(overrides={**TINY, "method": "ciard", "epochs": 2, "tensorboard": True,
                                     "out_dir": str(out), "test_attacks": ("clean",)})
    ciard_fast.train(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {k for row in rows for k in row if k != "epoch"}
    for key in ("train_L_adv", "tau_adv", "lambda", "val_pgd", "lr"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in rows], rel=1e-6)


def test_tensorboard_missing_is_a_clear_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    config = build_config(overrides={**TINY, "method": "natural", "epochs": 1, "tensorboard": True,
                                     "out_dir": str(tmp_path / "run"), "test_attacks": ("clean",)})
    with pytest.raises(ImportError, match=r"pip install 'ciard-fast\[tensorboard\]'.*--tensorboard false"):
        ciard_fast.train(config)
    assert not (tmp_path / "run" / "last.pt").exists()  # stopped before the first epoch
