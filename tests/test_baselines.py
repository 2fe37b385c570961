"""The baseline distillation methods (docs/baselines.md): ARD, RSLAD, IAD, AdaAD, MTARD, B-MTARD, Fair-ARD.

Each loss is checked on fixed logits against its formula written out here with explicit
softmax/log math (float64, not the library's functions); each training step against the same
formulas on the step's own forwards (the attack replaced by a recorder that returns a fixed x');
then smoke runs, frozen teachers, the host-sync spy, checkpoints of the state and the schedules.
"""
import math

import pytest
import torch

from ciard_fast.attacks.pgd import pgd
from ciard_fast.methods import AttackSettings, get_method, list_methods
from ciard_fast.methods import adaad as adaad_mod
from ciard_fast.methods import ard as ard_mod
from ciard_fast.methods import base as base_mod
from ciard_fast.methods import fair_ard as fair_mod
from ciard_fast.methods import iad as iad_mod
from ciard_fast.methods import rslad as rslad_mod

from _tiny import tiny_convnet
from test_ciard_method import forbid_host_sync

BASELINES = ("ard", "rslad", "iad", "adaad", "mtard", "bmtard", "fair_ard")
STATEFUL = ("mtard", "bmtard", "fair_ard")


# ---- explicit math (float64), independent of the library -----------------------------------------
def softmax(z, T=1.0):
    z = z.detach().double() / T
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def kl_exact(p, q):
    """p·(log p − log q) elementwise (torch's KLDivLoss convention)."""
    return p * (torch.log(p) - torch.log(q))


def kl_eps(p, q):
    """p·(log(p + 1e-5) − log q) elementwise (the RSLAD/MTARD/CIARD code's kl)."""
    return p * (torch.log(p + 1e-5) - torch.log(q))


def cross_entropy(z, y):
    return -torch.log(softmax(z)[torch.arange(len(y)), y])


def neg_entropy(z, T):
    p = softmax(z, T)
    return (p * torch.log(p + 1e-5)).mean()


# ---- set-up --------------------------------------------------------------------------------------
def make(name, epochs=6, num_classes=10, steps=3, **options):
    cls = get_method(name)
    kw = {"robust_teacher": tiny_convnet(num_classes, seed=1)}
    if cls.needs_clean_teacher:
        kw["clean_teacher"] = tiny_convnet(num_classes, seed=2)
    return cls(tiny_convnet(num_classes, seed=0), num_classes=num_classes, epochs=epochs,
               options=cls.Options(**options), attack=AttackSettings(8 / 255, 2 / 255, steps), **kw)


def batch(seed=0, B=8, C=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, C, (B,), generator=g)


def logits(seed, B=6, C=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, C, generator=g) * scale).requires_grad_(True)


def one_step(method, x, y, optimizer):
    out = method.training_step(x, y)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    method.after_optimizer_step()
    return out


class AttackRecorder:
    """Stands in for the attack: records how it was called and returns a fixed x'."""

    def __init__(self, student, x, calls_model=0):
        g = torch.Generator().manual_seed(123)
        self.x_adv = (x + 0.03 * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
        self.student = student
        self.calls_model = calls_model
        self.calls = []

    def __call__(self, model, x, y, **kwargs):
        self.calls.append(dict(kwargs, student_training=self.student.training, model=model))
        for _ in range(self.calls_model):
            model(x)
        return self.x_adv.clone()


def student_train_logits(method, *inputs):
    method.student.train()
    with torch.no_grad():
        return [method.student(v) for v in inputs]


def teacher_logits(teacher, *inputs):
    assert not teacher.training
    with torch.no_grad():
        return [teacher(v) for v in inputs]


# ---- registry, teachers, options -------------------------------------------------------------------
def test_every_baseline_is_registered_with_its_teachers():
    assert set(BASELINES) <= set(list_methods())
    for name in BASELINES:
        cls = get_method(name)
        assert cls.needs_robust_teacher, name
        assert cls.needs_clean_teacher == (name in ("mtard", "bmtard")), name
    with pytest.raises(ValueError, match="robust teacher"):
        get_method("rslad")(tiny_convnet(), num_classes=10, epochs=3)
    with pytest.raises(ValueError, match="clean teacher"):
        get_method("mtard")(tiny_convnet(), num_classes=10, epochs=3, robust_teacher=tiny_convnet())


@pytest.mark.parametrize("name, options, match", [
    ("ard", {"tau": 0.0}, "tau must be > 0, got 0.0"),
    ("ard", {"kd_weight": 1.5}, "kd_weight must be in \\[0, 1\\], got 1.5"),
    ("iad", {"beta": -1.0}, "beta must be >= 0, got -1.0"),
    ("iad", {"begin": -5}, "begin must be >= 0"),
    ("rslad", {"adv_weight": 2.0}, "adv_weight must be in \\[0, 1\\], got 2.0"),
    ("rslad", {"kd_scale": -1.0}, "kd_scale must be > 0"),
    ("adaad", {"adv_weight": -0.1}, "adv_weight must be in \\[0, 1\\], got -0.1"),
    ("mtard", {"w_nat": 1.2}, "w_nat must be in \\[0, 1\\], got 1.2"),
    ("mtard", {"rate_decay_epochs": ("x",)}, "rate_decay_epochs must be a sequence"),
    ("bmtard", {"eta_tau": -0.1}, "eta_tau must be >= 0, got -0.1"),
    ("fair_ard", {"weight_bounds": (3.0, 1.0)}, "weight_bounds must be"),
])
def test_bad_options_raise_with_the_value(name, options, match):
    with pytest.raises(ValueError, match=match):
        make(name, **options)


def test_kd_scale_defaults_follow_each_codes_convention():
    assert make("rslad", num_classes=100).kd_scale == 10.0   # ×10 in RSLAD's CIFAR-100 script
    assert make("mtard", num_classes=100).kd_scale == 10.0
    assert make("bmtard", num_classes=100).kd_scale == 10.0
    assert make("adaad", num_classes=100).kd_scale == 100.0  # AdaAD sums over classes on CIFAR-100
    assert make("adaad", num_classes=10).kd_scale == 1.0
    assert make("rslad", num_classes=10).kd_scale == 1.0
    assert make("rslad", num_classes=100, kd_scale=1.0).kd_scale == 1.0


def test_options_from_the_command_line_as_strings_are_accepted():
    assert make("mtard", rate_decay_epochs=("215", "260")).rate_decay_epochs == (215.0, 260.0)
    assert make("fair_ard", weight_bounds=("0.5", "2")).weight_bounds == (0.5, 2.0)


# ---- losses on fixed logits -------------------------------------------------------------------------
def test_ard_loss_formula():
    s_adv, s_nat, t = logits(0), logits(1), logits(2)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    tau, alpha = 4.0, 0.7
    got = ard_mod.ard_loss(s_adv, s_nat, t, y, tau=tau, kd_weight=alpha)
    kl = kl_exact(softmax(t, tau), softmax(s_adv, tau)).mean()  # mean over B×C
    expected = alpha * tau ** 2 * kl + (1 - alpha) * cross_entropy(s_nat, y).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # α = 1: the KD term alone, and S(x) is not needed
    only_kd = ard_mod.ard_loss(s_adv, None, t, y, tau=tau, kd_weight=1.0)
    assert only_kd.item() == pytest.approx((tau ** 2 * kl).item(), rel=1e-5)


def test_ard_loss_with_fair_ard_sample_weights():
    s_adv, s_nat, t = logits(3), logits(4), logits(5)
    y = torch.tensor([0, 1, 1, 3, 4, 2])
    w = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0, 0.9])
    tau, alpha = 2.0, 0.6
    got = ard_mod.ard_loss(s_adv, s_nat, t, y, tau=tau, kd_weight=alpha, sample_weights=w)
    per_example_kl = kl_exact(softmax(t, tau), softmax(s_adv, tau)).mean(dim=1)
    expected = (alpha * tau ** 2 * (w.double() * per_example_kl).mean()
                + (1 - alpha) * (w.double() * cross_entropy(s_nat, y)).mean())
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rslad_loss_formula():
    s_adv, s_nat, t = logits(6), logits(7), logits(8)
    loss, L_adv, L_nat = rslad_mod.rslad_loss(s_adv, s_nat, t, kd_scale=10.0)
    adv = 10 * kl_eps(softmax(t), softmax(s_adv)).mean()
    nat = 10 * kl_eps(softmax(t), softmax(s_nat)).mean()
    assert L_adv.item() == pytest.approx(adv.item(), rel=1e-5)
    assert L_nat.item() == pytest.approx(nat.item(), rel=1e-5)
    assert loss.item() == pytest.approx((5 / 6 * adv + 1 / 6 * nat).item(), rel=1e-5)


def test_iad_loss_formula_before_and_after_the_start():
    s_adv, s_nat, t_nat, t_adv = logits(9), logits(10), logits(11), logits(12)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    tau, beta, a = 2.0, 0.1, 0.8
    kd = kl_exact(softmax(t_nat, tau), softmax(s_adv, tau)).sum(dim=1).mean()  # sum over C, mean over B
    ce = cross_entropy(s_nat, y).mean()
    alpha_i = softmax(t_adv)[torch.arange(6), y] ** beta
    self_kl = kl_exact(softmax(s_nat), softmax(s_adv)).sum(dim=1)

    before, w = iad_mod.iad_loss(s_adv, s_nat, t_nat, t_adv, y, tau=tau, beta=beta, kd_weight=a, introspect=False)
    assert before.item() == pytest.approx((a * tau ** 2 * kd + (1 - a) * ce).item(), rel=1e-5)
    assert torch.equal(w, torch.ones(6))

    after, w = iad_mod.iad_loss(s_adv, s_nat, t_nat, t_adv, y, tau=tau, beta=beta, kd_weight=a, introspect=True)
    expected = a * tau ** 2 * kd + a * ((1 - alpha_i) * self_kl).mean() + (1 - a) * ce
    assert after.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(w.double(), alpha_i, rtol=1e-5)


def test_iad_introspection_target_is_not_detached():
    # the public code keeps softmax(S(x)) in the graph: S(x) gets a gradient from that term alone
    s_adv, s_nat, t_nat, t_adv = logits(13), logits(14), logits(15), logits(16)
    y = torch.zeros(6, dtype=torch.long)
    loss, _ = iad_mod.iad_loss(s_adv, s_nat, t_nat, t_adv, y, introspect=True)
    loss.backward()
    assert s_nat.grad is not None and s_nat.grad.abs().sum() > 0
    assert t_nat.grad is None and t_adv.grad is None


def test_adaad_loss_and_objective_formula():
    s_adv, s_nat, t_adv, t_nat = logits(17), logits(18), logits(19), logits(20)
    got = adaad_mod.adaad_loss(s_adv, s_nat, t_adv, t_nat, adv_weight=0.75, kd_scale=3.0)
    expected = 3.0 * (0.75 * kl_exact(softmax(t_adv), softmax(s_adv)).mean()
                      + 0.25 * kl_exact(softmax(t_nat), softmax(s_nat)).mean())
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    objective = adaad_mod.adaad_objective(s_adv, t_adv)
    assert objective.item() == pytest.approx(kl_exact(softmax(t_adv), softmax(s_adv)).sum().item(), rel=1e-5)
    objective.backward()  # the inner maximisation differentiates through the teacher too
    assert t_adv.grad is not None and t_adv.grad.abs().sum() > 0 and s_adv.grad.abs().sum() > 0


def test_fair_class_weights_formula():
    kappa = torch.tensor([10.0, 5.0, 2.0, 1.0])
    got = fair_mod.fair_class_weights(kappa, beta=2.0, bounds=(5 / 6, 5 / 2))
    raw = [(1 / (k + 1e-5)) ** 2 for k in kappa.tolist()]
    scaled = [r * 4 / sum(raw) for r in raw]
    expected = [min(max(v, 5 / 6), 5 / 2) for v in scaled]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert got[0].item() == pytest.approx(5 / 6) and got[-1].item() == pytest.approx(5 / 2)


# ---- each training step against its formula ---------------------------------------------------------
def test_ard_step(monkeypatch):
    method = make("ard", tau=3.0, kd_weight=0.6)
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    out = method.training_step(x, y)
    (call,) = recorder.calls
    assert call["random_start"] == "uniform" and call["loss"] == "ce" and not call["student_training"]
    assert call["steps"] == 3 and call["eps"] == pytest.approx(8 / 255) and call["alpha"] == pytest.approx(2 / 255)
    s_adv, s_nat = student_train_logits(method, recorder.x_adv, x)
    (t,) = teacher_logits(method.robust_teacher, x)  # the teacher sees the clean image
    expected = 0.6 * 9 * kl_exact(softmax(t, 3), softmax(s_adv, 3)).mean() + 0.4 * cross_entropy(s_nat, y).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_ard_attack_train_mode_reproduces_the_code(monkeypatch):
    method = make("ard", attack_train_mode=True)
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    method.training_step(x, y)
    assert recorder.calls[0]["student_training"] and method.student.training


def test_rslad_step(monkeypatch):
    method = make("rslad")
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    out = method.training_step(x, y)
    (call,) = recorder.calls
    (t,) = teacher_logits(method.robust_teacher, x)
    assert call["loss"] == "kl" and call["random_start"] == "normal" and not call["student_training"]
    assert torch.allclose(call["target_logits"], t)  # the robust soft labels T(x) drive the attack
    s_adv, s_nat = student_train_logits(method, recorder.x_adv, x)
    expected = 5 / 6 * kl_eps(softmax(t), softmax(s_adv)).mean() + 1 / 6 * kl_eps(softmax(t), softmax(s_nat)).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("epoch, introspect", [(1, False), (2, True)])
def test_iad_step(monkeypatch, epoch, introspect):
    method = make("iad", epochs=200, begin=1, tau=1.0, beta=0.1)  # introspection from epoch 2
    method.start_epoch(epoch)
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    out = method.training_step(x, y)
    assert recorder.calls[0]["random_start"] == "uniform" and recorder.calls[0]["loss"] == "ce"
    s_adv, s_nat = student_train_logits(method, recorder.x_adv, x)
    t_nat, t_adv = teacher_logits(method.robust_teacher, x, recorder.x_adv)
    expected = kl_exact(softmax(t_nat), softmax(s_adv)).sum(dim=1).mean()
    if introspect:
        alpha_i = softmax(t_adv)[torch.arange(len(y)), y] ** 0.1
        expected = expected + ((1 - alpha_i) * kl_exact(softmax(s_nat), softmax(s_adv)).sum(dim=1)).mean()
        assert out["iad_alpha"].item() == pytest.approx(alpha_i.mean().item(), rel=1e-5)
    else:
        assert out["iad_alpha"].item() == 1.0
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_adaad_step(monkeypatch):
    method = make("adaad", adv_weight=0.5)
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    out = method.training_step(x, y)
    (call,) = recorder.calls
    assert call["loss"] is method.attack_objective and call["random_start"] == "normal"
    assert not call["student_training"] and not method.robust_teacher.training
    assert (call["eps"], call["alpha"], call["steps"]) == (8 / 255, 2 / 255, 3)
    s_adv, s_nat = student_train_logits(method, recorder.x_adv, x)
    t_adv, t_nat = teacher_logits(method.robust_teacher, recorder.x_adv, x)
    expected = 0.5 * kl_exact(softmax(t_adv), softmax(s_adv)).mean() + 0.5 * kl_exact(softmax(t_nat), softmax(s_nat)).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_adaad_attack_is_pgd_on_the_student_teacher_kl():
    student, teacher = tiny_convnet(seed=0).eval(), tiny_convnet(seed=1).eval()
    x, _ = batch(B=4)
    eps, alpha = 8 / 255, 2 / 255
    torch.manual_seed(7)
    got = pgd(student, x, torch.zeros(4, dtype=torch.long), eps=eps, alpha=alpha, steps=3, random_start="normal",
              loss=adaad_mod.TeacherStudentKL(teacher))
    # the same loop written out: start x + 0.001·N(0, I), ascend Σ KL(T(x')‖S(x')) through both models
    torch.manual_seed(7)
    x_adv = (x + 0.001 * torch.randn(x.shape)).clamp(0, 1)
    for _ in range(3):
        x_adv = x_adv.detach().requires_grad_(True)
        p, q = softmax_graph(teacher(x_adv)), softmax_graph(student(x_adv))
        (grad,) = torch.autograd.grad((p * (torch.log(p) - torch.log(q))).sum(), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(got, x_adv, atol=1e-6)
    assert (got - x).abs().max() <= eps + 1e-6 and got.min() >= 0 and got.max() <= 1
    assert all(p.grad is None for p in list(student.parameters()) + list(teacher.parameters()))
    assert all(p.requires_grad for p in student.parameters())  # flags restored


def softmax_graph(z):
    e = torch.exp(z.double() - z.double().max(dim=1, keepdim=True).values.detach())
    return e / e.sum(dim=1, keepdim=True)


def test_mtard_step_and_weight_rule(monkeypatch):
    method = make("mtard", epochs=300)
    method.start_epoch(1)
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    out = method.training_step(x, y)
    (call,) = recorder.calls
    assert call["loss"] == "ce" and call["random_start"] == "normal" and not call["student_training"]
    s_adv, s_nat = student_train_logits(method, recorder.x_adv, x)
    (r_adv,) = teacher_logits(method.robust_teacher, recorder.x_adv)   # R on x'
    (n_nat,) = teacher_logits(method.clean_teacher, x)                # N on x
    L_adv = kl_eps(softmax(r_adv), softmax(s_adv)).mean()
    L_nat = kl_eps(softmax(n_nat), softmax(s_nat)).mean()
    assert out["L_adv"].item() == pytest.approx(L_adv.item(), rel=1e-4)
    assert out["L_nat"].item() == pytest.approx(L_nat.item(), rel=1e-4)
    # first step: L⁰ = these losses, r = (1, 1), so w stays (0.5, 0.5)
    assert method.weights.tolist() == pytest.approx([0.5, 0.5])
    assert out["loss"].item() == pytest.approx(0.5 * (L_adv + L_nat).item(), rel=1e-4)

    # second step on another batch: w_nat ← w_nat − η(w_nat − r_nat/(r_adv + r_nat)), w_adv = 1 − w_nat
    L0 = (out["L_adv"].item(), out["L_nat"].item())
    x2, y2 = batch(1)
    recorder.x_adv = (x2 + 0.02).clamp(0, 1)
    out2 = method.training_step(x2, y2)
    r_adv, r_nat = out2["L_adv"].item() / L0[0], out2["L_nat"].item() / L0[1]
    w_nat = 0.5 - 0.025 * (0.5 - r_nat / (r_adv + r_nat))
    assert method.weights[1].item() == pytest.approx(w_nat, rel=1e-5)
    assert method.weights[0].item() == 1.0 - method.weights[1].item()
    expected = (1 - w_nat) * out2["L_adv"].item() + w_nat * out2["L_nat"].item()
    assert out2["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert method.log_values()["w_nat"].item() == pytest.approx(w_nat, rel=1e-5)


def test_bmtard_step_temperature_and_weight_rules(monkeypatch):
    method = make("bmtard", epochs=300)
    method.start_epoch(1)
    method.tau_adv.fill_(2.0)  # away from the clip so either direction shows
    method.tau_nat.fill_(3.0)
    x, y = batch()
    recorder = AttackRecorder(method.student, x)
    monkeypatch.setattr(base_mod, "pgd", recorder)
    out = method.training_step(x, y)
    assert recorder.calls[0]["random_start"] == "normal" and recorder.calls[0]["loss"] == "ce"
    s_adv, s_nat = student_train_logits(method, recorder.x_adv, x)
    (r_adv,) = teacher_logits(method.robust_teacher, recorder.x_adv)
    (n_nat,) = teacher_logits(method.clean_teacher, x)
    # the temperatures of this step (2, 3) divide the teacher logits only
    L_adv = kl_eps(softmax(r_adv, 2.0), softmax(s_adv)).mean()
    L_nat = kl_eps(softmax(n_nat, 3.0), softmax(s_nat)).mean()
    assert out["L_adv"].item() == pytest.approx(L_adv.item(), rel=1e-4)
    assert out["L_nat"].item() == pytest.approx(L_nat.item(), rel=1e-4)
    assert out["loss"].item() == pytest.approx(0.5 * (L_adv + L_nat).item(), rel=1e-4)
    # τ moved by η_τ = 0.001 against sign(H_a/H_n − 1) (and the mirror for τ_nat), for the next step
    assert out["H_adv"].item() == pytest.approx(neg_entropy(r_adv, 2.0).item(), rel=1e-5)
    assert out["H_nat"].item() == pytest.approx(neg_entropy(n_nat, 3.0).item(), rel=1e-5)
    ratio = (neg_entropy(r_adv, 2.0) / neg_entropy(n_nat, 3.0)).item()
    direction = math.copysign(1.0, ratio - 1)
    assert method.tau_adv.item() == pytest.approx(2.0 - 0.001 * direction, abs=1e-6)
    assert method.tau_nat.item() == pytest.approx(3.0 + 0.001 * direction, abs=1e-6)
    values = method.log_values()
    assert set(values) == {"tau_adv", "tau_nat", "w_adv", "w_nat"}


def test_bmtard_weights_renormalise_as_ciard_step_8(monkeypatch):
    method = make("bmtard", epochs=300, eta_w=0.5)
    method.start_epoch(1)
    x, y = batch()
    method.training_step(x, y)
    L0 = method.initial_losses.clone()
    out = method.training_step(*batch(1))
    r = torch.stack([out["L_adv"], out["L_nat"]]) / L0
    w = 0.5 - 0.5 * (0.5 - r / r.sum())
    w = w.clamp(min=0) / w.clamp(min=0).sum()
    assert torch.allclose(method.weights, w, rtol=1e-5)


def test_fair_ard_counts_robust_steps_and_reweights_classes(monkeypatch):
    method = make("fair_ard", epochs=200, tau=2.0, kd_weight=1.0)
    method.start_epoch(1)
    x, y = batch(B=8)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    recorder = AttackRecorder(method.student, x, calls_model=3)  # 3 "PGD steps", each one forward
    monkeypatch.setattr(base_mod, "pgd", recorder)
    out = method.training_step(x, y)
    # ε as a tensor: the counting attack stays out of CUDA-graph capture (whose warm-up would count twice)
    assert isinstance(recorder.calls[0]["eps"], torch.Tensor)
    # first epoch: all weights 1, so the loss is ARD's
    s_adv, = student_train_logits(method, recorder.x_adv)
    (t,) = teacher_logits(method.robust_teacher, x)
    assert out["loss"].item() == pytest.approx((4 * kl_exact(softmax(t, 2), softmax(s_adv, 2)).mean()).item(), rel=1e-4)
    # the counts: 3 forwards of the eval-mode student on x, correct ones counted per class
    method.student.eval()
    with torch.no_grad():
        correct = (method.student(x).argmax(1) == y).double()
    method.student.train()
    expected_kappa = [3 * correct[y == c].sum().item() for c in range(10)]
    assert method.kappa_sum.tolist() == pytest.approx(expected_kappa)
    assert method.class_count.tolist() == [2, 2, 2, 2, 0, 0, 0, 0, 0, 0]
    # next epoch: κ_c = count / examples; unseen classes take the mean κ of the seen ones
    method.start_epoch(2)
    kappa = torch.tensor([expected_kappa[c] / 2 for c in range(4)], dtype=torch.float64)
    kappa = torch.cat([kappa, kappa.mean().repeat(6)])
    raw = (1 / (kappa + 1e-5)) ** 2
    weights = (raw * 10 / raw.sum()).clamp(5 / 6, 5 / 2)
    assert torch.allclose(method.class_weights.double(), weights, rtol=1e-5)
    assert method.kappa_sum.sum().item() == 0 and method.class_count.sum().item() == 0
    # and the next step multiplies every example's KL by the weight of its class
    out = method.training_step(x, y)
    s_adv, = student_train_logits(method, recorder.x_adv)
    per_example = kl_exact(softmax(t, 2), softmax(s_adv, 2)).mean(dim=1)
    expected = 4 * (weights[y] * per_example).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_fair_ard_with_the_real_attack_counts_at_most_the_steps():
    method = make("fair_ard", steps=3)
    method.start_epoch(1)
    x, y = batch()
    method.training_step(x, y)
    assert method.class_count.sum().item() == len(y)
    assert 0 <= method.kappa_sum.sum().item() <= 3 * len(y)


# ---- smoke: a few real steps ----------------------------------------------------------------------
def monitored(name, out):
    # MTARD/B-MTARD's total moves with its adaptive weights; their KD terms are what must fall
    return (out["L_adv"] + out["L_nat"]).item() if name in ("mtard", "bmtard") else out["loss"].item()


@pytest.mark.parametrize("name", BASELINES)
def test_a_few_steps_reduce_the_loss_and_stay_finite(name):
    torch.manual_seed(0)
    method = make(name, epochs=200, **({"begin": 0} if name == "iad" else {}))
    method.start_epoch(1)
    opt = torch.optim.SGD(method.student.parameters(), lr=0.5, momentum=0.9)
    x, y = batch(B=16)
    values = [monitored(name, one_step(method, x, y, opt)) for _ in range(12)]
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) < sum(values[:3]), values
    for p in method.student.parameters():
        assert torch.isfinite(p).all()
    for value in method.log_values().values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("name", BASELINES)
def test_teachers_stay_frozen_and_bit_identical(name):
    method = make(name)
    teachers = [t for t in (method.robust_teacher, method.clean_teacher) if t is not None]
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    opt = torch.optim.SGD(method.student.parameters(), lr=0.1)
    for epoch in (1, 6):
        method.start_epoch(epoch)
        for s in range(2):
            out = one_step(method, *batch(s), opt)
    for teacher, saved in zip(teachers, before):
        assert not teacher.training
        for k, v in teacher.state_dict().items():
            assert torch.equal(v, saved[k]), f"{name}: teacher changed: {k}"
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # every value the trainer accumulates is a 0-d tensor
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values())


@pytest.mark.parametrize("name", BASELINES)
def test_step_makes_no_host_sync(monkeypatch, name):
    method = make(name, epochs=6, **({"begin": 0} if name == "iad" else {}))
    method.start_epoch(2)
    opt = torch.optim.SGD(method.student.parameters(), lr=0.1)
    one_step(method, *batch(), opt)  # MTARD/B-MTARD record L⁰ here; the next steps are the steady state
    with forbid_host_sync(monkeypatch) as calls:
        one_step(method, *batch(1), opt)
        one_step(method, *batch(2), opt)
    assert calls == []


# ---- checkpoints -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_continues_identically(name):
    a = make(name, epochs=300)
    opt = torch.optim.SGD(a.student.parameters(), lr=0.1)
    a.start_epoch(1)
    for s in range(2):
        one_step(a, *batch(s), opt)
    if name == "fair_ard":
        a.start_epoch(2)  # non-trivial class weights
        one_step(a, *batch(3), opt)
    b = make(name, epochs=300)
    state = a.state_dict()
    b.load_state_dict(state)
    b.student.load_state_dict(a.student.state_dict())
    for key in a.state_names():
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    # the next epoch and step are the same for both
    for m in (a, b):
        m.start_epoch(216)
    torch.manual_seed(11)
    out_a = a.training_step(*batch(4))
    torch.manual_seed(11)
    out_b = b.training_step(*batch(4))
    assert torch.equal(out_a["loss"], out_b["loss"])
    for key in a.state_names():
        assert torch.equal(getattr(a, key), getattr(b, key)), key


# ---- schedules ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ("ard", "iad", "adaad", "fair_ard"))
def test_ard_family_lr_schedule_200_epochs_and_scaled(name):
    m = make(name, epochs=200)
    assert [m.student_lr(e) for e in (1, 99, 100, 149, 150, 200)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    m = make(name, epochs=20)  # breakpoints 100/150 of 200 -> 10/15 of 20
    assert [m.student_lr(e) for e in (9, 10, 14, 15)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize("name", ("rslad", "mtard", "bmtard"))
def test_300_epoch_step_schedule(name):
    m = make(name, epochs=300)
    assert [m.student_lr(e) for e in (1, 214, 215, 259, 260, 284, 285, 300)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    m = make(name, epochs=30)  # 215/260/285 of 300 -> 22/26/29 of 30 (nearest epoch)
    assert [m.student_lr(e) for e in (21, 22, 25, 26, 28, 29)] == pytest.approx(
        [0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4])


def test_mtard_and_bmtard_rates_decay_at_the_breakpoints():
    m = make("bmtard", epochs=300)
    for epoch, factor in ((214, 1.0), (215, 0.1), (260, 0.01), (285, 0.001)):
        m.start_epoch(epoch)
        assert m.eta_w.item() == pytest.approx(0.025 * factor)
        assert m.eta_tau.item() == pytest.approx(0.001 * factor)
    m = make("mtard", epochs=30)
    m.start_epoch(21)
    assert m.eta_w.item() == pytest.approx(0.025)
    m.start_epoch(22)
    assert m.eta_w.item() == pytest.approx(0.0025)


def test_iad_introspection_starts_after_epoch_60_of_200():
    m = make("iad", epochs=200)
    assert not m.introspection_active(60) and m.introspection_active(61)
    m = make("iad", epochs=20)  # 60 of 200 -> 6 of 20
    assert not m.introspection_active(6) and m.introspection_active(7)
    assert make("iad", epochs=20, begin=0).introspection_active(1)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_updates_go_through_the_all_rank_mean(name):
    """Under DDP the engine sets reduce_mean/world_size; with every rank seeing the same batch the
    all-rank mean is the local value, so the state must match a single process exactly."""
    single, ddp = make(name, epochs=300), make(name, epochs=300)
    reduced = []
    ddp.world_size = 2
    ddp.reduce_mean = lambda t: reduced.append(t.shape) or t
    for m in (single, ddp):
        m.start_epoch(1)
    for s in range(2):
        for m in (single, ddp):
            torch.manual_seed(s)
            m.training_step(*batch(s))
    for m in (single, ddp):
        m.start_epoch(2)
    assert reduced, "the state update did not use the all-rank mean"
    for key in single.state_names():
        assert torch.allclose(getattr(single, key), getattr(ddp, key)), key


# ---- presets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_has_its_recipe_as_a_preset(name):
    from ciard_fast.config import TrainConfig

    cls = get_method(name)
    for base in ("cifar10-resnet18", "cifar10-mobilenetv2", "cifar100-resnet18", "cifar100-mobilenetv2"):
        config = TrainConfig.from_preset(f"{base}-{name}")
        assert config.method == name and config.epochs == cls.paper_epochs
        assert config.weight_decay == (5e-4 if name == "adaad" else 2e-4)
        assert config.student == ("mobilenet_v2" if "mobilenet" in base else "resnet18")
        assert config.dataset == base.split("-")[0]
        cls.Options(**config.method_args)  # the spelled-out defaults are valid options
        assert all(getattr(cls.Options(), k) == v for k, v in config.method_args.items())


def test_no_option_shadows_a_config_field():
    # an option named like a TrainConfig field (e.g. "alpha", the attack step) could never be set
    # from the command line: the field wins
    import dataclasses

    from ciard_fast.config import FIELD_NAMES

    for name in list_methods():   # every registered method, the 2024-2026 ones included
        options = {f.name for f in dataclasses.fields(get_method(name).Options)}
        assert not options & set(FIELD_NAMES), (name, options & set(FIELD_NAMES))
