"""The training attack has one owner, `Method.attack_student`, and `pgd` takes objective callables.

Every method that attacks honours `attack_random_start` (spied on the random-start kernel), gets
its student's modes back when the attack raises (fault injection), and AdaAD's attack through
`pgd` is bit-for-bit the loop it used to write itself (kept below as the reference).
"""
import pytest
import torch
from torch import nn

from ciard_fast import kernels
from ciard_fast.attacks import graphs
from ciard_fast.attacks._common import frozen_parameters
from ciard_fast.attacks.objectives import ce_objective
from ciard_fast.attacks.pgd import NORMAL_START_SIGMA, pgd
from ciard_fast.methods import AttackSettings, get_method
from ciard_fast.methods import adaad as adaad_mod
from ciard_fast.methods import base as base_mod

from _tiny import tiny_convnet

# method -> its documented default random start
DEFAULT_STARTS = {"ciard": "normal", "sat": "uniform", "trades": "normal", "ard": "uniform", "iad": "uniform",
                  "fair_ard": "uniform", "rslad": "normal", "adaad": "normal", "mtard": "normal", "bmtard": "normal"}


def make(name, random_start="default", steps=2):
    cls = get_method(name)
    kw = {}
    if cls.needs_robust_teacher:
        kw["robust_teacher"] = tiny_convnet(10, seed=1)
    if cls.needs_clean_teacher:
        kw["clean_teacher"] = tiny_convnet(10, seed=2)
    method = cls(tiny_convnet(10, seed=0), num_classes=10, epochs=4,
                 attack=AttackSettings(8 / 255, 2 / 255, steps, random_start=random_start), **kw)
    method.start_epoch(1)
    method.student.train()
    return method


def batch(B=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, 10, (B,), generator=g)


def spy_random_start(monkeypatch):
    kinds = []
    original = kernels.pgd_random_start

    def spy(x0, eps, kind="uniform", **kwargs):
        kinds.append(kind)
        return original(x0, eps, kind=kind, **kwargs)

    monkeypatch.setattr(kernels, "pgd_random_start", spy)
    return kinds


@pytest.mark.parametrize("name", sorted(DEFAULT_STARTS))
@pytest.mark.parametrize("random_start", ["default", "none", "uniform", "normal"])
def test_every_attacking_method_honours_attack_random_start(monkeypatch, name, random_start):
    method = make(name, random_start)
    kinds = spy_random_start(monkeypatch)
    out = method.training_step(*batch())
    assert torch.isfinite(out["loss"])
    if random_start == "none":
        assert kinds == []  # no start drawn: the attack starts at x
    else:
        expected = DEFAULT_STARTS[name] if random_start == "default" else random_start
        assert kinds == [expected]


@pytest.mark.parametrize("name", sorted(DEFAULT_STARTS))
def test_student_mode_restored_when_the_attack_raises(monkeypatch, name):
    method = make(name)
    # a mixed state (one layer in eval mode) must come back exactly, not as student.train()
    frozen_layer = next(m for m in method.student.modules() if isinstance(m, nn.BatchNorm2d))
    frozen_layer.eval()
    before = [m.training for m in method.student.modules()]
    seen = []

    def exploding_pgd(model, x, y, **kwargs):
        seen.append(method.student.training)
        raise RuntimeError("injected attack failure")

    monkeypatch.setattr(base_mod, "pgd", exploding_pgd)
    with pytest.raises(RuntimeError, match="injected attack failure"):
        method.training_step(*batch())
    assert seen == [False]  # attacked in eval mode
    assert [m.training for m in method.student.modules()] == before


def test_ard_attack_train_mode_keeps_train_mode_during_the_attack(monkeypatch):
    cls = get_method("ard")
    method = cls(tiny_convnet(10, seed=0), num_classes=10, epochs=4, robust_teacher=tiny_convnet(10, seed=1),
                 options=cls.Options(attack_train_mode=True), attack=AttackSettings(8 / 255, 2 / 255, 2))
    method.student.eval()  # whatever mode it had, it gets back
    seen = []
    monkeypatch.setattr(base_mod, "pgd", lambda model, x, y, **kw: seen.append(method.student.training) or x)
    method.attack_student(*batch())
    assert seen == [True] and not method.student.training


# ---- AdaAD through pgd ------------------------------------------------------------------------
def reference_adaad_attack(student, teacher, x, eps, alpha, steps):
    """AdaAD's attack loop as the library wrote it before it went through `pgd` (the reference)."""
    x0 = x.detach()
    x_adv = kernels.pgd_random_start(x0, eps, kind="normal", sigma=NORMAL_START_SIGMA)
    with frozen_parameters(student), frozen_parameters(teacher), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            objective = adaad_mod.adaad_objective(student(x_adv), teacher(x_adv))
            (grad,) = torch.autograd.grad(objective, x_adv)
            x_adv = x_adv.detach()
            kernels.pgd_step(x_adv, x0, grad, eps, alpha, out=x_adv)
    return x_adv


def test_adaad_attack_through_pgd_equals_the_former_loop_bit_for_bit():
    method = make("adaad", steps=5)
    x, y = batch(8)
    student, teacher = method.student, method.robust_teacher
    torch.manual_seed(11)
    got = method.attack_student(x, y, loss=method.attack_objective)
    torch.manual_seed(11)
    with base_mod.module_mode(student, False):
        expected = reference_adaad_attack(student, teacher, x, 8 / 255, 2 / 255, 5)
    assert torch.equal(got, expected)
    assert not torch.equal(got, x)
    assert student.training and not teacher.training
    assert all(p.grad is None for p in list(student.parameters()) + list(teacher.parameters()))
    # and through the public, validating pgd as well
    torch.manual_seed(11)
    with base_mod.module_mode(student, False):
        public = pgd(student, x, y, steps=5, random_start="normal", loss=method.attack_objective)
    assert torch.equal(public, expected)


# ---- pgd with an objective callable ------------------------------------------------------------
def test_callable_objective_matches_the_named_loss():
    model = tiny_convnet(10, seed=3).eval()
    x, y = batch()
    torch.manual_seed(0)
    named = pgd(model, x, y, steps=3)
    torch.manual_seed(0)
    custom = pgd(model, x, y, steps=3, loss=lambda logits, x_adv: ce_objective(logits, y))
    assert torch.equal(named, custom)


def test_objective_module_parameters_frozen_and_restored():
    model, teacher = tiny_convnet(10, seed=3).eval(), tiny_convnet(10, seed=4).eval()
    objective = adaad_mod.TeacherStudentKL(teacher)
    flags = []

    class Spy(nn.Module):
        def forward(self, logits, x_adv):
            flags.append(any(p.requires_grad for p in teacher.parameters()))
            return objective(logits, x_adv)

    spy = Spy()
    spy.inner = objective
    pgd(model, *batch(), steps=2, loss=spy)
    assert flags == [False, False]
    assert all(p.requires_grad for p in teacher.parameters()) and all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("loss, error, match", [
    (3, TypeError, "loss must be one of 'ce', 'kl', 'cw' or a callable"),
    ("mse", ValueError, "unknown loss 'mse'"),
    (lambda logits, x_adv: logits.sum(dim=1), ValueError, "must return a 0-d tensor"),
    (lambda logits, x_adv: 1.0, ValueError, "must return a 0-d tensor"),
])
def test_bad_objective_is_a_clear_error(loss, error, match):
    model = tiny_convnet(10, seed=3).eval()
    with pytest.raises(error, match=match):
        pgd(model, *batch(), steps=1, loss=loss)


def test_graph_key_holds_the_objective_and_its_mode():
    model = tiny_convnet(10, seed=3).eval()
    x, y = batch()
    first, second = adaad_mod.TeacherStudentKL(tiny_convnet(10)), adaad_mod.TeacherStudentKL(tiny_convnet(10))

    def key(loss):
        return graphs._key(model, x, y, 8 / 255, 2 / 255, 10, "normal", loss, None, 50.0)

    assert key(first) == key(first) and key(first) != key(second) and key(first) != key("ce")
    before = key(first)
    first.teacher.train(not first.teacher.training)
    assert key(first) != before  # a teacher in another mode is another computation
    # only module objectives may be captured (a plain function may close over per-step tensors)
    cache = graphs.GraphCache(device_types=("cpu",))
    assert cache.accepts(x, 8 / 255, 2 / 255, None, model, first)
    assert cache.accepts(x, 8 / 255, 2 / 255, None, model, "ce")
    assert not cache.accepts(x, 8 / 255, 2 / 255, None, model, lambda logits, x_adv: logits.sum())


def test_graph_entry_of_an_objective_is_not_replayed_for_another_teacher():
    """A fake capture on CPU: the entry holds the objective's tensors; replacing the teacher's
    parameters (or using another objective object) never replays the old graph."""
    model = tiny_convnet(10, seed=3).eval()
    x, y = batch()
    objective = adaad_mod.TeacherStudentKL(tiny_convnet(10, seed=4).eval())
    captured = []

    def fake_capture(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
        captured.append(loss)
        return lambda x, y, t: run(model, x, y, eps, alpha, steps, random_start, loss, t, kappa)

    cache = graphs.GraphCache(capture=fake_capture, device_types=("cpu",))
    with graphs.cuda_graphs(cache):
        pgd(model, x, y, steps=2, loss=objective, random_start=None, validate=False)
        pgd(model, x, y, steps=2, loss=objective, random_start=None, validate=False)
        assert (cache.captures, cache.replays) == (1, 1)
        first_layer = next(objective.teacher.parameters())
        with torch.no_grad():
            first_layer.data = first_layer.data.clone()  # same tensor object, new storage
        pgd(model, x, y, steps=2, loss=objective, random_start=None, validate=False)
        assert (cache.captures, cache.replays) == (2, 1)
