"""The CIARD method in isolation: no host sync in a step, frozen/trained teachers, state updates."""
import contextlib

import pytest
import torch

from ciard_fast import losses
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine.optim import RunOptimizers
from ciard_fast.methods import AttackSettings, get_method, list_methods

from _tiny import tiny_convnet

SYNC_CALLS = [("Tensor", "item"), ("Tensor", "tolist"), ("Tensor", "nonzero"), ("Tensor", "numpy"),
              ("Tensor", "__bool__"), ("Tensor", "cpu"), ("torch", "nonzero"), ("torch", "masked_select")]


@contextlib.contextmanager
def forbid_host_sync(monkeypatch):
    """Every call that reads a device value on the host (or makes a data-dependent shape) raises."""
    calls = []

    def spy(name, original):
        def wrapper(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"host sync inside a training step: {name}")
        return wrapper

    original_getitem = torch.Tensor.__getitem__

    def getitem(self, index):
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items):
            raise AssertionError("boolean-mask indexing inside a training step")
        return original_getitem(self, index)

    with monkeypatch.context() as m:
        for owner, name in SYNC_CALLS:
            target = torch.Tensor if owner == "Tensor" else torch
            m.setattr(target, name, spy(f"{owner}.{name}", getattr(target, name)))
        m.setattr(torch.Tensor, "__getitem__", getitem)
        yield calls


def make_ciard(epochs=6, **options):
    student, robust, clean = tiny_convnet(seed=0), tiny_convnet(seed=1), tiny_convnet(seed=2)
    cls = get_method("ciard")
    method = cls(student, num_classes=10, epochs=epochs, robust_teacher=robust, clean_teacher=clean,
                 options=cls.Options(**options), attack=AttackSettings(8 / 255, 2 / 255, 3))
    return method


def batch(seed=0, B=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, 10, (B,), generator=g)


def optimizers(method, momentum=0.0):
    """The run's optimisers as the engine builds them: the student's SGD and the method's own
    (CIARD's ITT optimiser of R), each at its schedule's lr after `set_epoch`."""
    return RunOptimizers(method, momentum=momentum, kind="sgd")


def one_step(method, x, y, optimizer):
    out = method.training_step(x, y)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    method.after_optimizer_step()
    return out


def test_registry_lists_ciard_and_rejects_unknown_names():
    assert "ciard" in list_methods()
    with pytest.raises(ValueError, match="unknown method 'nope'.*ciard"):
        get_method("nope")


@pytest.mark.parametrize("epoch", [1, 6])  # before ITT and with ITT active (E_itt = 6/6 = 1)
def test_ciard_step_makes_no_host_sync(monkeypatch, epoch):
    method = make_ciard()
    opt = optimizers(method)
    opt.set_epoch(epoch)
    method.start_epoch(epoch)
    x, y = batch()
    one_step(method, x, y, opt)  # the first step records L⁰; the second is the steady state
    with forbid_host_sync(monkeypatch) as calls:
        one_step(method, x, y, opt)
        one_step(method, *batch(1), opt)
    assert calls == []


def test_the_spy_does_catch_item():
    with pytest.MonkeyPatch.context() as mp, forbid_host_sync(mp):
        with pytest.raises(AssertionError, match="item"):
            torch.ones(()).item()


def test_clean_teacher_frozen_robust_teacher_trained_only_during_itt():
    method = make_ciard(epochs=12)  # E_itt = 2
    opt = optimizers(method, momentum=0.9)
    clean_before = {k: v.clone() for k, v in method.clean_teacher.state_dict().items()}
    robust_before = {k: v.clone() for k, v in method.robust_teacher.state_dict().items()}
    opt.set_epoch(2)
    assert opt["teacher_optimizer"].param_groups[0]["lr"] == 0
    method.start_epoch(2)
    for s in range(2):
        one_step(method, *batch(s), opt)
    for k, v in method.robust_teacher.state_dict().items():
        assert torch.equal(v, robust_before[k]), f"robust teacher changed before ITT: {k}"
    opt.set_epoch(3)
    method.start_epoch(3)  # epoch > E_itt: ITT on
    assert opt["teacher_optimizer"].param_groups[0]["lr"] > 0
    for s in range(2):
        out = one_step(method, *batch(s), opt)
    assert "teacher_loss" in out
    changed = [k for k, v in method.robust_teacher.state_dict().items() if not torch.equal(v, robust_before[k])]
    assert any(k.endswith("weight") for k in changed), "ITT did not update the robust teacher"
    for k, v in method.clean_teacher.state_dict().items():
        assert torch.equal(v, clean_before[k]), f"clean teacher changed: {k}"
    assert all(p.grad is None for p in method.clean_teacher.parameters())


def test_itt_off_keeps_robust_teacher_bit_identical():
    method = make_ciard(epochs=6, itt=False)
    opt = torch.optim.SGD(method.student.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in method.robust_teacher.state_dict().items()}
    method.start_epoch(6)
    one_step(method, *batch(), opt)
    assert all(torch.equal(v, before[k]) for k, v in method.robust_teacher.state_dict().items())


def test_state_updates_follow_the_rules():
    method = make_ciard(epochs=300)
    method.start_epoch(1)
    opt = torch.optim.SGD(method.student.parameters(), lr=0.0)
    x, y = batch()
    tau_before = (method.tau_adv.clone(), method.tau_nat.clone())
    out = one_step(method, x, y, opt)
    # first step: L⁰ = the first losses; r = 1 for both, so w stays at 0.5/0.5
    assert torch.allclose(method.initial_losses, torch.stack([out["L_adv"], out["L_nat"]]))
    assert torch.allclose(method.weights, torch.tensor([0.5, 0.5]))
    assert method.has_initial_losses.item()
    # λ is the magnitude-matching power of ten of this step's losses
    assert method.push_lambda.item() == pytest.approx(
        losses.push_weight(out["L_adv"], out["L_nat"], out["L_push"]).item())
    # τ moved by exactly η_τ in opposite directions, or stayed at the clip
    moved = [abs(a.item() - b.item()) for a, b in zip((method.tau_adv, method.tau_nat), tau_before)]
    assert all(m == pytest.approx(0.001, abs=1e-7) or m == 0.0 for m in moved)
    # rates decay ×0.1 at epochs 215, 260, 285
    method.start_epoch(215)
    assert method.eta_w.item() == pytest.approx(0.0025) and method.eta_tau.item() == pytest.approx(0.0001)
    method.start_epoch(285)
    assert method.eta_w.item() == pytest.approx(0.025e-3)


def test_student_objective_is_the_weighted_sum_minus_push():
    method = make_ciard(epochs=300)
    method.start_epoch(1)
    out = method.training_step(*batch())
    expected = method.weights[0] * out["L_adv"] + method.weights[1] * out["L_nat"] - method.push_lambda * out["L_push"]
    assert torch.allclose(out["loss"].detach(), expected)
    fixed = make_ciard(epochs=300, weighting="fixed", push=False)
    fixed.start_epoch(1)
    out = fixed.training_step(*batch())
    assert torch.allclose(out["loss"].detach(), out["L_adv"] + out["L_nat"])


def test_state_dict_round_trip():
    a = make_ciard(epochs=6)
    opt = optimizers(a)
    opt.set_epoch(3)
    a.start_epoch(3)
    one_step(a, *batch(), opt)
    b = make_ciard(epochs=6)
    b_opt = optimizers(b)
    # the checkpoint's method entry: the registered state, R (ITT moved it) and R's optimiser
    ckpt.restore_method_entry(b, b_opt, ckpt.method_entry(a, opt.state_dict()))
    for key in ("tau_adv", "tau_nat", "weights", "initial_losses", "push_lambda"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert any(not torch.equal(v, make_ciard(epochs=6).robust_teacher.state_dict()[k])
               for k, v in a.robust_teacher.state_dict().items())
    for k, v in a.robust_teacher.state_dict().items():
        assert torch.equal(v, b.robust_teacher.state_dict()[k])
    assert b_opt["teacher_optimizer"].state_dict()["state"].keys() == opt["teacher_optimizer"].state_dict()["state"].keys()


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="weighting"):
        make_ciard(weighting="magic")
    with pytest.raises(ValueError, match="robust teacher"):
        get_method("ciard")(tiny_convnet(), num_classes=10, epochs=3, clean_teacher=tiny_convnet())
