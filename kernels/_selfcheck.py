"""One-off self-checks of the Triton kernels against the pure-torch reference.

The dispatch (``__init__``) runs :func:`run_check` the first time an op would take the Triton
path for a given (op, device, dtype, memory layout, hyper-parameter form): one small random
input, one launch, one comparison. A kernel that raises or disagrees is then never used for that
key again (the dispatch warns once and uses the reference). Cost: one launch per key plus, the
first time, Triton's compilation of that specialisation, which the real call would pay anyway.

The inputs come from a private ``torch.Generator``, so a check never moves the caller's random
stream: a run gives the same numbers whether or not a check happened in it.

Tolerances are those of tests/test_kernels_pgd.py and tests/test_kernels_loss.py:
  pgd_step          bit-identical to the reference computed in fp32 and rounded once to the
                    dtype (the kernel's arithmetic; in fp32 that is the reference itself)
  pgd_random_start  the streams differ from torch's by design, so the check is on the law:
                    within the ε-ball (uniform) or 8σ (normal) and [0, 1], finite,
                    reproducible for a seed, and the noise's mean |δ| within 10 % of that of
                    torch's draw (uniform: every dtype; normal: fp32, as σ = 0.001 is below the
                    spacing of bf16/fp16 near 0.5)
  distill_loss      the six outputs within rtol 2e-5, atol 1e-7; the gradients of s_adv, s_nat
                    within (2e-5 fp32, 2⁻⁷ bf16, 2⁻⁹ fp16) × the largest reference entry

Knows nothing of ciard_fast (kernels are a leaf of the layering).
"""
import dataclasses
import math

import torch

from . import reference

__all__ = ["CheckResult", "run_check", "OPS", "GRAD_RTOL"]

OPS = ("pgd_step", "pgd_random_start", "distill_loss")
GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -9}
GRAD_ATOL = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2 ** -23}
OUT_RTOL, OUT_ATOL = 2e-5, 1e-7
_SEED = 20250601  # fixed: a check is reproducible


@dataclasses.dataclass
class CheckResult:
    """Outcome of one self-check. ``error`` is None when it passed; ``max_error`` is the largest
    absolute difference found (None when the kernel raised), ``tolerance`` the bound it was held to."""

    op: str
    device: str
    dtype: str
    layout: str
    form: str
    ok: bool
    max_error: float = None
    tolerance: float = None
    error: str = None
    seconds: float = None

    def describe(self):
        where = f"{self.op} on {self.device} ({self.dtype}, {self.layout}, {self.form} hyper-parameters)"
        if self.ok:
            return f"{where}: matches the reference (max error {self.max_error:.3g} <= {self.tolerance:.3g})"
        return f"{where}: {self.error}"


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _hyper(form, value, batch, device, generator):
    """A hyper-parameter in the form the caller used: number, 0-d tensor or per-sample [B] tensor."""
    if form == "number":
        return value
    if form == "0d":
        return torch.tensor(value, device=device)
    per = (0.5 + torch.rand(batch, generator=generator)) * value
    return per.to(device)


def _shape(layout):
    # Odd sizes: a kernel with a wrong mask or stride shows it on the ragged last block.
    return (5, 3, 7, 9) if layout in ("channels_last", "4d") else (5, 3 * 7 * 9 + 2)


def _make(shape, dtype, device, layout, generator, fn=torch.rand, zero_every=0):
    t = fn(shape, generator=generator)
    if zero_every:
        t.view(-1)[::zero_every] = 0  # sign(0) = 0: no step
    t = t.to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(device)


def _check_pgd_step(launcher, device, dtype, layout, form, generator):
    shape = _shape(layout)
    x0 = _make(shape, dtype, device, layout, generator)
    delta = ((torch.rand(shape, generator=generator) * 2 - 1) * (8 / 255)).to(device)
    x = (x0.float() + delta).clamp(0, 1).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = _make(shape, dtype, device, layout, generator, torch.randn, zero_every=5)
    eps = _hyper(form, 8 / 255, shape[0], device, generator)
    alpha = _hyper(form, 2 / 255, shape[0], device, generator)
    result = launcher(x, x0, grad, eps, alpha)
    expected = reference.pgd_step(x.float(), x0.float(), grad.float(), eps, alpha).to(dtype)
    if result.shape != expected.shape or result.dtype != expected.dtype:
        return None, 0.0, (f"returned shape {tuple(result.shape)} {result.dtype}, expected "
                           f"{tuple(expected.shape)} {expected.dtype}")
    err = (result.float() - expected.float()).abs().max()
    err = float(err) if not torch.isnan(err) else math.inf
    mismatch = not torch.equal(result, expected)
    return err, 0.0, (f"differs from the reference (max error {err:.3g}, expected bit-identical)"
                      if mismatch else None)


def _check_random_start(launcher, device, dtype, layout, form, generator):
    shape = (64, 3, 8, 8) if layout == "channels_last" else (64, 192)
    # x0 away from 0 and 1 so clamping does not bias the noise statistics.
    x0 = (0.25 + 0.5 * torch.rand(shape, generator=generator)).to(dtype)
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    x0 = x0.to(device)
    eps_value = 8 / 255
    eps = _hyper(form, eps_value, shape[0], device, generator)
    bound = eps if form == "number" else eps.double().reshape(-1, *([1] * (x0.dim() - 1)))
    problems, worst = [], 0.0
    for kind in ("uniform", "normal"):
        first = launcher(x0, eps, kind=kind, seed=_SEED)
        again = launcher(x0, eps, kind=kind, seed=_SEED)
        if first.shape != x0.shape or first.dtype != x0.dtype:
            return None, 0.0, f"{kind}: returned shape {tuple(first.shape)} {first.dtype}"
        if not bool(torch.isfinite(first).all()):
            problems.append(f"{kind}: non-finite values")
            continue
        if not torch.equal(first, again):
            problems.append(f"{kind}: not reproducible for a fixed seed")
        low, high = float(first.min()), float(first.max())
        if low < 0 or high > 1:
            problems.append(f"{kind}: values outside [0, 1] ({low:.3g}..{high:.3g})")
        noise = first.double() - x0.double()
        # Storage rounding of x0 + δ: up to one unit in the last place of values below 1.
        slack = torch.finfo(dtype).eps
        if kind == "uniform" and not bool((noise.abs() <= bound + slack).all()):
            problems.append(f"uniform: |δ| up to {float(noise.abs().max()):.3g}, beyond ε")
        if kind == "normal" and not bool((noise.abs() <= 0.001 * 8 + slack).all()):
            problems.append(f"normal: |δ| up to {float(noise.abs().max()):.3g}, beyond 8σ")
        if kind == "normal" and dtype != torch.float32:
            # σ = 0.001 is below the storage spacing of half types near 0.5, so mean |δ| measures
            # the rounding grid more than the noise: the law is checked in fp32 only.
            continue
        # The law: mean |δ| against torch's draw of the same start (at 12k elements the sampling
        # error of the mean is < 1 %).
        ref = reference.pgd_random_start(x0, eps, kind=kind, sigma=0.001, generator=_device_generator(device))
        expected = float((ref.double() - x0.double()).abs().mean())
        mean = float(noise.abs().mean())
        rel = abs(mean - expected) / max(expected, 1e-12)
        worst = max(worst, rel)
        if not rel <= 0.1:
            problems.append(f"{kind}: mean |δ| {mean:.3g}, the reference's {expected:.3g}")
    return worst, 0.1, ("; ".join(problems) or None)


def _device_generator(device):
    return torch.Generator(device=device).manual_seed(_SEED)


def _check_distill_loss(launcher, device, dtype, layout, form, generator):
    batch, classes = 9, 13
    logits = [(torch.randn(batch, classes, generator=generator) * 3).to(dtype).to(device) for _ in range(5)]
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    upstream = [torch.randn((), generator=generator).to(device) for _ in range(3)]
    temps = [_hyper("number" if form == "number" else "0d", v, batch, device, generator) for v in (2.0, 1.5, 4.0)]
    results = []
    for fn in (launcher, reference.distill_loss):
        s_adv = logits[0].detach().clone().requires_grad_()
        s_nat = logits[1].detach().clone().requires_grad_()
        with torch.enable_grad():
            outs = fn(s_adv, s_nat, *logits[2:], labels, *temps)
            torch.autograd.backward(outs[:3], upstream)
        results.append(([o.detach().float() for o in outs], (s_adv.grad, s_nat.grad)))
    (outs, grads), (ref_outs, ref_grads) = results
    worst, bound, problems = 0.0, 0.0, []
    for name, a, b in zip(("L_adv", "L_nat", "L_push", "H_a", "H_n", "mask_count"), outs, ref_outs):
        err = float((a - b).abs())
        tol = OUT_ATOL + OUT_RTOL * float(b.abs())
        worst, bound = max(worst, err), max(bound, tol)
        if not err <= tol:  # NaN fails too
            problems.append(f"{name} off by {err:.3g} (tolerance {tol:.3g})")
    for name, g, r in zip(("d s_adv", "d s_nat"), grads, ref_grads):
        if g is None or g.shape != r.shape or g.dtype != r.dtype:
            problems.append(f"{name}: missing or of the wrong shape/dtype")
            continue
        err = float((g.float() - r.float()).abs().max())
        tol = GRAD_RTOL[dtype] * float(r.float().abs().max()) + GRAD_ATOL[dtype]
        worst, bound = max(worst, err), max(bound, tol)
        if not err <= tol:
            problems.append(f"{name} off by {err:.3g} (tolerance {tol:.3g})")
    return worst, bound, ("; ".join(problems) or None)


_CHECKS = {"pgd_step": _check_pgd_step, "pgd_random_start": _check_random_start,
           "distill_loss": _check_distill_loss}


def run_check(op, launcher, device, dtype, layout="contiguous", form="number"):
    """Run `launcher` (the Triton implementation of `op`) once against the reference.

    device: torch.device or str; dtype: float32 | bfloat16 | float16; layout: 'contiguous' or
    'channels_last' (4-D inputs); form: how hyper-parameters are passed, 'number', '0d' or
    'per_sample'. Never raises for a kernel failure: the exception becomes ``error``.
    """
    import time

    device = torch.device(device)
    generator = torch.Generator().manual_seed(_SEED)  # host generator: never the caller's stream
    start = time.perf_counter()
    try:
        # Outside any inference mode or autocast of the caller: the loss check needs autograd,
        # and the reference must run in the precision it defines.
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            err, tol, problem = _CHECKS[op](launcher, device, dtype, layout, form, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # an asynchronous launch error surfaces here, not later
    except Exception as exc:  # the point of the check: any failure of the kernel is a finding
        err, tol, problem = None, None, f"raised {type(exc).__name__}: {exc}"
    return CheckResult(op=op, device=str(device), dtype=_dtype_name(dtype), layout=layout, form=form,
                       ok=problem is None, max_error=err, tolerance=tol, error=problem,
                       seconds=time.perf_counter() - start)
