"""Functional losses and the update rules of the adaptive quantities (steps 3-8 of docs/method.md).

Every function takes logits [B, C] and returns 0-d tensors, computed in float32 — or float64 when
the (student) logits are float64, so a float64 check is exact; float16/bfloat16 logits are upcast
to float32; nothing here calls `.item()` or
indexes with a data-dependent mask, so a training step built from these never waits on the host.
The fused multi-teacher loss goes through the kernel dispatch (`ciard_fast.kernels.distill_loss`):
Triton on CUDA, the pure-torch reference elsewhere.
"""
from collections import namedtuple

import torch
import torch.nn.functional as F

from . import kernels
from .kernels.reference import compute_dtype, elementwise_kl, upcast

# Floor of each loss before taking log10 in the push weight (step 6 of docs/method.md).
LOSS_FLOOR = 1e-7

CiardTerms = namedtuple("CiardTerms", "L_adv L_nat L_push H_adv H_nat mask_count")


def kd_kl(student_logits, teacher_logits, teacher_T=1.0, student_T=1.0):
    """Elementwise-KL distillation loss, mean over all B×C elements (no T² factor).

        kd_kl = mean_{i,c} p_ic·(log(p_ic + 1e-5) − log q_ic),
        p = softmax(teacher_logits / teacher_T) (detached),  q = softmax(student_logits / student_T)

    This is the batch-mean KL divided by C — the convention of the RSLAD/MTARD/CIARD code.
    Computed in the student logits' compute dtype (float64 for float64, else float32).
    """
    student_logits = upcast(student_logits)
    p = F.softmax(teacher_logits.detach().to(student_logits.dtype) / teacher_T, dim=1)
    log_q = F.log_softmax(student_logits / student_T, dim=1)
    return elementwise_kl(p, log_q).mean()


def push_loss(student_logits, teacher_logits, labels, T=5.0):
    """CIARD's contrastive push loss on the samples the clean teacher gets wrong.

        M      = {i : argmax teacher_logits_i ≠ labels_i}
        L_push = Σ_{i∈M, c} p_ic·(log(p_ic + 1e-5) − log q_ic) / (|M|·C),
        p = softmax(teacher_logits) (detached),  q = softmax(student_logits / T)

    Exactly 0 (with a zero gradient) when M is empty. The mask is a multiplication, not an index,
    so no host sync. The caller subtracts λ·L_push: the student is pushed *away* from the teacher's
    wrong answer.
    """
    student_logits = upcast(student_logits)
    dtype = student_logits.dtype
    teacher_logits = teacher_logits.detach().to(dtype)
    mask = (teacher_logits.argmax(dim=1) != labels).to(dtype)
    p = F.softmax(teacher_logits, dim=1)
    terms = elementwise_kl(p, F.log_softmax(student_logits / T, dim=1))
    return (terms * mask[:, None]).sum() / (mask.sum().clamp(min=1.0) * student_logits.shape[1])


def ciard_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push=5.0, kd_scale=1.0):
    """All CIARD loss terms in one fused pass.

    s_adv = S(x'), s_nat = S(x) (with gradients); r_adv = R(x'), n_nat = N(x), n_adv = N(x')
    (teachers, treated as constants); tau_adv, tau_nat: temperatures (0-d device tensors, or
    per-class [C] tensors: row i of the teacher's logits is divided by τ[labels_i]; that form runs
    the pure-torch reference, see `kernels.distill_loss`).

        L_adv  = kd_scale · kd_kl(s_adv, r_adv, teacher_T=τ_adv)
        L_nat  = kd_scale · kd_kl(s_nat, n_nat, teacher_T=τ_nat)
        L_push = kd_scale · push_loss(s_adv, n_adv, labels, T_push)
        H_adv  = mean_{B×C} p·log(p + 1e-5), p = softmax(r_adv/τ_adv)   (for the τ update)
        H_nat  = mean_{B×C} p·log(p + 1e-5), p = softmax(n_nat/τ_nat)
        mask_count = |M| (float)

    kd_scale is C/10 by the MTARD/RSLAD convention (×10 on CIFAR-100) so losses keep the CIFAR-10
    magnitude. Returns a `CiardTerms` namedtuple of 0-d tensors: float32, or float64 for float64
    student logits.
    """
    L_adv, L_nat, L_push, H_adv, H_nat, count = kernels.distill_loss(
        s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push
    )
    return CiardTerms(kd_scale * L_adv, kd_scale * L_nat, kd_scale * L_push, H_adv, H_nat, count)


@torch.no_grad()
def push_weight(L_adv, L_nat, L_push, floor=LOSS_FLOOR):
    """Magnitude-matched push weight (step 6 of docs/method.md), a power of ten with no gradient:

        λ = 10^( min(⌊log₁₀ L_adv⌋, ⌊log₁₀ L_nat⌋) − ⌊log₁₀ L_push⌋ ),  each loss floored at 1e-7.

    Computed in float64: ⌊log₁₀ 0.001⌋ must be −3, which float32 rounding can turn into −4.
    Returned in L_adv's compute dtype (float32, or float64 for float64 losses).
    E.g. (0.05, 0.02, 0.2) → 0.1 and (0.12, 0.03, 0.003) → 10.
    """
    def exponent(loss):
        return torch.floor(torch.log10(loss.detach().double().clamp(min=floor)))

    power = torch.minimum(exponent(L_adv), exponent(L_nat)) - exponent(L_push)
    return torch.pow(10.0, power).to(compute_dtype(L_adv))


@torch.no_grad()
def push_weight_reference(L_adv, L_nat, L_push):
    """λ as the public CIARD code's `scale_to_magnitude` computes it, on the device:

        λ = 10^( min(m(L_adv), m(L_nat)) − m(L_push) ),  m(L) = ⌊log₁₀ |L|⌋, with L → 1e-7 only if L == 0

    The public code adds 1e-7 to a loss that `math.isclose` calls 0 (with the default tolerances:
    exactly 0) and floors nothing else, so a loss of 1e-9 has magnitude −9 here and −7 in
    :func:`push_weight`. Computed in float64 (from the losses' own values), returned in L_adv's
    compute dtype. No host sync.
    """
    def exponent(loss):
        loss = loss.detach().double()
        return torch.floor(torch.log10(torch.where(loss == 0, torch.full_like(loss, LOSS_FLOOR), loss.abs())))

    power = torch.minimum(exponent(L_adv), exponent(L_nat)) - exponent(L_push)
    return torch.pow(10.0, power).to(compute_dtype(L_adv))


@torch.no_grad()
def update_temperatures(tau_adv, tau_nat, H_adv, H_nat, lr, low=1.0, high=10.0):
    """B-MTARD's adaptive temperatures (step 7 of docs/method.md), in place on 0-d device tensors:

        τ_adv ← clip(τ_adv − η_τ·sign(H_adv/H_nat − 1), 1, 10)
        τ_nat ← clip(τ_nat − η_τ·sign(H_nat/H_adv − 1), 1, 10)

    `lr` (η_τ) may be a float or a 0-d tensor. Returns (tau_adv, tau_nat).
    """
    ratio = H_adv / H_nat
    tau_adv.sub_(lr * torch.sign(ratio - 1)).clamp_(low, high)
    tau_nat.sub_(lr * torch.sign(1 / ratio - 1)).clamp_(low, high)
    return tau_adv, tau_nat


@torch.no_grad()
def update_loss_weights(weights, losses, initial_losses, lr):
    """MTARD's adaptive loss weights (step 8 of docs/method.md), in place:

        r_i = L_i / L⁰_i;   w_i ← w_i − η_w·(w_i − r_i / Σ_j r_j);   w ← max(w, 0);   w ← w / Σ w

    weights, losses, initial_losses: 1-D tensors of the same length (2 for CIARD: adv, nat).
    `lr` (η_w) a float or 0-d tensor. Returns `weights`.
    """
    ratios = losses.detach() / initial_losses
    weights.sub_(lr * (weights - ratios / ratios.sum())).clamp_(min=0.0)
    weights.div_(weights.sum().clamp(min=1e-12))
    return weights


def neg_entropy(logits, T=1.0):
    """mean_{B×C} p·log(p + 1e-5), p = softmax(logits / T) (no gradient): the quantity docs/method.md
    step 7 compares between teachers (H_adv, H_nat) to adapt their temperatures.

    Equals the H_adv/H_nat that `ciard_loss` returns; for methods (B-MTARD) that need the
    temperature rule without the fused CIARD pass. logits: [B, C]; T: float or 0-d tensor.
    """
    with torch.no_grad():
        p = F.softmax(upcast(logits.detach()) / T, dim=1)
        return (p * torch.log(p + kernels.reference.KL_EPS)).mean()
