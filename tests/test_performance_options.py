"""Engine performance options: each can be turned off, and results agree with them on and off.

On CPU: bf16 autocast and channels_last against fp32/NCHW; the optimiser variants. On a GPU
(skipped without one): zero host syncs per CIARD step under torch.cuda.set_sync_debug_mode, and
the CUDA-graphed PGD loop equal to the eager loop.
"""
import copy

import pytest
import torch

from ciard_fast.attacks import graphs
from ciard_fast.attacks.pgd import pgd
from ciard_fast.engine.optim import build_optimizer, set_lr
from ciard_fast.engine.precision import autocast
from ciard_fast.methods import AttackSettings, get_method
from ciard_fast.models import create_model


def ciard_on(device, channels_last=False):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = create_model("small_cnn", width=8).to(device)
        models.append(model.to(memory_format=torch.channels_last) if channels_last else model)
    cls = get_method("ciard")
    return cls(models[0], num_classes=10, epochs=6, robust_teacher=models[1], clean_teacher=models[2],
               options=cls.Options(E_itt=1), attack=AttackSettings(8 / 255, 2 / 255, 3, random_start="none"),
               device=torch.device(device))


def batch(device, channels_last=False):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (16,), generator=g).to(device)


def fixed_attack(model, x, y, eps, **kwargs):
    """Stands in for PGD: the sign steps of a real attack flip on rounding-level gradient changes,
    which would compare the attacks' discontinuities instead of the numerics of the options."""
    g = torch.Generator().manual_seed(5)
    direction = torch.randn(x.shape, generator=g).sign().to(x.device)
    return (x + eps * direction).clamp(0, 1)


def run_step(method, x, y, precision):
    method.start_epoch(2)  # ITT on: the teacher's CE and backward are covered too
    with autocast(precision, torch.device("cpu")):
        out = method.training_step(x, y)
    out["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in method.student.parameters()])
    return out, grads


@pytest.mark.parametrize("precision,channels_last", [("fp32", True), ("bf16", False), ("bf16", True)])
def test_bf16_and_channels_last_agree_with_fp32(monkeypatch, precision, channels_last):
    monkeypatch.setattr("ciard_fast.methods.base.pgd", fixed_attack)
    ref, ref_grads = run_step(ciard_on("cpu"), *batch("cpu"), "fp32")
    out, grads = run_step(ciard_on("cpu", channels_last), *batch("cpu", channels_last), precision)
    tol = 1e-5 if precision == "fp32" else 3e-2  # bf16 keeps 8 bits of mantissa
    for key in ("L_adv", "L_nat", "L_push", "student_loss", "teacher_loss"):
        assert torch.allclose(out[key].float(), ref[key], rtol=tol, atol=1e-6), (key, out[key], ref[key])
    cosine = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0)
    assert cosine > (0.99999 if precision == "fp32" else 0.98), cosine


def test_optimizer_variants_take_the_same_step():
    torch.manual_seed(0)
    base = torch.nn.Linear(5, 3)
    results = []
    for kind in ("sgd", "fused"):
        model = copy.deepcopy(base)
        opt = build_optimizer(model.parameters(), 0.1, 0.9, 5e-4, torch.device("cpu"), kind)
        for lr in (0.1, 0.05):
            set_lr(opt, lr)
            model(torch.ones(2, 5)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(base.parameters(), 0.1, 0.9, 0, torch.device("cpu"), "adam")


def test_graphs_context_leaves_cpu_attacks_eager():
    model = create_model("small_cnn", width=4).eval()
    x, y = batch("cpu")
    torch.manual_seed(1)
    eager = pgd(model, x, y, steps=2, random_start=None)
    cache = graphs.GraphCache()
    with graphs.cuda_graphs(cache):
        torch.manual_seed(1)
        same = pgd(model, x, y, steps=2, random_start=None)
    assert torch.equal(eager, same) and len(cache) == 0 and cache.captures == 0


@pytest.mark.gpu
def test_ciard_step_makes_no_host_sync_on_gpu():
    method = ciard_on("cuda", channels_last=True)
    method.start_epoch(2)
    opt = build_optimizer(method.student.parameters(), 0.1, 0.9, 5e-4, torch.device("cuda"))
    x, y = batch("cuda", channels_last=True)
    cache = graphs.GraphCache()

    def step():
        with autocast("bf16", torch.device("cuda")), graphs.cuda_graphs(cache):
            out = method.training_step(x, y)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.after_optimizer_step()

    step()  # first step: captures the PGD graph, records L⁰
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_graphed_pgd_equals_eager_pgd_on_gpu():
    model = create_model("small_cnn", width=8).cuda().eval()
    x, y = batch("cuda")
    eager = pgd(model, x, y, steps=5, random_start=None, validate=False)
    cache = graphs.GraphCache()
    with graphs.cuda_graphs(cache):
        first = pgd(model, x, y, steps=5, random_start=None, validate=False)   # capture + replay
        second = pgd(model, x + 0, y, steps=5, random_start=None, validate=False)  # replay
        torch.manual_seed(3)
        random = pgd(model, x, y, steps=5, random_start="uniform", validate=False)  # capture, checked vs eager
    torch.manual_seed(3)
    assert torch.equal(random, pgd(model, x, y, steps=5, random_start="uniform", validate=False))
    assert torch.equal(eager, first) and torch.equal(eager, second)
    assert len(cache) == 2 and cache.captures == 2 and cache.replays == 1 and cache.fallbacks == 0
