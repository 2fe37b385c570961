"""Stochastic weight averaging (`engine/swa.py`, config `swa_start`): the average against the
written-out mean of the end-of-epoch snapshots, the BatchNorm statistics against a written-out
recomputation, what every reader evaluates, the untouched training stream, exact resumes, the
config rules, and DDP."""
import json
import os
import signal

import pytest
import torch
from torch import nn

import ciard_fast
from ciard_fast.config import TrainConfig, build_config
from ciard_fast.engine import api as api_module
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine import trainer as trainer_module
from ciard_fast.engine.builders import build_loader, build_model, load_splits
from ciard_fast.engine.callbacks import CALLBACKS, Callback, build_callbacks, register_callback
from ciard_fast.engine.distributed import unwrap
from ciard_fast.engine.signals import RunInterrupted
from ciard_fast.engine.swa import SWA, swa_start_epoch

from method_contract import TINY, _assert_same

EPOCHS = 4  # 3 steps an epoch (48 training images, batch 16)


def config(tmp_path, name, **extra):
    return build_config(overrides={**TINY, "method": "natural", "epochs": EPOCHS, "out_dir": str(tmp_path / name),
                                   **extra})


class Snapshots(Callback):
    """The student's weights at the end of every epoch (what SWA averages)."""

    taken = {}

    def on_epoch_end(self, trainer, epoch):
        Snapshots.taken[epoch] = {k: v.detach().clone() for k, v in unwrap(trainer.student).state_dict().items()}


@pytest.fixture
def snapshots():
    Snapshots.taken = {}
    register_callback("snapshots", lambda config: Snapshots())
    try:
        yield Snapshots.taken
    finally:
        CALLBACKS.unregister("snapshots")


def bn_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


# ---- the mathematics -----------------------------------------------------------------------------
def test_the_average_is_the_mean_of_the_end_of_epoch_weights_and_bn_is_recomputed(tmp_path, snapshots):
    cfg = config(tmp_path, "swa", swa_start=2)
    result = ciard_fast.train(cfg)
    last = ckpt.load_checkpoint(result.last_checkpoint)
    averaged = ckpt.eval_weights(last)
    student = last["student"]
    assert set(snapshots) == {1, 2, 3, 4}
    # parameters: the plain mean of the snapshots of epochs 2..4 (written out, in float64)
    model = build_model(cfg.student, load_splits(cfg)["train"], cfg.student_normalize, torch.device("cpu"), cfg,
                        cfg.student_args)
    parameters = [name for name, _ in model.named_parameters()]
    for name in parameters:
        expected = sum(snapshots[e][name].double() for e in (2, 3, 4)) / 3
        torch.testing.assert_close(averaged[name].double(), expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(averaged[name], student[name]), name  # not the student's own
    assert torch.equal(student[parameters[0]], snapshots[4][parameters[0]])
    # BatchNorm: running statistics of the averaged weights over the training batches of the last
    # epoch (written out: the mean over batches of each batch's mean and unbiased variance)
    model.load_state_dict(averaged)
    inputs = {name: [] for name in bn_layers(model)}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs[name].append(args[0].detach()))
             for name, layer in bn_layers(model).items()]
    loader = build_loader(cfg, load_splits(cfg)["train"], torch.device("cpu"), train=True)
    loader.set_epoch(EPOCHS)
    model.train()
    with torch.no_grad():
        for x, _ in loader:
            model(x)
    for hook in hooks:
        hook.remove()
    assert inputs and all(len(batches) == len(loader) == 3 for batches in inputs.values())
    for name, batches in inputs.items():
        mean = torch.stack([b.double().mean(dim=(0, 2, 3)) for b in batches]).mean(0)
        var = torch.stack([b.double().var(dim=(0, 2, 3), unbiased=True) for b in batches]).mean(0)
        torch.testing.assert_close(averaged[f"{name}.running_mean"].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(averaged[f"{name}.running_var"].double(), var, rtol=1e-5, atol=1e-6)
        assert int(averaged[f"{name}.num_batches_tracked"]) == len(loader)
        assert not torch.equal(averaged[f"{name}.running_mean"], student[f"{name}.running_mean"])
    # the checkpoint says what it holds
    swa = last["callbacks"]["swa"]
    assert (swa["first"], swa["last"], swa["count"]) == (2, 4, 3) and int(swa["averaged"]["n_averaged"]) == 3
    assert ckpt.eval_weights_source(last) == ("SWA of the student: mean of the weights at the ends of epochs 2–4 "
                                              "(3 snapshots), BatchNorm statistics recomputed on the training split")


def test_swa_leaves_the_training_stream_untouched(tmp_path):
    """Same student, optimiser, losses with and without SWA: the BN pass draws no random number
    and does not move the loader; only what is evaluated differs."""
    plain = ciard_fast.train(config(tmp_path, "plain"))
    swa = ciard_fast.train(config(tmp_path, "swa", swa_start=3))
    a, b = ckpt.load_checkpoint(plain.last_checkpoint), ckpt.load_checkpoint(swa.last_checkpoint)
    _assert_same(a["student"], b["student"], "student")
    _assert_same(a["optimizer"], b["optimizer"], "optimizer")
    _assert_same(a["rng"], b["rng"], "rng")
    for row_a, row_b in zip(plain.history, swa.history):
        for key in row_a:
            if key.startswith("train_") and key not in ("train_seconds", "train_images_per_s"):
                assert row_a[key] == row_b[key], (row_a["epoch"], key)
    assert "eval_weights" not in a and ckpt.eval_weights(a) is a["student"]
    assert "callbacks" not in a  # off by default: no callback at all
    assert [r["val_clean"] for r in plain.history[:2]] == [r["val_clean"] for r in swa.history[:2]]


def test_off_by_default_builds_no_callback():
    assert TrainConfig().swa_start is None
    assert build_config(preset="demo").swa_start is None
    assert not [cb for cb in build_callbacks(build_config(preset="demo")) if isinstance(cb, SWA)]
    built = build_callbacks(build_config(preset="demo", overrides={"swa_start": 0.5}))
    assert [type(cb) for cb in built] == [SWA] and built[0].start == 15 and built[0].name == "swa"


# ---- what is evaluated ---------------------------------------------------------------------------------
def test_validation_best_pt_table_card_eval_and_export_use_the_average(tmp_path, monkeypatch):
    from ciard_fast.cli_eval import read_checkpoint
    from ciard_fast.deploy.exporter import export, load_safetensors_student
    from ciard_fast.engine.model_card import read_model_card, weights_digest

    validated = []

    def fake_validation(model, loader, **kwargs):  # the student scores 100 %, the average 50 %
        validated.append(model)
        return torch.tensor([16.0, 16.0, 16.0]) if model is trainer_student[0] else torch.tensor([8.0, 8.0, 16.0])

    trainer_student = []
    real_init = trainer_module.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        trainer_student.append(unwrap(self.student))

    monkeypatch.setattr(trainer_module.Trainer, "__init__", init)
    monkeypatch.setattr(trainer_module, "correct_clean_and_pgd", fake_validation)
    cfg = config(tmp_path, "run", swa_start=3)
    result = ciard_fast.train(cfg)
    # epochs 1-2 validate the student, 3-4 the average
    assert [m is trainer_student[0] for m in validated] == [True, True, False, False]
    assert [r["val_clean"] for r in result.history] == [100.0, 100.0, 50.0, 50.0]
    # best.pt: the first validation of the average, although the student scored higher before
    best = ckpt.load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == 3 and best["best_of"] == "swa"
    weights = ckpt.eval_weights(best)
    source = ckpt.eval_weights_source(best)
    assert source.startswith("SWA of the student: mean of the weights at the ends of epochs 3–3 (1 snapshot)")
    assert result.evaluated == f"best.pt (epoch 3, {source})" and result.evaluated_weights == source
    assert f"best.pt (epoch 3, {source})" in result.table
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["evaluated_weights"] == source and source in saved["evaluated"]
    # the final table is the averaged weights' accuracy
    splits = load_splits(cfg)
    model = build_model(cfg.student, splits["train"], cfg.student_normalize, torch.device("cpu"), cfg,
                        cfg.student_args)
    model.load_state_dict(weights)
    report = ciard_fast.evaluate(model.eval(), splits["test"], attacks=("clean",), n=16, progress=False, seed=0)
    assert result.metrics["clean"] == pytest.approx(100.0 * report.accuracy["clean"])
    # the model card, `ciard-fast eval` and export read the same weights and say what they are
    card = read_model_card(tmp_path / "run" / "model_card.json")
    assert card["model"]["weights_sha256"] == weights_digest(weights) and card["model"]["weights"] == source
    assert f"- weights: {source}" in (tmp_path / "run" / "model_card.md").read_text()
    assert all(torch.equal(v, weights[k]) for k, v in read_checkpoint(result.best_checkpoint)[0].items())
    exported = export(result.best_checkpoint, format="safetensors", out=str(tmp_path / "s.safetensors"), n=8,
                      card=True, log=None, allow_teacher=True)  # (natural: the fastest run)
    restored = load_safetensors_student(exported.path).state_dict()
    assert all(torch.equal(restored[k], weights[k].float()) for k in restored if k in weights)


def test_a_run_without_swa_reports_the_students_weights(tmp_path):
    result = ciard_fast.train(config(tmp_path, "plain", epochs=2))
    assert result.evaluated_weights is None and result.evaluated.startswith("best.pt (epoch")
    card = json.loads((tmp_path / "plain" / "model_card.json").read_text())
    assert card["model"]["weights"] == "the student's weights"
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["evaluated_weights"] is None


# ---- exact resumes -----------------------------------------------------------------------------------
def _compare_runs(a_path, b_path):
    a, b = ckpt.load_checkpoint(a_path), ckpt.load_checkpoint(b_path)
    timing = ("train_seconds", "train_images_per_s")
    for state in (a, b):
        state["history"] = [{k: v for k, v in row.items() if k not in timing} for row in state["history"]]
    for key in ("epoch", "step", "student", "optimizer", "method", "history", "best_epoch", "best_score", "best_of",
                "callbacks", "eval_weights", "rng"):
        _assert_same(a.get(key), b.get(key), key)
    return a


@pytest.mark.parametrize("signal_at_step", [4, 8])  # inside epoch 2 (before SWA starts), inside epoch 3 (after)
def test_a_run_cut_inside_an_epoch_resumes_bit_exactly(tmp_path, monkeypatch, signal_at_step):
    full = ciard_fast.train(config(tmp_path, "full", swa_start=2))
    real = trainer_module.step_update
    count = {"n": 0}

    def update(*args):
        real(*args)
        count["n"] += 1
        if count["n"] == signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "step_update", update)
        with pytest.raises(RunInterrupted):
            ciard_fast.train(config(tmp_path, "cut", swa_start=2))
    cut = ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["mid_epoch"]["epoch"] == (signal_at_step - 1) // 3 + 1
    assert (cut["callbacks"]["swa"]["averaged"] is None) == (signal_at_step < 6)
    resumed = ciard_fast.train(resume=str(tmp_path / "cut" / "last.pt"))
    state = _compare_runs(full.last_checkpoint, resumed.last_checkpoint)
    assert state["callbacks"]["swa"]["count"] == 3
    _compare_runs(full.best_checkpoint, resumed.best_checkpoint)
    assert full.metrics == resumed.metrics and full.evaluated == resumed.evaluated


def test_a_run_stopped_at_an_epoch_end_resumes_bit_exactly(tmp_path):
    full = ciard_fast.train(config(tmp_path, "full", swa_start=2))
    ciard_fast.train(config(tmp_path, "cut", swa_start=2, stop_after=3))
    with pytest.raises(ValueError, match="cannot change 'swa_start' when resuming"):
        ciard_fast.train(resume=str(tmp_path / "cut" / "last.pt"), swa_start=3)
    resumed = ciard_fast.train(resume=str(tmp_path / "cut" / "last.pt"))
    _compare_runs(full.last_checkpoint, resumed.last_checkpoint)
    assert full.metrics == resumed.metrics


# ---- the config ------------------------------------------------------------------------------------
def test_swa_start_is_an_epoch_or_a_fraction_checked_up_front(tmp_path, monkeypatch):
    assert swa_start_epoch(None, 300) is None
    assert swa_start_epoch(95, 200) == 95
    assert swa_start_epoch(215 / 300, 300) == 215            # PeerAiD: from its first milestone
    assert swa_start_epoch(215 / 300, 30) == 22              # scaled like a milestone: round(21.5)
    assert swa_start_epoch(95 / 200, 200) == 95 and swa_start_epoch(0.01, 10) == 1  # at least epoch 1

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(api_module, "load_splits", no_data)
    for bad, error, words in ((0, ValueError, "not an epoch of this run"), (5, ValueError, "1..epochs=4"),
                              (1.0, ValueError, "fraction of epochs and must be in"),
                              (95.0, ValueError, "give an epoch as an integer"), (-0.5, ValueError, "in \\(0, 1\\)"),
                              (float("nan"), ValueError, "swa_start"), ("0.5", TypeError, "swa_start"),
                              (True, TypeError, "swa_start")):
        with pytest.raises(error, match=words):
            ciard_fast.train(config(tmp_path, "never").to_dict() | {"swa_start": bad})
    assert not (tmp_path / "never").exists()
    # the command line: an integer is an epoch, a decimal or a ratio a fraction
    from ciard_fast.config import field_types, parse_value

    kind = field_types()["swa_start"]
    assert parse_value("95", kind) == 95 and isinstance(parse_value("95", kind), int)
    assert parse_value("215/300", kind) == pytest.approx(215 / 300) and parse_value("none", kind) is None


def test_teacher_and_natural_student_runs_are_not_averaged(tmp_path):
    from ciard_fast.engine.teachers import teacher_run_config, teacher_spec

    base = build_config(overrides={**TINY, "method": "rslad", "swa_start": 0.5, "compare_natural_student": True,
                                   "out_dir": str(tmp_path)})
    for kind in ("robust", "clean"):
        assert teacher_run_config(teacher_spec(base, kind), base).swa_start is None
    assert api_module.natural_student_config(base).swa_start is None


def test_the_teacher_command_refuses_swa(tmp_path, capsys):
    from ciard_fast.cli import main

    argv = ["teacher", "--method", "natural", "--model", "small_cnn", "--dataset", "synthetic", "--swa_start", "0.5",
            "--out_dir", str(tmp_path / "t")]
    assert main(argv) == 2
    assert "teachers are trained without weight averaging" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


# ---- torch.distributed -----------------------------------------------------------------------------
def _worker_swa(rank, world_size, port, overrides, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from ciard_fast.engine import distributed
    from ciard_fast.engine import swa as swa_module

    distributed.reset_context()
    local, averaged, agreed = [], [], []
    real_update_bn, real_end = swa_module.update_bn, swa_module.SWA.on_epoch_end

    def recording_update_bn(loader, model):  # this rank's own pass, before the mean over ranks
        real_update_bn(loader, model)
        local.append({n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bn_layers(model).items()})

    def on_epoch_end(self, trainer, epoch):
        real_end(self, trainer, epoch)
        state = {k: v.clone() for k, v in self.averaged.state_dict().items()}
        mine = torch.cat([v.reshape(-1).double() for v in state.values()])
        gathered = [torch.zeros_like(mine) for _ in range(world_size)]
        dist.all_gather(gathered, mine)
        agreed.append(all(torch.equal(gathered[0], other) for other in gathered[1:]))
        averaged.append(state)

    swa_module.update_bn, swa_module.SWA.on_epoch_end = recording_update_bn, on_epoch_end
    ciard_fast.train(**overrides)
    torch.save({"local": local, "averaged": averaged, "agreed": agreed}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()
    distributed.reset_context()


@pytest.mark.slow
def test_under_ddp_every_rank_holds_the_same_average_with_bn_averaged_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    from test_distributed import free_port

    overrides = dict(TINY, method="natural", dataset_args={"num_samples": 96, "num_test": 16, "image_size": 16},
                     epochs=2, batch_size=32, swa_start=1, out_dir=str(tmp_path / "run"))
    mp.spawn(_worker_swa, args=(2, free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["agreed"] == [True, True]
    for epoch in range(2):
        for name, (mean0, var0) in ranks[0]["local"][epoch].items():
            mean1, var1 = ranks[1]["local"][epoch][name]
            assert not torch.equal(mean0, mean1)  # each rank saw its own shard
            held = ranks[0]["averaged"][epoch]
            torch.testing.assert_close(held[f"{name}.running_mean"], (mean0 + mean1) / 2)
            torch.testing.assert_close(held[f"{name}.running_var"], (var0 + var1) / 2)
    last = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["callbacks"]["swa"]["count"] == 2
    _assert_same(ckpt.eval_weights(last), {k[len("module."):]: v for k, v in ranks[0]["averaged"][1].items()
                                            if k != "n_averaged"}, "eval_weights")
