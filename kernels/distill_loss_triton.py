"""Fused CIARD multi-teacher loss (Triton forward and backward), docs/method.md, steps 3-5 and 7.

Forward: one program per block of rows reads the five [B, C] logit tensors twice (pass 1: the
row max and Σ exp of the six softmax inputs, online over column blocks, and the clean teacher's
argmax; pass 2: the KL and entropy sums) and writes per-row partials; a one-program kernel then sums them in a fixed order (deterministic, no
atomics) into (L_adv, L_nat, L_push, H_a, H_n, mask_count). Backward: one pass that recomputes
the softmaxes from the saved row maxima and log-sums:

    ∂/∂s_adv = g_adv/(B·C) · (softmax(s_adv) − p_a)
             + g_push · 1[i∈M] / (max(|M|, 1)·C·T_push) · (softmax(s_adv/T_push) − softmax(n_adv))
    ∂/∂s_nat = g_nat/(B·C) · (softmax(s_nat) − p_n)

(the exact gradient of reference.distill_loss, using Σ_c p = 1). All arithmetic is fp32 with
max-subtracted exponentials whatever the logits' dtype; gradients are stored in the logits'
dtype. Temperatures given as 0-d tensors are read inside the kernel (no host sync) and the
values the forward used are kept for the backward, so updating τ in place after the forward
(as the adaptive-temperature rule does) leaves the gradient intact.
"""
import numbers

import torch
import triton
import triton.language as tl

from ._args import SCALAR, check_float_dtype, scalar_arg
from ._triton_common import check_launchable, load_hyper, to_dtype
from .reference import KL_EPS

# Elements per program tile: BLOCK_B rows × BLOCK_C columns. 1024 fp32 values per live array
# keeps the ~15 arrays of pass 2 in registers at 4 warps.
TILE = 1024
MAX_BLOCK_C = 1024
# Rows of the per-row buffer [N_ROWS, B]: the partial sums, then for each of the six softmax
# inputs its row max m and log Σ exp(v − m). The two are kept apart because log-probabilities
# computed as (v − m) − log Σ stay exact for the largest logits even at |v| ~ 1e4, where folding
# them into one log-sum-exp would lose ~1e-3 to fp32 rounding.
# (Compiled Triton reads module globals only when they are tl.constexpr.)
KL_ADV, KL_NAT, PUSH, H_ADV, H_NAT, MASK = (tl.constexpr(i) for i in range(6))
M_RA, M_NN, M_NA, M_SA, M_SN, M_ST = (tl.constexpr(i) for i in range(6, 12))
LZ_RA, LZ_NN, LZ_NA, LZ_SA, LZ_SN, LZ_ST = (tl.constexpr(i) for i in range(12, 18))
N_ROWS = 18
KL_EPS_C = tl.constexpr(KL_EPS)


@triton.jit
def _tile(ptr, row_off, cols, ok):
    """[BLOCK_B, BLOCK_C] fp32 tile of a row-major [B, C] tensor; masked lanes read 0."""
    return tl.load(ptr + row_off[:, None] + cols[None, :], mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _online_lse(m, z, v):
    """Fold tile v (masked columns = -inf) into the running row max m and Σ exp(v − m)."""
    m_new = tl.maximum(m, tl.max(v, axis=1))
    z = z * tl.exp(m - m_new) + tl.sum(tl.exp(v - m_new[:, None]), axis=1)
    return m_new, z


@triton.jit
def _log_softmax(v, m, lz):
    """log softmax of tile v given its row max m and log Σ exp(v − m) (both [BLOCK_B])."""
    return (v - m[:, None]) - lz[:, None]


@triton.jit
def _kl_terms(log_p_raw, log_q, col_ok):
    """Row sums of p·log(p + ε) and p·(log(p + ε) − log q), p = exp(log_p_raw)."""
    p = tl.exp(log_p_raw)
    log_p = tl.log(p + KL_EPS_C)
    ent = tl.sum(tl.where(col_ok, p * log_p, 0.0), axis=1)
    kl = tl.sum(tl.where(col_ok, p * (log_p - log_q), 0.0), axis=1)
    return ent, kl


@triton.jit
def _distill_fwd_kernel(s_adv_ptr, s_nat_ptr, r_adv_ptr, n_nat_ptr, n_adv_ptr, labels_ptr,
                        tau_adv, tau_nat, t_push, rows_ptr, scalars_ptr, B, C,
                        TAU_ADV_MODE: tl.constexpr, TAU_NAT_MODE: tl.constexpr, T_PUSH_MODE: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    row_off = rows.to(tl.int64) * C
    t_a = load_hyper(tau_adv, 0, TAU_ADV_MODE)
    t_n = load_hyper(tau_nat, 0, TAU_NAT_MODE)
    t_p = load_hyper(t_push, 0, T_PUSH_MODE)
    # The backward must use the temperatures of this forward, even if τ is updated in between.
    tl.store(scalars_ptr + 0, t_a, mask=pid == 0)
    tl.store(scalars_ptr + 1, t_n, mask=pid == 0)
    tl.store(scalars_ptr + 2, t_p, mask=pid == 0)

    neg_inf = tl.full([BLOCK_B], float("-inf"), tl.float32)
    zero = tl.zeros([BLOCK_B], tl.float32)
    m_ra, z_ra, m_nn, z_nn, m_na, z_na = neg_inf, zero, neg_inf, zero, neg_inf, zero
    m_sa, z_sa, m_sn, z_sn, m_st, z_st = neg_inf, zero, neg_inf, zero, neg_inf, zero
    best = neg_inf
    best_idx = tl.zeros([BLOCK_B], tl.int64)

    # Pass 1: row max and Σ exp of the six softmax inputs, argmax of the clean teacher on x'.
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = (cols < C)[None, :]
        ok = row_ok[:, None] & col_ok
        ra = tl.where(col_ok, _tile(r_adv_ptr, row_off, cols, ok) / t_a, float("-inf"))
        nn = tl.where(col_ok, _tile(n_nat_ptr, row_off, cols, ok) / t_n, float("-inf"))
        na = tl.where(col_ok, _tile(n_adv_ptr, row_off, cols, ok), float("-inf"))
        sa = tl.where(col_ok, _tile(s_adv_ptr, row_off, cols, ok), float("-inf"))
        sn = tl.where(col_ok, _tile(s_nat_ptr, row_off, cols, ok), float("-inf"))
        m_ra, z_ra = _online_lse(m_ra, z_ra, ra)
        m_nn, z_nn = _online_lse(m_nn, z_nn, nn)
        m_na, z_na = _online_lse(m_na, z_na, na)
        m_sa, z_sa = _online_lse(m_sa, z_sa, sa)
        m_sn, z_sn = _online_lse(m_sn, z_sn, sn)
        m_st, z_st = _online_lse(m_st, z_st, sa / t_p)
        # torch.argmax returns the first maximal index: ties keep the earlier block (strict >),
        # and tl.argmax breaks ties to the left within a block.
        blk_max = tl.max(na, axis=1)
        blk_idx = tl.argmax(na, axis=1).to(tl.int64) + c0
        better = blk_max > best
        best = tl.where(better, blk_max, best)
        best_idx = tl.where(better, blk_idx, best_idx)
    lz_ra, lz_nn, lz_na = tl.log(z_ra), tl.log(z_nn), tl.log(z_na)
    lz_sa, lz_sn, lz_st = tl.log(z_sa), tl.log(z_sn), tl.log(z_st)

    # Pass 2: entropies and KL sums per row.
    h_a, kl_a, h_n, kl_n, kl_p = zero, zero, zero, zero, zero
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = (cols < C)[None, :]
        ok = row_ok[:, None] & col_ok
        sa = _tile(s_adv_ptr, row_off, cols, ok)
        sn = _tile(s_nat_ptr, row_off, cols, ok)
        ent, kl = _kl_terms(_log_softmax(_tile(r_adv_ptr, row_off, cols, ok) / t_a, m_ra, lz_ra),
                            _log_softmax(sa, m_sa, lz_sa), col_ok)
        h_a += ent
        kl_a += kl
        ent, kl = _kl_terms(_log_softmax(_tile(n_nat_ptr, row_off, cols, ok) / t_n, m_nn, lz_nn),
                            _log_softmax(sn, m_sn, lz_sn), col_ok)
        h_n += ent
        kl_n += kl
        ent, kl = _kl_terms(_log_softmax(_tile(n_adv_ptr, row_off, cols, ok), m_na, lz_na),
                            _log_softmax(sa / t_p, m_st, lz_st), col_ok)
        kl_p += kl

    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    in_mask = (best_idx != labels).to(tl.float32)
    tl.store(rows_ptr + KL_ADV * B + rows, kl_a, mask=row_ok)
    tl.store(rows_ptr + KL_NAT * B + rows, kl_n, mask=row_ok)
    tl.store(rows_ptr + PUSH * B + rows, kl_p * in_mask, mask=row_ok)
    tl.store(rows_ptr + H_ADV * B + rows, h_a, mask=row_ok)
    tl.store(rows_ptr + H_NAT * B + rows, h_n, mask=row_ok)
    tl.store(rows_ptr + MASK * B + rows, in_mask, mask=row_ok)
    tl.store(rows_ptr + M_RA * B + rows, m_ra, mask=row_ok)
    tl.store(rows_ptr + M_NN * B + rows, m_nn, mask=row_ok)
    tl.store(rows_ptr + M_NA * B + rows, m_na, mask=row_ok)
    tl.store(rows_ptr + M_SA * B + rows, m_sa, mask=row_ok)
    tl.store(rows_ptr + M_SN * B + rows, m_sn, mask=row_ok)
    tl.store(rows_ptr + M_ST * B + rows, m_st, mask=row_ok)
    tl.store(rows_ptr + LZ_RA * B + rows, lz_ra, mask=row_ok)
    tl.store(rows_ptr + LZ_NN * B + rows, lz_nn, mask=row_ok)
    tl.store(rows_ptr + LZ_NA * B + rows, lz_na, mask=row_ok)
    tl.store(rows_ptr + LZ_SA * B + rows, lz_sa, mask=row_ok)
    tl.store(rows_ptr + LZ_SN * B + rows, lz_sn, mask=row_ok)
    tl.store(rows_ptr + LZ_ST * B + rows, lz_st, mask=row_ok)


@triton.jit
def _pick(sums, k, row):
    return tl.sum(tl.where(k == row, sums, 0.0), axis=0)


@triton.jit
def _distill_finalize_kernel(rows_ptr, l_adv_ptr, l_nat_ptr, l_push_ptr, h_adv_ptr, h_nat_ptr, count_ptr,
                             scalars_ptr, B, bc, c_f, BLOCK: tl.constexpr):
    """The six 0-d outputs from the per-row partials, summed in a fixed order (deterministic)."""
    k = tl.arange(0, 8)
    acc = tl.zeros([8, BLOCK], tl.float32)
    for b0 in range(0, B, BLOCK):
        idx = b0 + tl.arange(0, BLOCK)
        ok = (k[:, None] < 6) & (idx[None, :] < B)
        acc += tl.load(rows_ptr + k[:, None] * B + idx[None, :], mask=ok, other=0.0)
    sums = tl.sum(acc, axis=1)
    count = _pick(sums, k, MASK)
    tl.store(l_adv_ptr, _pick(sums, k, KL_ADV) / bc)
    tl.store(l_nat_ptr, _pick(sums, k, KL_NAT) / bc)
    # An empty mask divides an exact 0 by C: L_push = 0, never 0/0.
    tl.store(l_push_ptr, _pick(sums, k, PUSH) / (tl.maximum(count, 1.0) * c_f))
    tl.store(h_adv_ptr, _pick(sums, k, H_ADV) / bc)
    tl.store(h_nat_ptr, _pick(sums, k, H_NAT) / bc)
    tl.store(count_ptr, count)
    tl.store(scalars_ptr + 3, count)  # the backward's copy: the caller may modify the output


@triton.jit
def _row_stats(rows_ptr, m_row, lz_row, B, rows, row_ok):
    m = tl.load(rows_ptr + m_row * B + rows, mask=row_ok, other=0.0)
    lz = tl.load(rows_ptr + lz_row * B + rows, mask=row_ok, other=0.0)
    return m, lz


@triton.jit
def _distill_bwd_kernel(s_adv_ptr, s_nat_ptr, r_adv_ptr, n_nat_ptr, n_adv_ptr, rows_ptr, scalars_ptr,
                        g_adv_ptr, g_nat_ptr, g_push_ptr, grad_sa_ptr, grad_sn_ptr, B, C, bc, c_f,
                        BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    row_off = rows.to(tl.int64) * C
    t_a = tl.load(scalars_ptr + 0)
    t_n = tl.load(scalars_ptr + 1)
    t_p = tl.load(scalars_ptr + 2)
    w_a = tl.load(g_adv_ptr).to(tl.float32) / bc
    w_n = tl.load(g_nat_ptr).to(tl.float32) / bc
    count = tl.load(scalars_ptr + 3)
    w_p = tl.load(g_push_ptr).to(tl.float32) / (tl.maximum(count, 1.0) * c_f) / t_p
    w_p = w_p * tl.load(rows_ptr + MASK * B + rows, mask=row_ok, other=0.0)
    m_ra, lz_ra = _row_stats(rows_ptr, M_RA, LZ_RA, B, rows, row_ok)
    m_nn, lz_nn = _row_stats(rows_ptr, M_NN, LZ_NN, B, rows, row_ok)
    m_na, lz_na = _row_stats(rows_ptr, M_NA, LZ_NA, B, rows, row_ok)
    m_sa, lz_sa = _row_stats(rows_ptr, M_SA, LZ_SA, B, rows, row_ok)
    m_sn, lz_sn = _row_stats(rows_ptr, M_SN, LZ_SN, B, rows, row_ok)
    m_st, lz_st = _row_stats(rows_ptr, M_ST, LZ_ST, B, rows, row_ok)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (cols < C)[None, :]
        sa = _tile(s_adv_ptr, row_off, cols, ok)
        sn = _tile(s_nat_ptr, row_off, cols, ok)
        p_a = tl.exp(_log_softmax(_tile(r_adv_ptr, row_off, cols, ok) / t_a, m_ra, lz_ra))
        p_n = tl.exp(_log_softmax(_tile(n_nat_ptr, row_off, cols, ok) / t_n, m_nn, lz_nn))
        p_p = tl.exp(_log_softmax(_tile(n_adv_ptr, row_off, cols, ok), m_na, lz_na))
        q_sa = tl.exp(_log_softmax(sa, m_sa, lz_sa))
        q_st = tl.exp(_log_softmax(sa / t_p, m_st, lz_st))
        q_sn = tl.exp(_log_softmax(sn, m_sn, lz_sn))
        g_sa = w_a * (q_sa - p_a) + w_p[:, None] * (q_st - p_p)
        g_sn = w_n * (q_sn - p_n)
        offs = row_off[:, None] + cols[None, :]
        tl.store(grad_sa_ptr + offs, to_dtype(g_sa, grad_sa_ptr.dtype.element_ty), mask=ok)
        tl.store(grad_sn_ptr + offs, to_dtype(g_sn, grad_sn_ptr.dtype.element_ty), mask=ok)


def _blocks(num_classes, block_c):
    block_c = block_c or min(triton.next_power_of_2(num_classes), MAX_BLOCK_C)
    if block_c & (block_c - 1):
        raise ValueError(f"block_c must be a power of two, got {block_c}")
    return max(1, TILE // block_c), block_c


class DistillLossFunction(torch.autograd.Function):
    """autograd wrapper: forward = 2 launches, backward = 1 launch; gradients for s_adv, s_nat."""

    @staticmethod
    def forward(ctx, s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push, block_c):
        batch, num_classes = s_adv.shape
        device = s_adv.device
        temps = [scalar_arg(t, device, name) for t, name in
                 ((tau_adv, "tau_adv"), (tau_nat, "tau_nat"), (T_push, "T_push"))]
        for (value, mode), name in zip(temps, ("tau_adv", "tau_nat", "T_push")):
            if mode == SCALAR and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        logits = [t.contiguous() for t in (s_adv, s_nat, r_adv, n_nat, n_adv)]
        labels = labels.contiguous()
        rows = torch.empty((N_ROWS, batch), device=device, dtype=torch.float32)
        # (τ_adv, τ_nat, T_push, |M|) as this forward used them, for the backward.
        scalars = torch.empty(4, device=device, dtype=torch.float32)
        # Six separate 0-d tensors, not views of one buffer: like the reference's outputs they
        # may then be modified in place (autograd forbids that on multiple views of one output).
        outs = tuple(torch.empty((), device=device, dtype=torch.float32) for _ in range(6))
        block_b, block_c = _blocks(num_classes, block_c)
        _distill_fwd_kernel[(triton.cdiv(batch, block_b),)](
            *logits, labels, temps[0][0], temps[1][0], temps[2][0], rows, scalars, batch, num_classes,
            TAU_ADV_MODE=temps[0][1], TAU_NAT_MODE=temps[1][1], T_PUSH_MODE=temps[2][1],
            BLOCK_B=block_b, BLOCK_C=block_c)
        _distill_finalize_kernel[(1,)](rows, *outs, scalars, batch, float(batch * num_classes),
                                       float(num_classes), BLOCK=min(triton.next_power_of_2(batch), 1024))
        ctx.save_for_backward(*logits, rows, scalars)
        ctx.blocks = (block_b, block_c)
        ctx.grad_dtypes = (s_adv.dtype, s_nat.dtype)
        ctx.mark_non_differentiable(*outs[3:])
        return outs

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels are opaque to autograd: no double backward
    def backward(ctx, g_adv, g_nat, g_push, _g_ha, _g_hn, _g_count):
        s_adv, s_nat, r_adv, n_nat, n_adv, rows, scalars = ctx.saved_tensors
        batch, num_classes = s_adv.shape
        grad_sa = torch.empty_like(s_adv, dtype=ctx.grad_dtypes[0])
        grad_sn = torch.empty_like(s_nat, dtype=ctx.grad_dtypes[1])
        block_b, block_c = ctx.blocks
        _distill_bwd_kernel[(triton.cdiv(batch, block_b),)](
            s_adv, s_nat, r_adv, n_nat, n_adv, rows, scalars,
            g_adv.contiguous(), g_nat.contiguous(), g_push.contiguous(), grad_sa, grad_sn,
            batch, num_classes, float(batch * num_classes), float(num_classes),
            BLOCK_B=block_b, BLOCK_C=block_c)
        return grad_sa, grad_sn, None, None, None, None, None, None, None, None


def _check_inputs(s_adv, s_nat, r_adv, n_nat, n_adv, labels):
    named = (("s_adv", s_adv), ("s_nat", s_nat), ("r_adv", r_adv), ("n_nat", n_nat), ("n_adv", n_adv))
    for name, t in named:
        check_float_dtype(t, name)
        if t.dim() != 2:
            raise ValueError(f"{name} must be [B, C] logits, got shape {tuple(t.shape)}")
        if t.shape != s_adv.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, s_adv has {tuple(s_adv.shape)}")
        if t.device != s_adv.device:
            raise ValueError(f"{name} is on {t.device}, s_adv on {s_adv.device}")
    batch, num_classes = s_adv.shape
    if batch == 0 or num_classes == 0:
        raise ValueError(f"logits must have B >= 1 and C >= 1, got shape {tuple(s_adv.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an int64/int32 tensor, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != (batch,) or labels.device != s_adv.device:
        raise ValueError(f"labels must be [{batch}] on {s_adv.device}, got {tuple(labels.shape)} on {labels.device}")


def distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push, block_c=None):
    """The CIARD loss terms, fused; same inputs and outputs as ``reference.distill_loss``.

    s_adv, s_nat, r_adv, n_nat, n_adv: [B, C] float32/bfloat16/float16 logits (only s_adv, s_nat
    receive gradients; the teachers are treated as detached). labels: [B] int64/int32.
    tau_adv, tau_nat, T_push: Python numbers > 0 or 0-d tensors on the logits' device.
    block_c: columns per tile (a power of two; default min(next_pow2(C), 1024)), for tests.

    Returns (L_adv, L_nat, L_push, H_a, H_n, mask_count), 0-d float32 tensors; the last three
    carry no gradient.
    """
    _check_inputs(s_adv, s_nat, r_adv, n_nat, n_adv, labels)
    check_launchable(s_adv, "distill_loss")
    if block_c is not None and (not isinstance(block_c, numbers.Integral) or block_c < 1):
        raise ValueError(f"block_c must be a positive power of two, got {block_c!r}")
    return DistillLossFunction.apply(s_adv, s_nat, r_adv.detach(), n_nat.detach(), n_adv.detach(),
                                     labels, tau_adv, tau_nat, T_push, block_c)
