"""SAAD (`ciard_fast/methods/saad.py`) against its formulas, written out here in float64:

    gᵢ   = ∇ₓ T(x)ᵢ,yᵢ
    t̃ᵢ   = T(x)ᵢ + λ·e_yᵢ·⟨gᵢ, x'ᵢ − xᵢ⟩;     attack objective Σᵢ Σ_c KL(softmax(t̃)ᵢ ‖ softmax(S(x'))ᵢ)
    Hᵢ   = −Σ_c p_ic log(p_ic + 1e-12), p = softmax(T(x'))     (order γ ≠ 1: log(Σ p^γ + 1e-12)/(1 − γ))
    wᵢ   = s·(Hᵢ − min H),  w̄ᵢ = wᵢ/(max w + 1e-8)
    L    = (1/B) Σᵢ [ wᵢ·(KLᵢ(T(x') ‖ S(x')) + α·(e/E)·KLᵢ(softmax(T(x')−T(x−δ)) ‖ softmax(S(x')−S(x−δ))))
                      + β·(1 − w̄ᵢ)·KLᵢ(T(x) ‖ S(x)) ]

The contract tests (no host sync, frozen teacher, state round trip, exact mid-epoch resume, bad
options) run over `saad` from test_method_contract.py.
"""
import copy
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.engine.swa import swa_start_epoch
from ciard_fast.methods import AttackSettings
from ciard_fast.methods.base import Method
from ciard_fast.methods.igdm import IGDM
from ciard_fast.methods.saad import (SAAD, LinearisedTeacherKL, entropy_weights, renyi_entropy,
                                     true_class_gradient)

from _tiny import tiny_convnet, tiny_convnet_nobn
from method_contract import TINY, batch, teacher_files, teachers_of  # noqa: F401  (a fixture)


def make(epochs=6, steps=2, random_start="default", nets=tiny_convnet, dtype=torch.float32, **options):
    student, teacher = nets(seed=0).to(dtype), nets(seed=1).to(dtype)
    with torch.no_grad():  # a confident teacher: entropies (and so the weights) spread over the batch
        teacher[-1].weight.mul_(30.0)
    return SAAD(student, num_classes=10, epochs=epochs, robust_teacher=teacher, options=SAAD.Options(**options),
                attack=AttackSettings(8 / 255, 2 / 255, steps, random_start=random_start))


def kl_rows(p, log_q):
    return (p * (torch.log(p) - log_q)).sum(1)


def softmax64(z):
    z = z.double()
    return torch.exp(z - z.max(1, keepdim=True).values) / torch.exp(z - z.max(1, keepdim=True).values).sum(1,
                                                                                                          keepdim=True)


def log_softmax64(z):
    z = z.double()
    return z - z.max(1, keepdim=True).values - torch.log(torch.exp(z - z.max(1, keepdim=True).values).sum(1,
                                                                                                        keepdim=True))


# ---- the teacher's gradient and the attack objective ----------------------------------------------------
def test_the_teacher_gradient_is_each_example_s_true_class_logit_gradient():
    teacher = tiny_convnet(seed=1).eval()
    x, y = batch(0)
    forwards = []
    teacher.register_forward_hook(lambda *a: forwards.append(1))
    t, g = true_class_gradient(teacher, x, y)
    assert len(forwards) == 1 and not t.requires_grad and not g.requires_grad and g.shape == x.shape
    for i in range(x.shape[0]):  # one example at a time (eval mode: the batch does not mix)
        xi = x[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(teacher(xi)[0, y[i]], xi)
        assert torch.allclose(g[i], gi[0], rtol=1e-5, atol=1e-7), i
    assert torch.allclose(t, teacher(x), rtol=1e-6, atol=1e-6)


def objective_formula(s_logits, x_adv, x, y, t, g, lam):
    """Σᵢ Σ_c KL(softmax(t̃) ‖ softmax(s)) in float64, gradient through both sides."""
    corr = ((x_adv.double() - x.double()) * g.double()).sum(dim=(1, 2, 3))
    onehot = torch.nn.functional.one_hot(y, t.shape[1]).double()
    t_tilde = t.double() + lam * corr[:, None] * onehot
    return kl_rows(softmax64(t_tilde), log_softmax64(s_logits)).sum()


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_the_attack_objective_is_its_formula_with_the_gradient_through_both_sides(lam):
    student, teacher = tiny_convnet(seed=0).eval(), tiny_convnet(seed=1).eval()
    x, y = batch(1)
    t, g = true_class_gradient(teacher, x, y)
    objective = LinearisedTeacherKL(lam)
    objective.set_point(x, y, t, g)
    x_adv = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).requires_grad_(True)
    value = objective(student(x_adv), x_adv)
    (grad,) = torch.autograd.grad(value, x_adv)
    x64 = x_adv.detach().double().requires_grad_(True)
    expected = objective_formula(student.double()(x64), x64, x, y, t, g, lam)
    (grad_expected,) = torch.autograd.grad(expected, x64)
    student.float()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(grad.double(), grad_expected, rtol=1e-3, atol=1e-6)
    # the linearised teacher's own path matters: without it the gradient is another one
    x_d = x_adv.detach().clone().requires_grad_(True)
    t_tilde = objective.linearised_teacher(x_d).detach()
    detached = kl_rows(softmax64(t_tilde), log_softmax64(student(x_d))).sum()
    (grad_detached,) = torch.autograd.grad(detached, x_d)
    assert not torch.allclose(grad_detached.double(), grad_expected, rtol=1e-2, atol=1e-5)


def test_the_objective_point_is_updated_in_place():
    objective = LinearisedTeacherKL()
    x, y = batch(0)
    t, g = torch.randn(8, 10), torch.randn_like(x)
    objective.set_point(x, y, t, g)
    held = objective.g
    objective.set_point(x + 1, y, t, 2 * g)
    assert objective.g is held and torch.equal(objective.g, 2 * g)   # same tensor: a graph replay sees it
    objective.set_point(x[:4], y[:4], t[:4], g[:4])                  # another batch size: new buffers
    assert objective.g.shape[0] == 4


def test_the_attack_is_pgd_on_the_linearised_objective():
    """From x itself (no random start), float64: the method's x' is the sign-PGD of the formula."""
    method = make(steps=4, random_start="none", dtype=torch.float64)
    x, y = batch(2)
    x, eps, alpha = x.double(), 8 / 255, 2 / 255
    t, g = true_class_gradient(method.robust_teacher, x, y)
    method.attack_objective.set_point(x, y, t, g)
    x_adv = method.attack_student(x, y, loss=method.attack_objective, default_start="normal")
    student = copy.deepcopy(method.student).eval()
    expected = x.clone()
    for _ in range(4):
        expected.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective_formula(student(expected), expected, x, y, t, g, 1.0), expected)
        expected = torch.min(torch.max(expected.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    assert (x_adv - expected).abs().max().item() < 1e-12
    assert (x_adv - x).abs().max().item() == pytest.approx(eps)


def test_one_captured_attack_serves_every_step():
    """The objective keeps its buffers from step to step (the point is copied in), so a CUDA-graph
    cache captures SAAD's attack once and replays it afterwards (a fake capture on CPU: the replay
    runs the loop on the buffers as they are then)."""
    from ciard_fast.attacks import graphs

    captured = []

    def fake_capture(run, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa):
        captured.append(loss)
        return lambda x, y, t: run(model, x, y, eps, alpha, steps, random_start, loss, t, kappa)

    method = make(random_start="none")
    eager = copy.deepcopy(method)
    cache = graphs.GraphCache(capture=fake_capture, device_types=("cpu",))
    for seed in range(3):
        x, y = batch(seed)
        with graphs.cuda_graphs(cache):
            graphed = method.training_step(x, y)
        plain = eager.training_step(x, y)
        assert torch.equal(graphed["loss"], plain["loss"])
    assert (cache.captures, cache.replays) == (1, 2) and captured == [method.attack_objective]


# ---- the weights -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1.0, 2.0, 0.5])
def test_the_entropy_is_the_renyi_formula(order):
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * 3
    p = softmax64(logits)
    if order == 1.0:
        expected = -(p * torch.log(p + 1e-12)).sum(1)
    else:
        expected = torch.log((p ** order).sum(1) + 1e-12) / (1 - order)
    assert torch.allclose(renyi_entropy(logits, order).double(), expected, rtol=1e-5, atol=1e-6)


def test_the_weights_are_the_scaled_entropy_above_the_batch_minimum():
    H = torch.tensor([0.3, 1.2, 0.7, 2.0])
    w, w_bar = entropy_weights(H, H.min(), H.max(), scale=5.0)
    assert torch.allclose(w, 5 * (H - 0.3))
    assert torch.allclose(w_bar, w / (w.max() + 1e-8))
    assert w.min() == 0 and w_bar.max() == pytest.approx(1.0)


# ---- the step --------------------------------------------------------------------------------------------------
def saad_formula(student, teacher, x, y, x_adv, epoch, epochs, alpha=1.0, beta=0.0, order=1.0, scale=5.0):
    """L and its logged parts in float64 (student in train mode: batch statistics)."""
    delta = x_adv - x
    with torch.no_grad():
        t_adv, t_minus, t_nat = teacher(x_adv).double(), teacher(x - delta).double(), teacher(x).double()
    s_adv, s_minus, s_nat = student(x_adv).double(), student(x - delta).double(), student(x).double()
    p = softmax64(t_adv)
    H = -(p * torch.log(p + 1e-12)).sum(1) if order == 1.0 else torch.log((p ** order).sum(1) + 1e-12) / (1 - order)
    w = scale * (H - H.min())
    w_bar = (w - w.min()) / (w.max() - w.min() + 1e-8)
    kl_adv = kl_rows(p, log_softmax64(s_adv))
    igdm = kl_rows(softmax64(t_adv - t_minus), log_softmax64(s_adv - s_minus))
    kl_nat = kl_rows(softmax64(t_nat), log_softmax64(s_nat))
    ramp = alpha * epoch / epochs
    loss = (w * (kl_adv + ramp * igdm) + beta * (1 - w_bar) * kl_nat).mean()
    return {"loss": loss, "L_adv": (w * kl_adv).mean(), "igdm": (w * igdm).mean(), "L_nat": ((1 - w_bar) * kl_nat).mean(),
            "mean_weight": w.mean(), "teacher_entropy": H.mean()}


def fixed_attack(monkeypatch, recorded):
    real = Method.attack_student

    def attack(self, x, y, **kwargs):
        recorded["x_adv"] = real(self, x, y, **kwargs)   # the real attack, recorded for the formula
        return recorded["x_adv"]

    monkeypatch.setattr(Method, "attack_student", attack)


@pytest.mark.parametrize("options", [{}, {"clean_weight": 0.7, "igdm_alpha": 3.0, "entropy_order": 2.0,
                                          "entropy_scale": 2.0}])
def test_the_loss_is_its_formula(options, monkeypatch):
    recorded = {}
    fixed_attack(monkeypatch, recorded)
    method = make(**options)
    method.start_epoch(4)
    reference = copy.deepcopy(method.student)
    x, y = batch(3)
    out = method.training_step(x, y)
    opts = method.options
    expected = saad_formula(reference, method.robust_teacher, x, y, recorded["x_adv"], 4, 6, alpha=opts.igdm_alpha,
                            beta=opts.clean_weight, order=opts.entropy_order, scale=opts.entropy_scale)
    assert out["loss"].item() == pytest.approx(expected["loss"].item(), rel=1e-5)
    for key in ("L_adv", "igdm", "mean_weight", "teacher_entropy") + (("L_nat",) if opts.clean_weight else ()):
        assert out[key].item() == pytest.approx(expected[key].item(), rel=1e-5, abs=1e-7), key
    assert ("L_nat" in out) == (opts.clean_weight != 0)
    # the gradient of the written-out loss
    out["loss"].backward()
    expected["loss"].backward()
    for (name, p), q in zip(method.student.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad.double(), q.grad.double(), rtol=1e-3, atol=1e-7), name


def test_the_igdm_part_is_the_shared_term():
    method = make()
    assert isinstance(method.igdm, IGDM) and method.igdm.alpha == 1.0 and method.shared_terms == ()
    assert make(igdm_alpha=0.0).igdm is None


def test_one_teacher_forward_with_backward_per_step_none_in_the_attack(monkeypatch):
    """T(x) with its input gradient once, then T(x') and T(x − δ) without graph: three forwards,
    however many attack steps; the student runs S(x'), S(x − δ), S(x) in train mode, in that order."""
    counts = {}
    for steps in (1, 5):
        method = make(steps=steps)
        method.start_epoch(2)
        calls = []
        method.robust_teacher.register_forward_hook(lambda m, i, o: calls.append(("T", torch.is_grad_enabled())))
        method.student.register_forward_hook(lambda m, i, o: calls.append(("S", m.training)))
        method.training_step(*batch(0))
        counts[steps] = [c for c in calls if c[0] == "T"]
        assert [c for c in calls if c[0] == "S"] == [("S", False)] * steps + [("S", True)] * 3
    assert counts[1] == counts[5] == [("T", True), ("T", False), ("T", False)]
    # without IGDM nor a clean term: no S(x − δ), S(x) still runs (BN statistics), without a graph
    method = make(igdm_alpha=0.0)
    seen = []
    method.student.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    out = method.training_step(*batch(0))
    assert seen[-2:] == [(True, True), (True, False)] and "igdm" not in out


# ---- presets and training ------------------------------------------------------------------------------------
def test_the_presets():
    cifar10 = build_config(preset="cifar10-resnet18-saad")
    assert (cifar10.method, cifar10.epochs, cifar10.weight_decay, cifar10.lr) == ("saad", 200, 2e-4, 0.1)
    assert cifar10.method_args == {"igdm_alpha": 1.0, "clean_weight": 0.0, "entropy_order": 1.0,
                                   "inner_lambda": 1.0, "entropy_scale": 5.0}
    for name in ("cifar100-resnet18-saad", "tinyimagenet-resnet18-saad"):
        assert build_config(preset=name).method_args["igdm_alpha"] == 10.0
    # SWA of the student from epoch 95 of 200, scaled with the run
    assert cifar10.swa_start == 0.475 and swa_start_epoch(cifar10.swa_start, cifar10.epochs) == 95
    assert swa_start_epoch(build_config(preset="cifar10-resnet18-saad", overrides={"epochs": 40}).swa_start, 40) == 19
    method = make(epochs=200)
    assert [method.student_lr(e) for e in (100, 101, 150, 151)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert method.student_lr(99) == 0.1


def test_saad_trains_through_train_with_file_teachers_and_swa(tmp_path, teacher_files):  # noqa: F811
    result = ciard_fast.train(build_config(overrides={**TINY, **teachers_of("saad", teacher_files), "method": "saad", "swa_start": 2,
                                                      "out_dir": str(tmp_path / "saad")}))
    last = result.history[-1]
    for key in ("train_L_adv", "train_igdm", "train_mean_weight", "train_teacher_entropy"):
        assert key in last and math.isfinite(last[key]), key
    assert last["train_mean_weight"] > 0
    assert all(math.isfinite(v) for v in result.metrics.values())
    # the table is the averaged weights' (from epoch 2 on)
    assert result.evaluated_weights is not None and "SWA of the student" in result.evaluated_weights
    assert "epochs 2–" in result.evaluated_weights


# ---- the batch extremes over all ranks -------------------------------------------------------------------------
def _global_batches(steps=2, B=16):
    g = torch.Generator().manual_seed(321)
    return [(torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, 10, (B,), generator=g)) for _ in range(steps)]


def _run(method, rank=0, world_size=1):
    from ciard_fast.engine.distributed import unwrap

    opt = torch.optim.SGD(unwrap(method.student).parameters(), lr=0.5, momentum=0.9)
    method.start_epoch(3)
    for x, y in _global_batches():
        out = method.training_step(x[rank::world_size], y[rank::world_size])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in unwrap(method.student).parameters()])


def _make_distributed(ctx):
    from ciard_fast.engine.api import _distribute_method

    method = make(random_start="none", nets=tiny_convnet_nobn)
    if ctx is not None:
        method.set_network("student", ctx.wrap(method.student, torch.device("cpu")))
        _distribute_method(method, ctx, torch.device("cpu"), type("C", (), {"sync_batchnorm": False})())
    return method


def _worker(rank, world_size, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from ciard_fast.engine import distributed

    distributed.reset_context()
    params = _run(_make_distributed(distributed.get_context("cpu")), rank, world_size)
    if rank == 0:
        torch.save(params, path)
    dist.barrier()
    dist.destroy_process_group()
    distributed.reset_context()


@pytest.mark.slow
def test_two_ranks_weight_with_the_global_batch_extremes(tmp_path):
    """The entropy minimum and maximum are the global batch's: 2 ranks train as one process does."""
    from test_distributed import free_port

    path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, free_port(), path), nprocs=2, join=True)
    single = _run(_make_distributed(None))
    assert torch.allclose(torch.load(path), single, rtol=1e-4, atol=1e-6)
