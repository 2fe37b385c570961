"""CIARD's `reference_code` mode against a plain transcription of the public code's step.

`PublicStep` below is written here, in our own words, the way the public CIARD script runs one
step: Python floats for τ, w, L⁰, λ and the rates; `.item()` everywhere; `nonzero` for the push
mask; S(x), N(x) and an unused R(x) before the attack; R in train mode throughout; an unclamped
x + 0.001·N(0, I) start; 1·L_adv + 1·L_nat (or the MTARD-weighted total); λ from
`scale_to_magnitude`; η_w, η_τ ×0.1 at every step of the milestone epochs, after that step's
temperature and weight updates (the public loop's order); ITT as a second backward after the
student's step. Tiny BatchNorm models in float64 so that agreement is exact up to summation order,
compared after every step (three of them inside a milestone epoch, where the order of the decay
shows at the first step).
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ciard_fast.engine.optim import RunOptimizers
from ciard_fast.methods import AttackSettings, get_method
from ciard_fast.schedules import ciard_student_lr, ciard_teacher_lr, scaled_epoch

from _tiny import tiny_convnet
from test_ciard_method import forbid_host_sync

EPOCHS = 12          # E_itt = 2; the ×0.1 epochs 215/260/285 of 300 scale to 9/10/11
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 3
TEACHER_LR = 0.05    # larger than the paper's 1e-4 so that six ITT steps move R visibly
SCHEDULE = [(1, 2), (3, 2), (9, 3)]  # (epoch, steps): before ITT, after ITT starts, inside a decay epoch


def kl(log_q, p):
    return -log_q * p + torch.log(p + 1e-5) * p


def magnitude(value):
    if math.isclose(value, 0):
        value += 1e-7
    return math.floor(math.log10(abs(value)))


class PublicStep:
    """One step of the public script, transcribed (see the module docstring)."""

    def __init__(self, S, R, N, weighting, decay_first=False):
        self.S, self.R, self.N = S, R, N
        self.weighting = weighting
        self.decay_first = decay_first  # True: the order this library used before (a wrong transcription)
        self.opt = torch.optim.SGD(S.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        self.topt = torch.optim.SGD(R.parameters(), lr=0.0, momentum=0.1, weight_decay=2e-4)
        self.temp_adv = self.temp_nat = 1.0
        self.w_adv = self.w_nat = 0.5
        self.init_adv = self.init_nat = None
        self.lam = 0.0
        self.lr_tau, self.lr_w = 0.001, 0.025
        self.decay_epochs = [scaled_epoch(m, EPOCHS, 300) for m in (215, 260, 285)]
        R.train()
        N.eval()

    def step(self, x, y, epoch):
        S, R, N = self.S, self.R, self.N
        if self.decay_first and epoch in self.decay_epochs:
            self.lr_tau *= 0.1
            self.lr_w *= 0.1
        itt = epoch > EPOCHS / 6
        for group in self.opt.param_groups:
            group["lr"] = ciard_student_lr(epoch, EPOCHS, 0.1)
        for group in self.topt.param_groups:
            group["lr"] = ciard_teacher_lr(epoch, EPOCHS, TEACHER_LR)
        S.train()
        R.train()
        out_nat = S(x)
        with torch.no_grad():
            t_nat = N(x)
            R(x)
        # the attack: eval mode, unclamped normal start, mean CE
        S.eval()
        x_adv = x.detach() + 0.001 * torch.randn(x.shape, dtype=x.dtype)
        for _ in range(STEPS):
            x_adv.requires_grad_()
            with torch.enable_grad():
                loss = F.cross_entropy(S(x_adv), y)
            grad = torch.autograd.grad(loss, [x_adv])[0]
            x_adv = x_adv.detach() + ALPHA * torch.sign(grad.detach())
            x_adv = torch.clamp(torch.min(torch.max(x_adv, x - EPS), x + EPS), 0.0, 1.0)
        S.train()
        out_adv = S(x_adv)
        with torch.no_grad():
            t_adv_clean = N(x_adv)
        if itt:
            r_out = R(x_adv)
        else:
            with torch.no_grad():
                r_out = R(x_adv)

        p_adv = F.softmax(r_out.detach() / self.temp_adv, dim=1)
        p_nat = F.softmax(t_nat.detach() / self.temp_nat, dim=1)
        l_adv = torch.mean(kl(F.log_softmax(out_adv, dim=1), p_adv))
        l_nat = torch.mean(kl(F.log_softmax(out_nat, dim=1), p_nat))
        h_adv = torch.mean(torch.log(p_adv + 1e-5) * p_adv)
        h_nat = torch.mean(torch.log(p_nat + 1e-5) * p_nat)
        new_adv = self.temp_adv - self.lr_tau * torch.sign(h_adv / h_nat - 1).item()
        new_nat = self.temp_nat - self.lr_tau * torch.sign(h_nat / h_adv - 1).item()
        self.temp_adv = max(min(10.0, new_adv), 1.0)
        self.temp_nat = max(min(10.0, new_nat), 1.0)

        if self.init_nat is None:
            self.init_nat = l_nat.item()
        if self.init_adv is None:
            self.init_adv = l_adv.item()
        r_adv, r_nat = l_adv.item() / self.init_adv, l_nat.item() / self.init_nat
        mean_r = (r_adv + r_nat) / 2
        inv_adv, inv_nat = r_adv / mean_r, r_nat / mean_r
        self.w_nat -= self.lr_w * (self.w_nat - inv_nat / (inv_adv + inv_nat))
        self.w_adv -= self.lr_w * (self.w_adv - inv_adv / (inv_adv + inv_nat))
        self.w_adv, self.w_nat = max(self.w_adv, 0.0), max(self.w_nat, 0.0)
        total_w = self.w_adv + self.w_nat
        self.w_adv, self.w_nat = self.w_adv / total_w, self.w_nat / total_w
        if self.weighting == "adaptive":
            total = self.w_adv * l_adv + self.w_nat * l_nat
        else:
            total = l_adv + l_nat

        wrong = (torch.argmax(t_adv_clean, dim=1) != y).nonzero(as_tuple=True)[0]
        terms = kl(F.log_softmax(out_adv[wrong] / 5.0, dim=1), F.softmax(t_adv_clean[wrong], dim=1))
        if terms.numel() > 0 and not torch.isnan(terms).any():
            l_push = torch.mean(terms)
            self.lam = 10.0 ** (min(magnitude(l_adv.item()), magnitude(l_nat.item())) - magnitude(l_push.item()))
            total = total - self.lam * l_push

        # the public loop decays the rates here: after this step's τ and w, before its backward
        if not self.decay_first and epoch in self.decay_epochs:
            self.lr_tau *= 0.1
            self.lr_w *= 0.1
        self.opt.zero_grad()
        total.backward()
        self.opt.step()
        if itt:
            self.topt.zero_grad()
            F.cross_entropy(r_out, y).backward()
            self.topt.step()


def models():
    S, R, N = (tiny_convnet(width=6, seed=s).double() for s in (0, 1, 2))
    return S, R, N


def batches():
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(sum(n for _, n in SCHEDULE)):
        x = torch.rand(8, 3, 8, 8, generator=g, dtype=torch.float64)
        x[:, :, 0, :] = 0.0   # pixels on the bounds: the unclamped start leaves [0, 1] there
        x[:, :, -1, :] = 1.0
        out.append((x, torch.randint(0, 10, (8,), generator=g)))
    return out


def run_method(S, R, N, data, reference_code, weighting, trace=None):
    """Our method driven as the engine drives it (its optimisers from the declarations: the
    student's SGD and ITT's on R, each lr from its schedule at the epoch's start). `trace`: a list
    that gets (epoch, τ_adv, τ_nat, w_adv, w_nat, λ) after every step."""
    cls = get_method("ciard")
    options = cls.Options(reference_code=reference_code, weighting=weighting, itt_lr=TEACHER_LR)
    method = cls(S, num_classes=10, epochs=EPOCHS, robust_teacher=R, clean_teacher=N, options=options,
                 attack=AttackSettings(EPS, ALPHA, STEPS))
    opt = RunOptimizers(method, momentum=0.9, weight_decay=2e-4, kind="sgd")
    k = 0
    for epoch, steps in SCHEDULE:
        opt.set_epoch(epoch)
        method.start_epoch(epoch)
        for _ in range(steps):
            x, y = data[k]
            torch.manual_seed(1000 + k)  # the same attack noise on both sides
            out = method.training_step(x, y)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            method.after_optimizer_step()
            if trace is not None:
                trace.append((epoch,) + tuple(float(t) for t in (method.tau_adv, method.tau_nat, method.weights[0],
                                                                  method.weights[1], method.push_lambda)))
            k += 1
    return method


def run_public(S, R, N, data, weighting, trace=None, decay_first=False):
    public = PublicStep(S, R, N, weighting, decay_first=decay_first)
    k = 0
    for epoch, steps in SCHEDULE:
        for _ in range(steps):
            x, y = data[k]
            torch.manual_seed(1000 + k)
            public.step(x, y, epoch)
            if trace is not None:
                trace.append((epoch, public.temp_adv, public.temp_nat, public.w_adv, public.w_nat, public.lam))
            k += 1
    return public


def worst_state_difference(mine, public, epoch=None):
    """max relative difference of (τ_adv, τ_nat, w_adv, w_nat, λ) over the steps (of `epoch`)."""
    worst = 0.0
    for a, b in zip(mine, public):
        assert a[0] == b[0]
        if epoch is None or a[0] == epoch:
            worst = max(worst, max(abs(u - v) / max(abs(v), 1e-30) for u, v in zip(a[1:], b[1:])))
    return worst


def max_relative_difference(a, b, same_batches=True):
    """max over tensors of ‖a − b‖∞ / ‖b‖∞ (parameters and BN buffers); with `same_batches` the
    BN batch counters must also be equal."""
    worst = 0.0
    for (name, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        if not u.is_floating_point():
            assert torch.equal(u, v) or not same_batches, name
            continue
        worst = max(worst, float((u - v).abs().max() / v.abs().max().clamp(min=1e-30)))
    return worst


@pytest.mark.parametrize("weighting", [None, "adaptive"])  # None: the mode's default, fixed weights
def test_reference_mode_reproduces_the_public_step(weighting):
    S, R, N = models()
    data = batches()
    mine_trace, public_trace = [], []
    mine = run_method(copy.deepcopy(S), copy.deepcopy(R), copy.deepcopy(N), data, True, weighting, mine_trace)
    public = run_public(copy.deepcopy(S), copy.deepcopy(R), copy.deepcopy(N), data, weighting or "fixed",
                        public_trace)
    # τ, w, λ after every step, the three steps of the milestone epoch 9 included
    assert len(mine_trace) == len(public_trace) == sum(n for _, n in SCHEDULE)
    assert worst_state_difference(mine_trace, public_trace) < 1e-6
    assert max_relative_difference(mine.student, public.S) < 1e-6
    assert max_relative_difference(mine.robust_teacher, public.R) < 1e-6
    assert max_relative_difference(mine.clean_teacher, public.N) == 0.0
    for tensor, value in ((mine.tau_adv, public.temp_adv), (mine.tau_nat, public.temp_nat),
                          (mine.weights[0], public.w_adv), (mine.weights[1], public.w_nat),
                          (mine.push_lambda, public.lam)):
        assert float(tensor) == pytest.approx(value, rel=1e-6)
    # the rates were decayed at each of the three steps of epoch 9
    assert float(mine.eta_tau) == pytest.approx(public.lr_tau, rel=1e-12)
    assert float(mine.eta_tau) == pytest.approx(0.001 * 0.001, rel=1e-12)
    # ITT did train R (so the R comparison above is not vacuous)
    moved = max(float((a.detach() - b.detach()).abs().max() / b.detach().abs().max())
                for a, b in zip(mine.robust_teacher.parameters(), R.parameters()))
    assert moved > 1e-3


def test_the_milestone_comparison_tells_the_order_of_the_decay():
    """The transcription with the rates decayed *before* the step's updates (this library's
    earlier order) differs from our step at the first step of the milestone epoch already, so the
    per-step comparison above would catch that order; before the milestone epoch both agree."""
    S, R, N = models()
    data = batches()
    mine_trace, wrong_trace = [], []
    run_method(copy.deepcopy(S), copy.deepcopy(R), copy.deepcopy(N), data, True, None, mine_trace)
    run_public(copy.deepcopy(S), copy.deepcopy(R), copy.deepcopy(N), data, "fixed", wrong_trace, decay_first=True)
    milestone = 9
    first = next(i for i, row in enumerate(mine_trace) if row[0] == milestone)
    assert worst_state_difference(mine_trace[:first], wrong_trace[:first]) < 1e-6
    assert worst_state_difference(mine_trace[first:first + 1], wrong_trace[first:first + 1]) > 1e-4


def test_default_mode_differs_from_the_public_step():
    S, R, N = models()
    data = batches()
    mine = run_method(copy.deepcopy(S), copy.deepcopy(R), copy.deepcopy(N), data, False, "fixed")
    public = run_public(copy.deepcopy(S), copy.deepcopy(R), copy.deepcopy(N), data, "fixed")
    assert max_relative_difference(mine.student, public.S, same_batches=False) > 1e-3
    assert max_relative_difference(mine.robust_teacher, public.R, same_batches=False) > 1e-3


def test_reference_mode_keeps_robust_teacher_in_train_mode_and_moves_its_bn_before_itt():
    S, R, N = models()
    data = batches()
    cls = get_method("ciard")
    method = cls(S, num_classes=10, epochs=EPOCHS, robust_teacher=R, clean_teacher=N,
                 options=cls.Options(reference_code=True), attack=AttackSettings(EPS, ALPHA, STEPS))
    before = copy.deepcopy(R.state_dict())
    method.start_epoch(1)
    assert R.training and not N.training
    method.training_step(*data[0])
    changed = [k for k, v in R.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("running" in k or "num_batches" in k for k in changed)  # BN only, no weights
    assert all(not p.requires_grad for p in R.parameters())


@pytest.mark.parametrize("epoch", [1, 3, 9])
def test_reference_mode_step_makes_no_host_sync(monkeypatch, epoch):
    S, R, N = (tiny_convnet(seed=s) for s in (0, 1, 2))
    cls = get_method("ciard")
    method = cls(S, num_classes=10, epochs=EPOCHS, robust_teacher=R, clean_teacher=N,
                 options=cls.Options(reference_code=True), attack=AttackSettings(EPS, ALPHA, STEPS))
    opt = RunOptimizers(method, momentum=0.0, kind="sgd")  # ITT's optimiser steps in epochs 3 and 9
    opt.set_epoch(epoch)
    method.start_epoch(epoch)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))

    def step():
        out = method.training_step(x, y)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.after_optimizer_step()

    step()
    with forbid_host_sync(monkeypatch) as calls:
        step()
        step()
    assert calls == []


def test_reference_mode_checkpoints_the_decayed_rates():
    S, R, N = models()
    cls = get_method("ciard")
    make = lambda: cls(copy.deepcopy(S), num_classes=10, epochs=EPOCHS, robust_teacher=copy.deepcopy(R),  # noqa: E731
                       clean_teacher=copy.deepcopy(N), options=cls.Options(reference_code=True),
                       attack=AttackSettings(EPS, ALPHA, STEPS))
    a = make()
    a.start_epoch(9)
    x, y = batches()[0]
    a.training_step(x, y)
    b = make()
    b.load_state_dict(a.state_dict())
    b.start_epoch(10)  # a new epoch must not reset the per-step decay
    assert float(b.eta_w) == pytest.approx(0.025 * 0.1)


def test_reference_push_weight_is_scale_to_magnitude():
    from ciard_fast import losses

    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # no floor: a 1e-9 push loss has magnitude −9 (our default floors it at 1e-7: −7)
    assert float(losses.push_weight_reference(t(0.05), t(0.02), t(3e-9))) == pytest.approx(1e7)
    assert float(losses.push_weight(t(0.05), t(0.02), t(3e-9))) == pytest.approx(1e5)
    # exactly 0 becomes 1e-7
    assert float(losses.push_weight_reference(t(0.05), t(0.0), t(0.2))) == pytest.approx(1e-6)
    for l_adv, l_nat, l_push in ((0.05, 0.02, 0.2), (0.12, 0.03, 0.003), (2.5e-9, 0.4, 7e-3), (0.0, 0.0, 0.0)):
        expected = 10.0 ** (min(magnitude(l_adv), magnitude(l_nat)) - magnitude(l_push))
        got = losses.push_weight_reference(t(l_adv), t(l_nat), t(l_push))
        assert got.dtype == torch.float64 and float(got) == pytest.approx(expected, rel=1e-12)


def test_official_presets_and_the_cli_switch():
    from ciard_fast.config import build_config
    from ciard_fast.engine.cli_train import parse_extra

    for name, student in (("cifar10-resnet18-official", "resnet18"), ("cifar10-mobilenetv2-official", "mobilenet_v2")):
        config = build_config(preset=name)
        assert config.method == "ciard" and config.method_args == {"reference_code": True}
        assert config.student == student and config.epochs == 300 and config.batch_size == 128
        assert (config.student_normalize, config.robust_teacher_normalize, config.clean_teacher_normalize) == (
            False, False, False)  # raw pixels for every model, as the public script
        assert config.precision == "fp32" and config.val_size == 1000  # selection on a held-out split
    assert parse_extra(["--reference_code", "true"], "ciard") == {"reference_code": True}
    assert parse_extra(["--weighting", "adaptive"], "ciard") == {"weighting": "adaptive"}
    with pytest.raises(TypeError, match="reference_code"):
        get_method("ciard")(tiny_convnet(), num_classes=10, epochs=3, robust_teacher=tiny_convnet(),
                            clean_teacher=tiny_convnet(), options=get_method("ciard").Options(reference_code="yes"))
