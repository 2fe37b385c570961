"""ABSLD (docs/baselines.md): per-class temperatures on RSLAD's soft labels.

The loss and the attack's target against their formulas written out here (float64, row by row,
not the library's functions), with temperatures that differ per class; the code's aliased targets
as an option; the per-epoch temperature rule against its formula (clamp, rate decay at the
milestones, the tie guard where the public code divides 0/0); the per-class loss sums recorded
during the epoch; the all-rank sums under DDP; options; a run through `train()` and `compare()`.
The contract tests (no host sync, resume, frozen teacher) run over it from test_method_contract.py.
"""
import json
import math

import pytest
import torch

import ciard_fast
from ciard_fast.config import TrainConfig, build_config
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine.compare import compare
from ciard_fast.methods import AttackSettings, get_method
from ciard_fast.methods import absld as absld_mod
from ciard_fast.methods import base as base_mod

from _tiny import tiny_convnet
from method_contract import TINY, teacher_files, teachers_of  # noqa: F401  (teacher_files: a fixture)
from test_baselines import AttackRecorder


# ---- explicit math (float64), independent of the library -------------------------------------------
def softmax_row(z):
    z = [float(v) for v in z]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def kl_eps_mean(target_logits, student_logits):
    """mean over B×C of p·(log(p + 1e-5) − log q), p = softmax(target), q = softmax(student), per row."""
    total, n = 0.0, 0
    for t_row, s_row in zip(target_logits.tolist(), student_logits.tolist()):
        p, q = softmax_row(t_row), softmax_row(s_row)
        total += sum(pc * (math.log(pc + 1e-5) - math.log(qc)) for pc, qc in zip(p, q))
        n += len(p)
    return total / n


def divide_rows(t, y, tau):
    """Row i of t divided by tau[y_i], as nested lists."""
    return torch.tensor([[v / float(tau[int(label)]) for v in row] for row, label in zip(t.tolist(), y.tolist())],
                        dtype=torch.float64)


def cross_entropy_rows(logits, y):
    out = []
    for row, label in zip(logits.tolist(), y.tolist()):
        top = max(row)
        out.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[label])
    return out


def rule(tau, losses, rate, low=0.5, high=5.0):
    """τ_k − r·(L_k − mean L)/max|L − mean L|, clamped: the paper's update, as plain floats."""
    mean = sum(losses) / len(losses)
    gap = [v - mean for v in losses]
    spread = max(abs(g) for g in gap)
    return [min(max(t - rate * g / spread, low), high) for t, g in zip(tau, gap)]


# ---- set-up ---------------------------------------------------------------------------------------
def make(epochs=300, num_classes=10, steps=3, **options):
    cls = get_method("absld")
    return cls(tiny_convnet(num_classes, seed=0), num_classes=num_classes, epochs=epochs,
               options=cls.Options(**options), robust_teacher=tiny_convnet(num_classes, seed=1),
               attack=AttackSettings(8 / 255, 2 / 255, steps))


def batch(seed=0, B=12, C=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, C, (B,), generator=g)


def spread_temperatures(method, C=10):
    """Temperatures that differ per class (and between τ_adv and τ_nat)."""
    method.tau_adv.copy_(torch.linspace(0.5, 4.0, C))
    method.tau_nat.copy_(torch.linspace(3.0, 0.7, C))


def run_step(method, monkeypatch, seed=0, C=10):
    x, y = batch(seed, C=C)
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    method.student.train()
    out = method.training_step(x, y)
    with torch.no_grad():
        t = method.robust_teacher(x)
        s_adv, s_nat = method.student(recorder.x_adv), method.student(x)  # train mode, as the step
    return out, recorder, x, y, t, s_adv, s_nat


# ---- the loss and the attack -------------------------------------------------------------------------
@pytest.mark.parametrize("C", [10, 100])
def test_loss_and_attack_target_against_the_formula(monkeypatch, C):
    method = make(num_classes=C)
    method.tau_adv.copy_(torch.linspace(0.5, 4.0, C))
    method.tau_nat.copy_(torch.linspace(3.0, 0.7, C))
    method.start_epoch(1)
    out, recorder, x, y, t, s_adv, s_nat = run_step(method, monkeypatch, C=C)
    (call,) = recorder.calls
    assert call["loss"] == "kl" and call["random_start"] == "normal" and not call["student_training"]
    assert (call["eps"], call["alpha"], call["steps"]) == (8 / 255, 2 / 255, 3)
    z_adv, z_nat = divide_rows(t, y, method.tau_adv), divide_rows(t, y, method.tau_nat)
    # the attack's target is T(x)/τ_adv[y], row by row (the true class's temperature, not per column)
    assert torch.allclose(call["target_logits"].double(), z_adv, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(z_adv, z_nat)
    kd_scale = C / 10
    L_adv = kd_scale * kl_eps_mean(z_adv, s_adv)
    L_nat = kd_scale * kl_eps_mean(z_nat, s_nat)
    assert out["L_adv"].item() == pytest.approx(L_adv, rel=1e-4)
    assert out["L_nat"].item() == pytest.approx(L_nat, rel=1e-4)
    assert out["loss"].item() == pytest.approx(5 / 6 * L_adv + 1 / 6 * L_nat, rel=1e-4)


def test_with_all_temperatures_one_it_is_rslad(monkeypatch):
    method = make()
    method.start_epoch(1)
    out, recorder, x, y, t, s_adv, s_nat = run_step(method, monkeypatch)
    rslad = get_method("rslad")(tiny_convnet(seed=0), num_classes=10, epochs=300, robust_teacher=tiny_convnet(seed=1),
                                attack=AttackSettings(8 / 255, 2 / 255, 3))
    monkeypatch.setattr(base_mod, "pgd", AttackRecorder(rslad.student, x))
    rslad.student.train()
    assert torch.allclose(rslad.training_step(x, y)["loss"], out["loss"], rtol=1e-6)


def test_aliased_targets_reproduce_the_public_code(monkeypatch):
    method = make(aliased_targets=True)
    spread_temperatures(method)
    method.start_epoch(1)
    out, recorder, x, y, t, s_adv, s_nat = run_step(method, monkeypatch)
    # the code divides one tensor in place twice: every target is T(x)/(τ_adv[y]·τ_nat[y])
    both = divide_rows(t, y, method.tau_adv * method.tau_nat)
    assert torch.allclose(recorder.calls[0]["target_logits"].double(), both, rtol=1e-6, atol=1e-7)
    expected = 5 / 6 * kl_eps_mean(both, s_adv) + 1 / 6 * kl_eps_mean(both, s_nat)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)


def test_gradients_reach_the_student_only(monkeypatch):
    method = make()
    spread_temperatures(method)
    out, *_ = run_step(method, monkeypatch)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.student.parameters())
    assert all(p.grad is None for p in method.robust_teacher.parameters())
    assert not method.tau_adv.requires_grad and not method.tau_nat.requires_grad


# ---- the per-epoch temperature rule --------------------------------------------------------------------
def test_temperature_rule_against_the_formula():
    tau = [1.0, 0.6, 4.9, 2.0, 0.6]
    losses = [30.0, 10.0, 5.0, 12.5, 100.0]
    got = absld_mod.update_class_temperatures(torch.tensor(tau, dtype=torch.float64),
                                              torch.tensor(losses, dtype=torch.float64), 0.3)
    assert got.tolist() == pytest.approx(rule(tau, losses, 0.3), rel=1e-12)
    # the hardest class takes a full step down (0.6 − 0.3, clamped to 0.5); the easiest steps up (to the clamp 5)
    assert got[4].item() == 0.5 and got[2].item() == 5.0 and got[1].item() == pytest.approx(0.6 + 0.3 * 21.5 / 68.5)


def test_equal_class_losses_leave_the_temperatures_unchanged():
    tau = torch.tensor([1.0, 2.0, 0.8])
    # exact ties: the code's 0/0 gives NaN (shown with its own expression); ours does not move
    gap = torch.full((3,), 7.0) - torch.full((3,), 7.0).mean()
    assert torch.isnan(tau - 0.1 * gap / gap.abs().max()).all()
    assert torch.equal(absld_mod.update_class_temperatures(tau, torch.full((3,), 7.0), 0.1), tau)
    assert torch.equal(absld_mod.update_class_temperatures(tau, torch.zeros(3), 0.1), tau)  # an empty epoch
    # a tie up to float rounding (the mean of 0.1, 0.1, 0.1 is not exactly 0.1) is a tie too, not a full step
    near = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float32) * torch.tensor([1.0, 1.0, 1.0 + 2 ** -23])
    assert torch.equal(absld_mod.update_class_temperatures(tau, near, 0.1), tau)
    # a real difference, however small against the losses, moves them by the full rate
    close = torch.tensor([1.0, 1.0, 1.0001])
    moved = absld_mod.update_class_temperatures(tau, close, 0.1)
    assert moved.tolist() == pytest.approx(rule(tau.tolist(), close.tolist(), 0.1), rel=1e-6)
    assert moved.tolist() == pytest.approx([1.05, 2.05, 0.7], rel=1e-6)


@pytest.mark.parametrize("epochs, expected", [
    (300, {1: 0.1, 214: 0.1, 215: 0.01, 259: 0.01, 260: 1e-3, 285: 1e-4, 300: 1e-4}),
    (30, {1: 0.1, 21: 0.1, 22: 0.01, 26: 1e-3, 29: 1e-4}),
])
def test_temperature_rate_decays_with_the_lr(epochs, expected):
    method = make(epochs=epochs)
    for epoch, rate in expected.items():
        assert method.tau_rate(epoch) == pytest.approx(rate), epoch
        assert method.tau_rate(epoch) / 0.1 == pytest.approx(method.student_lr(epoch) / 0.1)


def test_an_epoch_records_class_losses_and_updates_the_temperatures(monkeypatch):
    method = make(epochs=300)
    spread_temperatures(method)
    tau_adv, tau_nat = method.tau_adv.tolist(), method.tau_nat.tolist()
    method.start_epoch(215)  # the first decayed epoch: r = 0.01 already at its end (as the code)
    sums_adv, sums_nat, counts = [0.0] * 10, [0.0] * 10, [0.0] * 10
    for seed in range(3):
        _, _, _, y, _, s_adv, s_nat = run_step(method, monkeypatch, seed=seed)
        for label, ce_adv, ce_nat in zip(y.tolist(), cross_entropy_rows(s_adv, y), cross_entropy_rows(s_nat, y)):
            sums_adv[label] += ce_adv
            sums_nat[label] += ce_nat
            counts[label] += 1
    assert method.class_loss_adv.tolist() == pytest.approx(sums_adv, rel=1e-5, abs=1e-6)
    assert method.class_loss_nat.tolist() == pytest.approx(sums_nat, rel=1e-5, abs=1e-6)
    assert method.class_count.tolist() == counts
    method.end_epoch(215)
    assert method.tau_adv.tolist() == pytest.approx(rule(tau_adv, sums_adv, 0.01), rel=1e-5)
    assert method.tau_nat.tolist() == pytest.approx(rule(tau_nat, sums_nat, 0.01), rel=1e-5)
    assert {k: v.item() for k, v in method.log_values().items()} == pytest.approx(
        {"tau_adv_min": min(method.tau_adv.tolist()), "tau_adv_max": max(method.tau_adv.tolist()),
         "tau_nat_min": min(method.tau_nat.tolist()), "tau_nat_max": max(method.tau_nat.tolist())})
    method.start_epoch(216)  # a new epoch counts from zero
    assert not method.class_loss_adv.any() and not method.class_loss_nat.any() and not method.class_count.any()


def test_per_class_mean_divides_by_the_count_and_fills_unseen_classes():
    loss_sum, count = torch.tensor([6.0, 0.0, 9.0, 4.0]), torch.tensor([3.0, 0.0, 3.0, 1.0])
    assert absld_mod.class_losses(loss_sum, count, "sum").tolist() == [6.0, 0.0, 9.0, 4.0]
    # means 2, 3, 4; the unseen class takes their mean, 3
    assert absld_mod.class_losses(loss_sum, count, "mean").tolist() == pytest.approx([2.0, 3.0, 3.0, 4.0])
    assert absld_mod.class_losses(torch.zeros(4), torch.zeros(4), "mean").tolist() == [0.0] * 4
    # on a balanced epoch both move τ identically (the step divides by max|g|)
    balanced = torch.tensor([3.0, 3.0, 3.0, 3.0])
    tau = torch.ones(4)
    by_sum = absld_mod.update_class_temperatures(tau, absld_mod.class_losses(loss_sum * 1.0, balanced, "sum"), 0.1)
    by_mean = absld_mod.update_class_temperatures(tau, absld_mod.class_losses(loss_sum, balanced, "mean"), 0.1)
    assert torch.allclose(by_sum, by_mean)


def test_under_ddp_the_update_uses_the_sums_of_all_ranks():
    """Rank 0's method, its reduce_mean standing in for the all-reduce with a second rank's sums."""
    method = make(per_class_loss="mean")
    other = {"adv": torch.arange(10.0) * 3, "nat": torch.arange(10.0).flip(0), "count": torch.full((10,), 2.0)}
    mine = {"adv": torch.rand(10) * 5, "nat": torch.rand(10), "count": torch.full((10,), 1.0)}
    method.class_loss_adv.copy_(mine["adv"])
    method.class_loss_nat.copy_(mine["nat"])
    method.class_count.copy_(mine["count"])
    method.world_size = 2
    other_stack = torch.stack([other["adv"], other["nat"], other["count"]])
    method.reduce_mean = lambda stacked: (stacked + other_stack) / 2
    method.end_epoch(1)
    total = {k: mine[k] + other[k] for k in mine}
    expected_adv = rule([1.0] * 10, (total["adv"] / total["count"]).tolist(), 0.1)
    expected_nat = rule([1.0] * 10, (total["nat"] / total["count"]).tolist(), 0.1)
    assert method.tau_adv.tolist() == pytest.approx(expected_adv, rel=1e-5)
    assert method.tau_nat.tolist() == pytest.approx(expected_nat, rel=1e-5)


# ---- options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"tau_bounds": (5.0, 0.5)}, r"tau_bounds must be \(low, high\)"),
    ({"tau_init": 6.0}, r"tau_init must lie in tau_bounds \(0.5, 5.0\), got 6.0"),
    ({"tau_bounds": (1.0, 2.0), "tau_init": 0.5}, "tau_init must lie in tau_bounds"),
    ({"per_class_loss": "median"}, "per_class_loss must be one of sum, mean"),
    ({"tau_lr": -0.1}, "tau_lr must be >= 0"),
])
def test_bad_options_are_refused_when_the_config_is_built(options, match):
    with pytest.raises(ValueError, match=match):
        build_config(overrides={**TINY, "method": "absld", "method_args": options})


def test_options_set_the_initial_temperatures_and_bounds():
    method = make(tau_init=2.0, tau_bounds=[1.5, 2.5])  # a YAML list works as the pair
    assert method.tau_adv.tolist() == [2.0] * 10 and method.tau_nat.tolist() == [2.0] * 10
    method.class_loss_adv.copy_(torch.arange(10.0) * 100)
    method.end_epoch(1)
    assert min(method.tau_adv.tolist()) >= 1.5 and max(method.tau_adv.tolist()) <= 2.5


def test_presets_hold_the_published_recipe():
    cls = get_method("absld")
    for base in ("cifar10-resnet18", "cifar10-mobilenetv2", "cifar100-resnet18", "tinyimagenet-resnet18"):
        config = TrainConfig.from_preset(f"{base}-absld")
        assert (config.method, config.epochs, config.weight_decay, config.batch_size, config.lr) == \
            ("absld", 300, 2e-4, 128, 0.1)
        options = cls.Options(**config.method_args)
        assert (options.adv_weight, options.tau_init, options.tau_lr, options.tau_bounds) == (5 / 6, 1.0, 0.1, (0.5, 5.0))
        assert not options.aliased_targets and options.per_class_loss == "sum"
    assert cls.milestones == (215, 260, 285) and cls.paper_epochs == 300


# ---- through the engine ----------------------------------------------------------------------------------
def test_trains_through_train_with_file_teachers(tmp_path, teacher_files):
    config = build_config(overrides={**TINY, **teachers_of("absld", teacher_files), "method": "absld", "out_dir": str(tmp_path / "run")})
    result = ciard_fast.train(config)
    assert result.metrics and all(math.isfinite(v) for v in result.metrics.values() if isinstance(v, float))
    state = ckpt.load_checkpoint(result.last_checkpoint)
    tau_adv, tau_nat = state["method"]["tau_adv"], state["method"]["tau_nat"]
    assert tau_adv.shape == (10,) and not torch.equal(tau_adv, torch.ones(10))  # moved at the epochs' ends
    assert torch.all((tau_adv >= 0.5) & (tau_adv <= 5.0)) and torch.all((tau_nat >= 0.5) & (tau_nat <= 5.0))
    last = result.history[-1]
    assert {"train_L_adv", "train_L_nat", "tau_adv_min", "tau_adv_max", "tau_nat_min", "tau_nat_max"} <= set(last)
    assert all(math.isfinite(last[k]) for k in ("train_L_adv", "train_L_nat", "tau_adv_min", "tau_nat_max"))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["method"] == "absld"


def test_runs_in_compare(tmp_path):
    from test_compare import TINY as COMPARE_TINY

    result = compare("absld", preset=None, out_dir=str(tmp_path / "cmp"), tau_lr=0.2, **COMPARE_TINY)
    row = result.rows["absld"]
    assert all(0.0 <= row[k] <= 100.0 for k in ("clean", "fgsm", "pgd_sat"))
    run = json.loads((tmp_path / "cmp" / "absld" / "seed-0" / "results.json").read_text())
    assert run["config"]["method_args"] == {"tau_lr": 0.2}
