"""Pieces shared by the Triton kernels: where they may run, and per-element hyper-parameters.

Importing this module imports triton; the dispatch in ``__init__`` only does so lazily.
"""
import triton
import triton.language as tl
from triton import knobs

# triton.jit picks the interpreter or the compiler when a kernel is *decorated*, i.e. when the
# kernel modules are imported. Record the choice that was made then: setting TRITON_INTERPRET
# later changes nothing for kernels that already exist.
INTERPRETED = bool(knobs.runtime.interpret)

# Triton's interpreter converts fp32 -> bf16 by truncating the mantissa (round toward zero), while
# compiled kernels round to nearest even. Under the interpreter we round by hand so that tests on
# the CPU see the same numbers a GPU produces.
_EMULATE_BF16_RTNE = tl.constexpr(INTERPRETED)


def check_launchable(tensor, op):
    """Raise unless `tensor`'s device can run this package's Triton kernels."""
    if tensor.is_cuda:
        if INTERPRETED:
            raise RuntimeError(
                f"{op}: Triton was imported with TRITON_INTERPRET=1, which runs kernels on host "
                f"memory only; got a tensor on {tensor.device}. Unset TRITON_INTERPRET for GPU runs.")
        return
    if tensor.device.type == "cpu" and INTERPRETED:
        return
    if tensor.device.type == "cpu":
        raise RuntimeError(
            f"{op}: the Triton kernel got a CPU tensor; Triton runs on CPU tensors only through its "
            f"interpreter, which needs TRITON_INTERPRET=1 set before triton is first imported "
            f"(or use CIARD_FAST_KERNELS=reference / auto for the pure-torch path)")
    raise RuntimeError(f"{op}: no Triton kernel for tensors on {tensor.device}")


@triton.jit
def load_hyper(value, sample, MODE: tl.constexpr):
    """A hyper-parameter as fp32: MODE 0, `value` is a scalar argument; 1, a pointer to one
    value; 2, a pointer to one value per sample, of which element `sample` is read."""
    if MODE == 0:
        v = value
    elif MODE == 1:
        v = tl.load(value).to(tl.float32)
    else:
        v = tl.load(value + sample).to(tl.float32)
    return v


@triton.jit
def element_offsets(numel, inner, PER_SAMPLE_GRID: tl.constexpr, BLOCK: tl.constexpr):
    """(offsets, mask, sample) of this program's BLOCK elements of a [B, inner] tensor.

    With PER_SAMPLE_GRID the grid is (B, cdiv(inner, BLOCK)) and a program never straddles two
    samples, so a per-sample hyper-parameter is one scalar load, not a 64-bit division per
    element. Otherwise the grid is (cdiv(numel, BLOCK),) and `sample` is 0 (unused).
    """
    if PER_SAMPLE_GRID:
        sample = tl.program_id(0)
        local = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = local < inner
        offs = sample.to(tl.int64) * inner + local
    else:
        sample = 0
        # int64: a batch of 512 Tiny-ImageNet images at fp32 is already 25M elements, and
        # int32 offsets would overflow silently past 2^31.
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
    return offs, mask, sample


def grid_for(numel, batch, per_sample, block):
    """Launch grid matching element_offsets."""
    if per_sample:
        return (batch, triton.cdiv(numel // batch, block))
    return (triton.cdiv(numel, block),)


@triton.jit
def clamp01(v):
    """min(max(v, 0), 1) keeping NaN, as torch.clamp does."""
    v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(v, 1.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def to_dtype(v, dtype: tl.constexpr):
    """fp32 `v` rounded to nearest even in `dtype` (what `v.to(dtype)` does on a GPU)."""
    if _EMULATE_BF16_RTNE:
        if dtype == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
            # Adding the bias could carry a NaN's low payload into an infinity: keep NaN a NaN.
            rounded = tl.where(v != v, 0x7FC0, rounded)
            out = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            out = v.to(dtype)
    else:
        out = v.to(dtype)
    return out
