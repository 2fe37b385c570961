"""DGAD (docs/baselines.md): AdaAD's attack, the teacher-guided partition, label swapping, PCR.

The swaps against a loop that does what the public code does (boolean-mask assignments, written
out row by row); the loss against its formula written out here (float64, plain Python), and
against the code's own expression on a full batch, where they agree; the batches where they do
not (the teacher wrong on every example: the code divides by zero; a short batch: the code's
configured batch size); the step (attack, forward order, teacher modes); options; a run through
`train()` and `compare()`. The contract tests (no host sync, resume, frozen teacher) run over it
from test_method_contract.py.
"""
import json
import math

import pytest
import torch

import ciard_fast
from ciard_fast.config import TrainConfig, build_config
from ciard_fast.engine.compare import compare
from ciard_fast.methods import AttackSettings, get_method
from ciard_fast.methods import adaad as adaad_mod
from ciard_fast.methods import base as base_mod
from ciard_fast.methods import dgad as dgad_mod

from _tiny import tiny_convnet
from method_contract import TINY, teacher_files, teachers_of  # noqa: F401  (teacher_files: a fixture)
from test_baselines import AttackRecorder
from test_ciard_method import forbid_host_sync


# ---- explicit math (float64), independent of the library -------------------------------------------
def softmax_row(z):
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def kl_sum_row(t_row, s_row):
    """Σ_c p_c·(log p_c − log q_c): torch's KLDivLoss(reduction='none') summed over classes."""
    p, q = softmax_row(t_row), softmax_row(s_row)
    return sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q) if pc > 0)


def code_targets(t_nat, t_adv, y):
    """The public code's two swaps, row by row (its boolean-mask assignments written as a loop)."""
    t0, ta = [list(r) for r in t_nat.tolist()], [list(r) for r in t_adv.tolist()]
    wrong = []
    for i, label in enumerate(y.tolist()):
        top = max(range(len(t0[i])), key=lambda c: (t0[i][c], -c))  # argmax, first index on ties
        wrong.append(top != label)
        if top != label:
            t0[i][label], t0[i][top] = t0[i][top], t0[i][label]
        rival = max((c for c in range(len(ta[i])) if c != label), key=lambda c: (ta[i][c], -c))
        if ta[i][label] < ta[i][rival]:  # margin < 0: ties are not swapped
            ta[i][label], ta[i][rival] = ta[i][rival], ta[i][label]
    return t0, ta, wrong


def formula(s_nat, s_adv, t_nat, t_adv, y, beta=1.0, kd_weight=1.0):
    """kd_weight·(1/B)Σᵢ[Λᵢ KLᵢ(T̃(x)‖S(x)) + (1 − Λᵢ) KLᵢ(T̃(x')‖S(x'))] + β·mean (softmax S(x') − softmax S(x))²."""
    t0, ta, wrong = code_targets(t_nat, t_adv, y)
    B = len(wrong)
    kd = sum(kl_sum_row(t0[i], s_nat[i]) if wrong[i] else kl_sum_row(ta[i], s_adv[i]) for i in range(B)) / B
    pcr, n = 0.0, 0
    for a_row, n_row in zip(s_adv, s_nat):
        for pa, pn in zip(softmax_row(a_row), softmax_row(n_row)):
            pcr += (pa - pn) ** 2
            n += 1
    return kd_weight * kd + beta * pcr / n


def code_loss(s_nat, s_adv, t_nat, t_adv, y, bs, beta=1.0):
    """The public code's non-MobileNetV2 expression, with its configured batch size `bs` and Python
    floats (so a batch the teacher gets entirely wrong raises ZeroDivisionError, as there)."""
    t0, ta, wrong = code_targets(t_nat, t_adv, y)
    num_lambda = float(sum(wrong))
    loss_clean = (1 / (num_lambda + 1e-10)) * sum(kl_sum_row(t0[i], s_nat[i]) for i in range(len(y)) if wrong[i])
    loss_adv = (1 / (len(y) - num_lambda)) * sum(kl_sum_row(ta[i], s_adv[i]) for i in range(len(y)) if not wrong[i])
    pcr = sum((pa - pn) ** 2 for a, n in zip(s_adv, s_nat) for pa, pn in zip(softmax_row(a), softmax_row(n)))
    pcr /= len(s_adv) * len(s_adv[0])
    return (num_lambda / bs) * loss_clean + ((bs - num_lambda) / bs) * loss_adv + beta * pcr


def mixed_logits(seed=0, B=8, C=6):
    """Teacher logits where the teacher is wrong on some x, right on x but wrong on some x', with a
    tie on x' (not swapped), and random student logits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(B) % C
    t_nat = torch.randn(B, C, generator=g)
    t_adv = torch.randn(B, C, generator=g)
    for i in range(B):
        label = int(y[i])
        if i % 3 == 0:   # wrong on x
            t_nat[i, (label + 1) % C] = t_nat[i].max() + 1.0
        else:            # right on x
            t_nat[i, label] = t_nat[i].max() + 1.0
        if i % 2 == 0:   # wrong on x'
            t_adv[i, (label + 2) % C] = t_adv[i].max() + 0.5
        else:
            t_adv[i, label] = t_adv[i].max() + 0.5
    t_adv[1, (int(y[1]) + 3) % C] = t_adv[1, int(y[1])]  # an exact tie with the label on x': no swap
    s_nat = torch.randn(B, C, generator=g) * 2
    s_adv = torch.randn(B, C, generator=g) * 2
    return s_nat, s_adv, t_nat, t_adv, y


def make(steps=3, **options):
    cls = get_method("dgad")
    return cls(tiny_convnet(seed=0), num_classes=10, epochs=200, options=cls.Options(**options),
               robust_teacher=tiny_convnet(seed=1), attack=AttackSettings(8 / 255, 2 / 255, steps))


def batch(seed=0, B=12, C=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, C, (B,), generator=g)


# ---- the swaps ------------------------------------------------------------------------------------------
def test_swap_logits_against_a_loop():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(7, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    other = torch.tensor([3, 1, 0, 4, 2, 4, 2])  # rows 1 and 6: other == label
    rows = torch.tensor([True, True, False, True, True, False, True])
    got = dgad_mod.swap_logits(t, labels, other, rows)
    expected = t.clone()
    for i in range(7):
        if rows[i]:
            a, b = int(labels[i]), int(other[i])
            expected[i, a], expected[i, b] = t[i, b], t[i, a]
    assert torch.equal(got, expected)  # exact: values are moved, not recomputed
    assert torch.equal(got[[1, 2, 5, 6]], t[[1, 2, 5, 6]])


def test_guided_targets_match_the_public_codes_swaps():
    s_nat, s_adv, t_nat, t_adv, y = mixed_logits()
    t0, ta, wrong, fooled = dgad_mod.guided_targets(t_nat, t_adv, y)
    e0, ea, e_wrong = code_targets(t_nat, t_adv, y)
    assert t0.tolist() == e0 and ta.tolist() == ea and wrong.tolist() == e_wrong
    assert wrong.tolist() == [i % 3 == 0 for i in range(8)]
    assert fooled.tolist() == [i % 2 == 0 for i in range(8)]  # row 1's tie is not swapped
    # after the swap the teacher's top class is the label on every row it was wrong on
    assert torch.equal(t0.argmax(1)[wrong], y[wrong]) and torch.equal(ta.argmax(1)[fooled], y[fooled])
    assert torch.equal(t0[~wrong], t_nat[~wrong]) and torch.equal(ta[~fooled], t_adv[~fooled])


# ---- the loss ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta, kd_weight", [(1.0, 1.0), (2.5, 0.5)])
def test_loss_against_the_formula(beta, kd_weight):
    s_nat, s_adv, t_nat, t_adv, y = mixed_logits()
    s_nat.requires_grad_(True)
    s_adv.requires_grad_(True)
    terms = dgad_mod.dgad_terms(s_nat, s_adv, t_nat, t_adv, y)
    got = kd_weight * (terms.kd_clean + terms.kd_adv) + beta * terms.pcr
    expected = formula(s_nat.tolist(), s_adv.tolist(), t_nat, t_adv, y, beta=beta, kd_weight=kd_weight)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert terms.teacher_wrong.item() == pytest.approx(3 / 8)          # rows 0, 3, 6
    assert terms.adv_swapped.item() == pytest.approx(2 / 8)            # rows 2, 4: right on x, wrong on x'
    got.backward()
    assert s_nat.grad.abs().sum() > 0 and s_adv.grad.abs().sum() > 0


def test_pcr_pulls_both_sides():
    # the code's MSELoss(softmax(S(x')), softmax(S(x))) detaches neither side
    s_nat, s_adv, *_ = mixed_logits()
    s_nat.requires_grad_(True)
    s_adv.requires_grad_(True)
    pcr = dgad_mod.pcr_loss(s_adv, s_nat)
    grad_adv, grad_nat = torch.autograd.grad(pcr, (s_adv, s_nat))
    assert grad_adv.abs().sum() > 0 and grad_nat.abs().sum() > 0
    assert pcr.item() == pytest.approx(((torch.softmax(s_adv.double(), 1) - torch.softmax(s_nat.double(), 1)) ** 2)
                                       .mean().item(), rel=1e-6)


def test_on_a_full_batch_it_equals_the_public_codes_expression():
    s_nat, s_adv, t_nat, t_adv, y = mixed_logits(seed=3)
    terms = dgad_mod.dgad_terms(s_nat, s_adv, t_nat, t_adv, y)
    ours = (terms.kd_clean + terms.kd_adv + terms.pcr).item()
    assert ours == pytest.approx(code_loss(s_nat.tolist(), s_adv.tolist(), t_nat, t_adv, y, bs=8), rel=1e-5)
    # a short last batch (the code's loader keeps it): the code still divides by its configured 128
    short = code_loss(s_nat.tolist(), s_adv.tolist(), t_nat, t_adv, y, bs=128)
    assert short != pytest.approx(ours, rel=1e-3)


def test_a_batch_the_teacher_gets_entirely_wrong_is_finite():
    s_nat, s_adv, t_nat, t_adv, y = mixed_logits(seed=4)
    y = (t_nat.argmax(1) + 1) % t_nat.shape[1]  # the teacher is wrong on every clean example
    with pytest.raises(ZeroDivisionError):
        code_loss(s_nat.tolist(), s_adv.tolist(), t_nat, t_adv, y, bs=8)
    terms = dgad_mod.dgad_terms(s_nat, s_adv, t_nat, t_adv, y)
    assert terms.teacher_wrong.item() == 1.0 and terms.kd_adv.item() == 0.0 and terms.adv_swapped.item() == 0.0
    expected = formula(s_nat.tolist(), s_adv.tolist(), t_nat, t_adv, y)
    assert (terms.kd_clean + terms.kd_adv + terms.pcr).item() == pytest.approx(expected, rel=1e-5)
    # and the teacher right on every example: only the adversarial term
    y = t_nat.argmax(1)
    terms = dgad_mod.dgad_terms(s_nat, s_adv, t_nat, t_adv, y)
    assert terms.kd_clean.item() == 0.0 and terms.teacher_wrong.item() == 0.0
    assert (terms.kd_clean + terms.kd_adv + terms.pcr).item() == pytest.approx(
        formula(s_nat.tolist(), s_adv.tolist(), t_nat, t_adv, y), rel=1e-5)


# ---- the step ------------------------------------------------------------------------------------------
def test_step_against_the_formula(monkeypatch):
    method = make(pcr_weight=2.0, kd_weight=0.5)
    method.start_epoch(1)
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    method.student.train()
    bn = method.student[1]
    start_mean = bn.running_mean.clone()
    out = method.training_step(x, y)
    (call,) = recorder.calls
    # AdaAD's attack: its objective module (teacher evaluated at x'), x + 0.001·N(0, I), eval modes
    assert isinstance(call["loss"], adaad_mod.TeacherStudentKL) and call["loss"] is method.attack_objective
    assert call["loss"].teacher is method.robust_teacher
    assert call["random_start"] == "normal" and not call["student_training"] and not method.robust_teacher.training
    assert (call["eps"], call["alpha"], call["steps"]) == (8 / 255, 2 / 255, 3)
    # S(x) then S(x') in train mode: BN's running mean moved by x first, then by x'
    m = bn.momentum
    with torch.no_grad():
        first = method.student[0](x).mean(dim=(0, 2, 3))
        second = method.student[0](recorder.x_adv).mean(dim=(0, 2, 3))
    expected_mean = (1 - m) * ((1 - m) * start_mean + m * first) + m * second
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-6)
    with torch.no_grad():
        s_nat, s_adv = method.student(x), method.student(recorder.x_adv)
        t_nat, t_adv = method.robust_teacher(x), method.robust_teacher(recorder.x_adv)
    expected = formula(s_nat.tolist(), s_adv.tolist(), t_nat, t_adv, y, beta=2.0, kd_weight=0.5)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)
    assert set(out) == {"loss", "kd_clean", "kd_adv", "pcr", "teacher_wrong", "adv_swapped"}


def test_pcr_weight_zero_drops_the_term(monkeypatch):
    method = make(pcr_weight=0.0)
    x, y = batch()
    monkeypatch.setattr(base_mod, "pgd", AttackRecorder(method.student, x))
    method.student.train()
    out = method.training_step(x, y)
    assert "pcr" not in out
    assert out["loss"].item() == pytest.approx((out["kd_clean"] + out["kd_adv"]).item(), rel=1e-6)


def test_a_step_on_an_all_wrong_batch_makes_no_host_sync_and_is_finite(monkeypatch):
    method = make()
    x, _ = batch()
    with torch.no_grad():
        y = (method.robust_teacher(x).argmax(1) + 1) % 10
    method.student.train()
    with forbid_host_sync(monkeypatch) as calls:
        out = method.training_step(x, y)
        out["loss"].backward()
    assert calls == []
    assert torch.isfinite(out["loss"]) and out["teacher_wrong"].item() == 1.0
    assert all(torch.isfinite(p.grad).all() for p in method.student.parameters())


# ---- options, presets, the engine --------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"pcr_weight": -1.0}, "pcr_weight must be >= 0"),
    ({"kd_weight": 0.0}, "kd_weight must be > 0"),
    ({"kd_weight": "0.5"}, "'kd_weight' must be a number"),
])
def test_bad_options_are_refused_when_the_config_is_built(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_config(overrides={**TINY, "method": "dgad", "method_args": options})


def test_presets_hold_the_code_defaults():
    cls = get_method("dgad")
    for base in ("cifar10-resnet18", "cifar10-mobilenetv2", "cifar100-resnet18", "tinyimagenet-resnet18"):
        config = TrainConfig.from_preset(f"{base}-dgad")
        assert (config.method, config.epochs, config.weight_decay, config.batch_size, config.lr) == \
            ("dgad", 200, 5e-4, 128, 0.1)
        assert (config.eps, config.alpha, config.attack_steps) == (8 / 255, 2 / 255, 10)
        options = cls.Options(**config.method_args)
        assert (options.pcr_weight, options.kd_weight) == (1.0, 1.0)  # no MobileNetV2 factor either
    method = make()
    assert [method.student_lr(e) for e in (1, 99, 100, 149, 150, 200)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_trains_through_train_with_file_teachers(tmp_path, teacher_files):
    config = build_config(overrides={**TINY, **teachers_of("dgad", teacher_files), "method": "dgad", "out_dir": str(tmp_path / "run")})
    result = ciard_fast.train(config)
    assert result.metrics and all(math.isfinite(v) for v in result.metrics.values() if isinstance(v, float))
    last = result.history[-1]
    assert {"train_kd_clean", "train_kd_adv", "train_pcr", "train_teacher_wrong", "train_adv_swapped"} <= set(last)
    assert all(math.isfinite(last[k]) for k in ("train_kd_clean", "train_kd_adv", "train_pcr"))
    assert 0.0 <= last["train_teacher_wrong"] <= 1.0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["method"] == "dgad"


def test_runs_in_compare(tmp_path):
    from test_compare import TINY as COMPARE_TINY

    result = compare("dgad", preset=None, out_dir=str(tmp_path / "cmp"), pcr_weight=0.5, **COMPARE_TINY)
    row = result.rows["dgad"]
    assert all(0.0 <= row[k] <= 100.0 for k in ("clean", "fgsm", "pgd_sat"))
    run = json.loads((tmp_path / "cmp" / "dgad" / "seed-0" / "results.json").read_text())
    assert run["config"]["method_args"] == {"pcr_weight": 0.5}
