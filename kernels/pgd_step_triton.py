"""Fused L∞ PGD step (Triton): one read of x, x₀, g and one write of x.

    x ← clamp₀₁( min( max(x + α·sign(g), x₀ − ε), x₀ + ε ) )

Arithmetic is fp32 whatever the storage dtype, rounded once to x's dtype on the store. In fp32
this is bit-identical to ``reference.pgd_step`` (α·sign(g) is exact, one add, one subtract, and
min/max/clamp are exact). In bf16/fp16 the reference rounds α·sign(g) (and a tensor ε) to the
dtype before combining, so the two may differ by one unit in the last place at the scale of
x + α and x₀ + ε; ours is the correctly rounded one.
"""
import torch
import triton
import triton.language as tl

from ._args import PER_SAMPLE, SCALAR, check_float_dtype, dense_layout, scalar_arg
from ._triton_common import check_launchable, clamp01, element_offsets, grid_for, load_hyper, to_dtype

BLOCK = 1024


@triton.jit
def _pgd_step_kernel(x_ptr, x0_ptr, g_ptr, out_ptr, eps, alpha, numel, inner,
                     EPS_MODE: tl.constexpr, ALPHA_MODE: tl.constexpr, PER_SAMPLE_GRID: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs, mask, sample = element_offsets(numel, inner, PER_SAMPLE_GRID, BLOCK)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    if g_ptr.dtype.element_ty != tl.float64:
        # Widening bf16/fp16 is exact (and the interpreter compares bf16 as raw uint16 bits,
        # which would make every negative gradient "positive"); fp64 keeps its own precision
        # so a tiny gradient is not flushed to zero before its sign is read.
        g = g.to(tl.float32)
    e = load_hyper(eps, sample, EPS_MODE)
    a = load_hyper(alpha, sample, ALPHA_MODE)
    # torch.sign is (g > 0) − (g < 0): 0 for ±0 and for NaN, so a NaN gradient takes no step.
    s = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    stepped = x + a * s
    projected = tl.maximum(stepped, x0 - e, propagate_nan=tl.PropagateNan.ALL)
    projected = tl.minimum(projected, x0 + e, propagate_nan=tl.PropagateNan.ALL)
    result = clamp01(projected)
    tl.store(out_ptr + offs, to_dtype(result, out_ptr.dtype.element_ty), mask=mask)


def _check_inputs(x, x0, grad, out):
    check_float_dtype(x, "x")
    for name, t in (("x0", x0), ("grad", grad)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != x.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected x's shape {tuple(x.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if x0.dtype != x.dtype:
        raise TypeError(f"x0 has dtype {x0.dtype} but x has dtype {x.dtype}")
    if not grad.is_floating_point():
        raise TypeError(f"grad must be a floating-point tensor, got dtype {grad.dtype}")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"out must match x (shape {tuple(x.shape)}, {x.dtype}, {x.device}); got shape "
                f"{tuple(out.shape)}, {out.dtype}, {out.device}")


def pgd_step(x, x0, grad, eps, alpha, out=None):
    """One L∞ PGD step, fused: clamp₀₁(min(max(x + α·sign(g), x₀ − ε), x₀ + ε)).

    x, x0: [B, ...] float32/bfloat16/float16, same shape and dtype, pixels in [0, 1].
    grad: same shape, any floating dtype (only its sign is used; sign(0) = sign(NaN) = 0, as torch).
    eps, alpha: Python numbers, 0-d tensors or per-sample [B] tensors; tensors are read inside the
    kernel (no host sync). eps should be ≥ 0 (a Python eps < 0 is rejected).
    out: None (a new tensor is returned) or a tensor like x, which may be x itself (in place).

    Contiguous and channels_last inputs (all alike) are used as they are; other layouts are copied
    to contiguous temporaries, and an `out` of another layout receives the result through one
    extra copy. Returns `out` or the new tensor, dtype of x.
    """
    _check_inputs(x, x0, grad, out)
    check_launchable(x, "pgd_step")
    batch = x.shape[0] if x.dim() > 0 else 1
    eps_arg, eps_mode = scalar_arg(eps, x.device, "eps", per_sample_size=batch if x.dim() > 0 else None)
    alpha_arg, alpha_mode = scalar_arg(alpha, x.device, "alpha", per_sample_size=batch if x.dim() > 0 else None)
    if eps_mode == SCALAR and eps_arg < 0:
        raise ValueError(f"eps must be >= 0, got {eps_arg}")

    layout = dense_layout(x)
    if layout is not None and dense_layout(x0) == layout and dense_layout(grad) == layout:
        xc, x0c, gc = x, x0, grad  # the elementwise kernel walks memory order: no copies
    else:
        layout = "contiguous"
        xc, x0c, gc = x.contiguous(), x0.contiguous(), grad.contiguous()
    # Write straight into `out` when its memory is laid out like the inputs (the in-place case
    # out is x included: each element is read and written by the same program, so aliasing is safe).
    direct = out is not None and dense_layout(out) == layout
    target = out if direct else torch.empty_like(xc)
    numel = xc.numel()
    if numel > 0:
        per_sample = PER_SAMPLE in (eps_mode, alpha_mode)
        _pgd_step_kernel[grid_for(numel, batch, per_sample, BLOCK)](
            xc, x0c, gc, target, eps_arg, alpha_arg, numel, numel // batch,
            EPS_MODE=eps_mode, ALPHA_MODE=alpha_mode, PER_SAMPLE_GRID=per_sample, BLOCK=BLOCK)
    if out is None:
        return target
    if target is not out:
        out.copy_(target)
    return out
