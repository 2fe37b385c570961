"""The IGDM term (`ciard_fast/methods/igdm.py`), the methods that accept it and its variants.

Each value is checked against the formula written out here, in float64:

    δ = x' − x,  x₊ = x + β·δ,  x₋ = x − γ·δ
    L_IGDM = (1/B) Σᵢ Σ_c p_ic·(log p_ic − log q_ic),  p = softmax(T(x₊) − T(x₋)),  q = softmax(S(x₊) − S(x₋))
    L = L_base + α·(e/E)·L_IGDM

The contract tests (no host sync, exact mid-epoch resume, ...) run over the registered variants
`adaad_igdm` / `rslad_igdm` from test_method_contract.py, and here over ARD, IAD and Fair-ARD with
the term switched on (``TEST_METHODS``).
"""
import copy
import dataclasses
import math

import pytest
import torch

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.methods import AttackSettings, get_method, list_methods
from ciard_fast.methods.adaad import AdaAD, adaad_loss
from ciard_fast.methods.ard import ARD, ard_loss
from ciard_fast.methods.fair_ard import FairARD
from ciard_fast.methods.iad import IAD
from ciard_fast.methods.igdm import IGDM, PAPER_ALPHA, igdm_alpha_option
from ciard_fast.methods.rslad import RSLAD, rslad_terms
from ciard_fast.methods.terms import ADV, StepContext

from _tiny import tiny_convnet
from method_contract import *  # noqa: F401,F403  (the contract tests, over TEST_METHODS)
from method_contract import TINY, batch


# ---- the methods with the term switched on, for the contract tests -----------------------------------
def _switched_on(base):
    @dataclasses.dataclass
    class Options(base.Options):
        igdm_alpha: float = igdm_alpha_option(2.0)

    return type(f"{base.__name__}WithIGDM", (base,), {"name": f"test_{base.name}_igdm", "Options": Options,
                                                      "__module__": __name__})


TEST_METHODS = tuple(_switched_on(cls) for cls in (ARD, IAD, FairARD))


# ---- the formula, written out ---------------------------------------------------------------------------
def igdm_formula(student, teacher, x, x_adv, beta=1.0, gamma=1.0):
    """L_IGDM in float64 from the networks themselves (the student's BN in train mode, the teacher
    as it is); the teacher side without gradient."""
    delta = x_adv - x
    x_plus = x_adv if beta == 1.0 else x + beta * delta
    x_minus = x - gamma * delta
    with torch.no_grad():
        d_t = teacher(x_plus).double() - teacher(x_minus).double()
    d_s = student(x_plus).double() - student(x_minus).double()
    p = torch.exp(d_t) / torch.exp(d_t).sum(1, keepdim=True)
    log_q = d_s - torch.log(torch.exp(d_s).sum(1, keepdim=True))
    return (p * (torch.log(p) - log_q)).sum(1).mean()


def nets(seed=0):
    student, teacher = tiny_convnet(seed=seed), tiny_convnet(seed=seed + 1)
    student.train()
    teacher.eval()
    return student, teacher


def adversarial(x, seed=3, eps=8 / 255):
    g = torch.Generator().manual_seed(seed)
    return (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)


def context(student, teacher, x, y, x_adv, logits=None, epoch=3, epochs=6):
    return StepContext(x=x, y=y, x_adv=x_adv, logits=dict(logits or {}),
                       networks={"student": student, "robust_teacher": teacher}, epoch=epoch, epochs=epochs)


# ---- the term ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta,gamma", [(1.0, 1.0), (0.5, 2.0)])
def test_the_term_is_its_formula(beta, gamma):
    student, teacher = nets()
    x, y = batch(0)
    x_adv = adversarial(x)
    term = IGDM(alpha=3.0, beta=beta, gamma=gamma)
    reference = copy.deepcopy(student)
    value = term(context(student, teacher, x, y, x_adv))
    expected = igdm_formula(reference, teacher, x, x_adv, beta, gamma)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert value.item() > 0
    # per example: the same KLs before the batch mean
    per = IGDM(alpha=3.0, beta=beta, gamma=gamma).per_sample(context(copy.deepcopy(reference), teacher, x, y, x_adv))
    assert per.shape == (8,) and per.mean().item() == pytest.approx(value.item(), rel=1e-6)


def test_x_minus_is_not_clamped_to_the_image_range():
    """x − γ·δ is a finite-difference point, not an image (all public sources leave it unclamped)."""
    student, teacher = nets()
    x = torch.zeros(4, 3, 16, 16)            # black images: x − δ lies below 0 wherever δ > 0
    x_adv = torch.full_like(x, 8 / 255)
    seen = []
    handle = teacher.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    try:
        IGDM(alpha=1.0)(context(student, teacher, x, torch.zeros(4, dtype=torch.long), x_adv))
    finally:
        handle.remove()
    assert any(torch.allclose(inp, torch.full_like(x, -8 / 255)) for inp in seen)


def test_the_gradient_reaches_the_student_only():
    student, teacher = nets()
    for p in teacher.parameters():  # not even frozen: the term itself keeps the teacher out of the graph
        p.requires_grad_(True)
    x, y = batch(1)
    x_adv = adversarial(x, seed=4)
    reference = copy.deepcopy(student)
    IGDM(alpha=1.0)(context(student, teacher, x, y, x_adv)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    igdm_formula(reference, teacher, x, x_adv).backward()
    assert all(p.grad is None for p in teacher.parameters())
    for (name, p), q in zip(student.named_parameters(), reference.parameters()):
        assert p.grad is not None and torch.allclose(p.grad, q.grad.float(), rtol=1e-4, atol=1e-7), name


def test_the_weight_is_alpha_times_epoch_over_E():
    student, teacher = nets()
    x, y = batch(0)
    ctx = lambda e: context(student, teacher, x, y, x, epoch=e, epochs=40)  # noqa: E731
    term = IGDM(alpha=20.0)
    assert [term.weight(ctx(e)) for e in (1, 10, 40)] == [20.0 / 40, 20.0 * 10 / 40, 20.0]
    # the public code's constant E = 200, whatever the run's length
    assert IGDM(alpha=20.0, epochs=200).weight(ctx(40)) == pytest.approx(20.0 * 40 / 200)


def test_the_step_s_logits_are_reused_where_beta_is_one():
    """β = 1: x₊ is x' itself; S(x') and T(x') come from the step when it has them."""
    student, teacher = nets()
    x, y = batch(0)
    x_adv = adversarial(x)
    calls = {"student": 0, "teacher": 0}
    student.register_forward_hook(lambda *a: calls.__setitem__("student", calls["student"] + 1))
    teacher.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    s_adv = student(x_adv)
    with torch.no_grad():
        t_adv = teacher(x_adv)
    calls.update(student=0, teacher=0)
    IGDM(alpha=1.0)(context(student, teacher, x, y, x_adv, {("student", ADV): s_adv,
                                                            ("robust_teacher", ADV): t_adv}))
    assert calls == {"student": 1, "teacher": 1}      # S(x₋), T(x₋)
    calls.update(student=0, teacher=0)
    IGDM(alpha=1.0)(context(student, teacher, x, y, x_adv, {("student", ADV): s_adv}))
    assert calls == {"student": 1, "teacher": 2}      # + T(x')
    calls.update(student=0, teacher=0)
    IGDM(alpha=1.0, beta=0.5)(context(student, teacher, x, y, x_adv, {("student", ADV): s_adv,
                                                                      ("robust_teacher", ADV): t_adv}))
    assert calls == {"student": 2, "teacher": 2}      # x₊ ≠ x': nothing to reuse


def test_a_missing_teacher_is_a_clear_error():
    student, _ = nets()
    x, y = batch(0)
    ctx = StepContext(x=x, y=y, x_adv=x, networks={"student": student})
    with pytest.raises(ValueError, match="robust_teacher"):
        IGDM(alpha=1.0)(ctx)


# ---- the methods that accept it -------------------------------------------------------------------------
ACCEPTING = sorted(name for name in list_methods() if IGDM in get_method(name).shared_terms)


def test_every_method_of_the_ard_family_accepts_the_term():
    assert {"ard", "rslad", "adaad", "iad", "fair_ard", "adaad_igdm", "rslad_igdm"} <= set(ACCEPTING)
    for name in ACCEPTING:
        assert issubclass(get_method(name).Options, IGDM.Options), name
    # one declaration: the options come from the term, not from each method
    assert all("igdm_alpha" not in vars(get_method(name).Options).get("__annotations__", {})
               for name in ("ard", "rslad", "adaad", "iad", "fair_ard"))
    config = build_config(overrides={"method": "rslad", "igdm_alpha": 4.0})
    assert config.method_args == {"igdm_alpha": 4.0}
    with pytest.raises(ValueError, match="igdm_alpha must be >= 0"):
        build_config(overrides={"method": "ard", "igdm_alpha": -1.0})
    with pytest.raises(ValueError, match="igdm_gamma must be > 0"):
        build_config(overrides={"method": "adaad", "igdm_gamma": 0.0})
    with pytest.raises(ValueError, match="unknown config key .igdm_alpha"):
        build_config(overrides={"method": "mtard", "method_args": {"igdm_alpha": 1.0}})


def build(name, epochs=6, **options):
    cls = get_method(name)
    options = cls.Options(**options)
    roles = {spec.role: tiny_convnet(seed=i + 1) for i, spec in enumerate(cls.variant_for(options).declare_networks(
        options))}
    return cls(tiny_convnet(seed=0), num_classes=10, epochs=epochs, options=options,
               attack=AttackSettings(8 / 255, 2 / 255, 2), **roles)


def fixed_attack(monkeypatch, recorded):
    def attack(self, x, y, **kwargs):  # the same x' for every method and run (no RNG)
        recorded["x_adv"] = adversarial(x, seed=11)
        return recorded["x_adv"]

    from ciard_fast.methods.base import Method
    monkeypatch.setattr(Method, "attack_student", attack)


@pytest.mark.parametrize("name", ACCEPTING)
def test_each_accepting_method_adds_the_term_to_its_own_loss(name, monkeypatch):
    """α > 0: the base terms are unchanged and the total gains α·e/E·L_IGDM, the formula's value."""
    recorded = {}
    fixed_attack(monkeypatch, recorded)
    on = build(name, igdm_alpha=2.5)
    off = build(name, igdm_alpha=0.0)
    for method in (on, off):
        method.start_epoch(4)
    x, y = batch(3)
    out_off = off.training_step(x, y)
    student_after_base = copy.deepcopy(on.student)   # the step's forwards move BN statistics: replay them
    out_on = on.training_step(x, y)
    assert "igdm" in out_on and "igdm" not in out_off
    assert set(out_on) - {"igdm"} == set(out_off)
    for key in out_off:
        if key != "loss":
            assert torch.equal(out_on[key], out_off[key]), key
    expected = igdm_formula(student_after_base, on.robust_teacher, x, recorded["x_adv"])
    assert out_on["igdm"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert out_on["loss"].item() == pytest.approx(out_off["loss"].item() + 2.5 * 4 / 6 * out_on["igdm"].item(),
                                                  rel=1e-6)


def _base_step(name, method, x, y, x_adv):
    """The base method's loss, computed here from its own loss function (no term)."""
    S, T = method.student, method.robust_teacher
    s_adv = S(x_adv)
    if name == "ard":
        with torch.no_grad():
            s_nat = S(x)
            t_nat = T(x)
        return ard_loss(s_adv, s_nat, t_nat, y, tau=30.0, kd_weight=1.0)
    if name == "rslad":
        s_nat = S(x)
        with torch.no_grad():
            t_nat = T(x)
        L_adv, L_nat = rslad_terms(s_adv, s_nat, t_nat, 1.0)
        return (5 / 6) * L_adv + (1 - 5 / 6) * L_nat
    with torch.no_grad():
        s_nat = S(x)
        t_adv = T(x_adv)
    return adaad_loss(s_adv, s_nat, t_adv, None, adv_weight=1.0, kd_scale=1.0)


@pytest.mark.parametrize("name", ["ard", "rslad", "adaad"])
def test_alpha_zero_leaves_the_method_bit_identical(name, monkeypatch):
    """igdm_alpha = 0 (the default): the same loss, gradients and BN statistics, bit for bit, as the
    method's own loss function; no term logged, no extra forward."""
    recorded = {}
    fixed_attack(monkeypatch, recorded)
    method = build(name, igdm_alpha=0.0)
    assert method._shared_terms == () and build(name)._shared_terms == ()
    reference = copy.deepcopy(method)
    method.start_epoch(5)
    x, y = batch(2)
    out = method.training_step(x, y)
    assert "igdm" not in out
    out["loss"].backward()
    expected = _base_step(name, reference, x, y, recorded["x_adv"])
    expected.backward()
    assert torch.equal(out["loss"], expected)
    for (key, p), q in zip(method.student.named_parameters(), reference.student.parameters()):
        assert torch.equal(p.grad, q.grad), key
    for (key, b), c in zip(method.student.named_buffers(), reference.student.buffers()):
        assert torch.equal(b, c), key


def test_the_step_makes_no_host_sync_with_the_term_on(monkeypatch):
    from test_ciard_method import forbid_host_sync

    for name in ACCEPTING:
        method = build(name, igdm_alpha=1.0)
        method.start_epoch(2)
        with forbid_host_sync(monkeypatch) as calls:
            method.training_step(*batch(4))["loss"].backward()
        assert calls == [], name


# ---- the registered variants ------------------------------------------------------------------------------
def test_the_variants_switch_the_term_on_with_the_paper_alpha():
    for name, base in (("adaad_igdm", AdaAD), ("rslad_igdm", RSLAD)):
        cls = get_method(name)
        assert issubclass(cls, base) and cls.paper_epochs == base.paper_epochs and cls.milestones == base.milestones
        assert cls.Options().igdm_alpha == PAPER_ALPHA == 20.0
        method = build(name)
        assert [type(t) for t in method._shared_terms] == [IGDM] and method._shared_terms[0].alpha == 20.0
        assert build(name, igdm_alpha=0.0)._shared_terms == ()
    # AdaAD + IGDM: a batch mean of per-example sums on every dataset (the IGDM code), AdaAD's own
    # reduction stays the mean over B×C on 10 classes
    assert build("adaad_igdm").kd_scale == 10.0 and build("adaad").kd_scale == 1.0
    assert build("adaad_igdm", kd_scale=2.0).kd_scale == 2.0
    assert build("rslad_igdm").kd_scale == build("rslad").kd_scale == 1.0


def test_the_variants_presets():
    adaad = build_config(preset="cifar10-resnet18-adaad_igdm")
    assert (adaad.method, adaad.epochs, adaad.weight_decay) == ("adaad_igdm", 200, 2e-4)
    assert adaad.method_args == {"adv_weight": 1.0, "igdm_alpha": 20.0}
    rslad = build_config(preset="cifar100-mobilenetv2-rslad_igdm")
    assert (rslad.method, rslad.epochs, rslad.weight_decay) == ("rslad_igdm", 300, 2e-4)
    assert rslad.method_args == {"igdm_alpha": 20.0}


@pytest.mark.parametrize("name", ["adaad_igdm", "rslad_igdm"])
def test_a_variant_trains_through_train_with_file_teachers(name, tmp_path, teacher_files):
    result = ciard_fast.train(build_config(overrides={**TINY, **teachers_of(name, teacher_files), "method": name,
                                                      "out_dir": str(tmp_path / name)}))
    last = result.history[-1]
    assert "train_igdm" in last and math.isfinite(last["train_igdm"]) and last["train_igdm"] > 0
    assert all(math.isfinite(v) for v in result.metrics.values())
    state = ckpt.load_checkpoint(result.last_checkpoint)
    assert state["config"]["method"] == name
