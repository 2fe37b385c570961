"""Fused PGD random start (Triton): noise drawn in registers with Philox, one read, one write.

    uniform: x = clamp₀₁(x₀ + ε·(2u − 1)),  u ~ U[0, 1)   (Madry et al.)
    normal:  x = clamp₀₁(x₀ + σ·n),         n ~ N(0, 1)   (TRADES / RSLAD / CIARD, σ = 0.001)

The Philox stream is keyed by a seed and the element index, so a seed fixes the result for a
given shape. By default the seed is drawn from torch's RNG *on x₀'s device* (a one-element tensor
the kernel loads), so the start is reproducible under torch.manual_seed and needs no host sync.
It is not the same stream as ``reference.pgd_random_start`` (torch's own generator): the two
agree in distribution, not bit for bit.
"""
import numbers

import torch
import triton
import triton.language as tl

from ._args import PER_SAMPLE, SCALAR, check_float_dtype, dense_layout, scalar_arg
from ._triton_common import check_launchable, clamp01, element_offsets, grid_for, load_hyper, to_dtype

BLOCK = 1024
_UNIFORM, _NORMAL = 0, 1
# Seeds drawn from torch's RNG lie in [0, 2^31): any int64 works for Philox, this keeps the
# value printable and identical across devices.
_SEED_RANGE = 2**31 - 1


@triton.jit
def _random_start_kernel(x0_ptr, out_ptr, seed, eps, sigma, numel, inner,
                         KIND: tl.constexpr, EPS_MODE: tl.constexpr, SEED_IS_PTR: tl.constexpr,
                         PER_SAMPLE_GRID: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, sample = element_offsets(numel, inner, PER_SAMPLE_GRID, BLOCK)
    x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SEED_IS_PTR:
        key = tl.load(seed)
    else:
        key = seed
    if KIND == 0:
        e = load_hyper(eps, sample, EPS_MODE)
        noise = (2.0 * tl.rand(key, offs) - 1.0) * e
    else:
        noise = tl.randn(key, offs) * sigma
    tl.store(out_ptr + offs, to_dtype(clamp01(x0 + noise), out_ptr.dtype.element_ty), mask=mask)


def _seed_arg(seed, generator, device):
    """(kernel argument, is_pointer) for the Philox key."""
    if seed is None:
        if generator is not None and generator.device != device:
            raise ValueError(f"generator is on {generator.device} but x0 is on {device}")
        # Drawn on the device: no host sync, and CUDA-graph capturable.
        return torch.randint(0, _SEED_RANGE, (1,), device=device, dtype=torch.int64, generator=generator), True
    if generator is not None:
        raise ValueError("give either seed or generator, not both")
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2^63), got {seed}")
        return int(seed), False
    if isinstance(seed, torch.Tensor) and seed.numel() == 1 and seed.dtype in (torch.int32, torch.int64):
        if seed.device != device:
            raise ValueError(f"seed is on {seed.device} but x0 is on {device}")
        return seed.reshape(1), True
    raise TypeError(f"seed must be an int or a one-element int32/int64 tensor, got {seed!r}")


def pgd_random_start(x0, eps, kind="uniform", sigma=0.001, generator=None, seed=None):
    """Random start of PGD, clamped to [0, 1], in one fused pass.

    x0: [B, ...] float32/bfloat16/float16 in [0, 1]. eps: Python number, 0-d or [B] tensor (used by
    kind="uniform"). sigma: Python number (kind="normal"). generator: torch.Generator on x0's
    device from which the seed is drawn; seed: an explicit int or one-element int tensor instead.
    Returns a new tensor like x0 (contiguous or channels_last as x0, else contiguous).
    """
    check_float_dtype(x0, "x0")
    if kind not in ("uniform", "normal"):
        raise ValueError(f"random start kind must be 'uniform' or 'normal', got {kind!r}")
    if not isinstance(sigma, numbers.Real) or isinstance(sigma, bool) or sigma < 0:
        raise ValueError(f"sigma must be a Python number >= 0, got {sigma!r}")
    check_launchable(x0, "pgd_random_start")
    batch = x0.shape[0] if x0.dim() > 0 else 1
    eps_arg, eps_mode = scalar_arg(eps, x0.device, "eps", per_sample_size=batch if x0.dim() > 0 else None)
    if eps_mode == SCALAR and eps_arg < 0:
        raise ValueError(f"eps must be >= 0, got {eps_arg}")
    seed_arg, seed_is_ptr = _seed_arg(seed, generator, x0.device)

    x0c = x0 if dense_layout(x0) is not None else x0.contiguous()
    out = torch.empty_like(x0c)
    numel = x0c.numel()
    if numel > 0:
        per_sample = eps_mode == PER_SAMPLE and kind == "uniform"
        _random_start_kernel[grid_for(numel, batch, per_sample, BLOCK)](
            x0c, out, seed_arg, eps_arg, float(sigma), numel, numel // batch,
            KIND=_UNIFORM if kind == "uniform" else _NORMAL, EPS_MODE=eps_mode,
            SEED_IS_PTR=seed_is_ptr, PER_SAMPLE_GRID=per_sample, BLOCK=BLOCK)
    return out
