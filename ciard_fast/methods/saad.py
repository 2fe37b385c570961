"""SAAD: Sample-wise Adaptive Adversarial Distillation (Lee & Chung, "Sample-wise Adaptive
Weighting for Transfer Consistency in Adversarial Distillation", TMLR 2026, arXiv 2512.10275;
code `HongsinLee/saad`, `saad.py`).

One robust teacher T (the robust-teacher slot), frozen. Each step:

1. The teacher's logits at x and the input gradient of its true-class logit, once per step (one
   teacher forward and backward, none inside the attack loop):

       t = T(x),   gᵢ = ∇ₓ T(x)ᵢ,yᵢ

2. The attack (PGD on the student, student in eval mode, 10 steps of 2/255 from x + 0.001·N(0, I))
   maximises the summed KL from a teacher linearised at x on its true class only:

       x' = argmax Σᵢ KL(softmax(t̃ᵢ) ‖ softmax(S(x')ᵢ)),   t̃ᵢ = tᵢ + λ·e_yᵢ·⟨gᵢ, x'ᵢ − xᵢ⟩

   with the gradient w.r.t. x' through S *and* through ⟨g, x' − x⟩ (λ = 1, `inner_lambda`).

3. Per-example weights from the teacher's entropy on x' (no gradient):

       Hᵢ = −Σ_c p_ic·log(p_ic + 1e-12),  p = softmax(T(x'))       (Rényi of order `entropy_order`
                                                                    = 1: Shannon; else
                                                                    log(Σ_c p^γ + 1e-12)/(1 − γ))
       wᵢ = s·(Hᵢ − min_j H_j)   (s = 5, `entropy_scale`; not normalised: wᵢ ∈ [0, s·(H_max − H_min)])
       w̄ᵢ = wᵢ / (max_j w_j + 1e-8)                                (only for the clean term)

   min and max run over the global batch (all ranks under torch.distributed, as the code's one
   batch of 128).

4. The loss, a batch mean of per-example sums (KLsumᵢ(p ‖ q) = Σ_c p_ic(log p_ic − log q_ic),
   exact, the target side detached):

       L = (1/B) Σᵢ [ wᵢ·( KLsumᵢ(T(x') ‖ S(x')) + α·(e/E)·IGDMᵢ ) + β·(1 − w̄ᵢ)·KLsumᵢ(T(x) ‖ S(x)) ]

   IGDMᵢ is the IGDM term's per-example KL (`methods/igdm.py`: softmax(T(x') − T(x − δ)) against
   softmax(S(x') − S(x − δ)), δ = x' − x, x − δ not clamped), α = 1 (`igdm_alpha`; 10 on CIFAR-100
   and Tiny-ImageNet, as the code's comment says), E the run's epochs; β = 0 (`clean_weight`, the
   published command's `--beta 0`).

Schedule: 200 epochs, lr 0.1, ×0.1 at 100 and 150, weight decay 2e-4; the reported model is the
average of the student's end-of-epoch weights from epoch 95 of 200 on (SWA: the engine's callback,
`engine/swa.py`, switched on by `swa_start: 0.475` in the generated presets, a fraction so that it
scales with the run's length), BN statistics recomputed on the training set after each average.
SWA is a config field, not an option of the method: `method: saad` alone (e.g. on the demo preset)
trains without it.

Where the public code and this implementation differ (the paper's text could not be read; the
code's behaviour is the reference):
  * The code's teacher runs at x twice (the attack's forward with a graph, and a `no_grad` forward
    for the clean term): the same numbers in eval mode, so the attack's logits are reused.
  * Its random start is not clamped to [0, 1]; ours is (our AdaAD/RSLAD start;
    `attack_random_start: normal_unclamped` gives the code's).
  * S(x) runs in train mode every step, after S(x') and S(x − δ), as in the code (BN sees the
    three batches in that order); without a graph when β = 0.
  * min H is read on the host in the code (`.item()`); here everything stays on the device.
  * The weighting details (the factor 5, the Shannon order, the batch minimum, w unnormalised in
    the main terms and multiplying the IGDM term too) are the code's; the paper's text could not
    be checked.
"""
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..options import option
from . import register_method
from .base import Method, Network
from .igdm import IGDM, igdm_alpha_option, kl_per_sample
from .terms import ADV, NAT, LossSum

__all__ = ["SAAD", "LinearisedTeacherKL", "true_class_gradient", "renyi_entropy", "entropy_weights"]

ENTROPY_EPS = 1e-12   # inside the log of the entropy (the code's)
NORM_EPS = 1e-8       # in the normalisation of the clean-term weights (the code's)


def true_class_gradient(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(T(x) detached [B, K], gᵢ = ∇ₓ T(x)ᵢ,yᵢ [B, C, H, W]): one forward and one backward of the
    teacher, which is used in the mode it is in (eval: each example's gradient is its own)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = teacher(x_in)
        (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x_in)
    return logits.detach(), grad.detach()


class LinearisedTeacherKL(nn.Module):
    """SAAD's inner maximisation as a `pgd` objective: ``objective(s_logits, x_adv)`` =
    Σ_{i,c} KL(softmax(t̃)ᵢ ‖ softmax(s_logits)ᵢ), t̃ᵢ = tᵢ + λ·e_yᵢ·⟨gᵢ, x_advᵢ − xᵢ⟩, with the
    gradient through both sides (float32 0-d).

    The point of linearisation (x, y, t, g) is set by `set_point` before each attack and held in
    buffers updated in place: one module per method, so a CUDA-graph replay reads the new point
    (attacks/graphs.py keys the objective by identity and its buffers by address).
    """

    def __init__(self, inner_lambda: float = 1.0) -> None:
        super().__init__()
        self.inner_lambda = float(inner_lambda)
        for name in ("x", "y", "t", "g"):
            self.register_buffer(name, torch.empty(0), persistent=False)

    def set_point(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> None:
        for name, value in (("x", x), ("y", y), ("t", t), ("g", g)):
            held = getattr(self, name)
            value = value.detach()
            if held.shape == value.shape and held.dtype == value.dtype and held.device == value.device:
                held.copy_(value)
            else:  # a new batch shape: new buffers (a graph captured for the old ones is not reused)
                setattr(self, name, value.clone())

    def linearised_teacher(self, x_adv: torch.Tensor) -> torch.Tensor:
        """t̃ [B, K] float32 at x_adv (with gradient w.r.t. x_adv through the correction)."""
        correction = ((x_adv - self.x).float() * self.g.float()).flatten(1).sum(1)   # ⟨gᵢ, x'ᵢ − xᵢ⟩, [B]
        return self.t.float().scatter_add(1, self.y[:, None], self.inner_lambda * correction[:, None])

    def forward(self, s_logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(self.linearised_teacher(x_adv), dim=1)
        log_q = F.log_softmax(s_logits.float(), dim=1)
        return (log_p.exp() * (log_p - log_q)).sum()


def renyi_entropy(logits: torch.Tensor, order: float = 1.0) -> torch.Tensor:
    """Hᵢ of p = softmax(logitsᵢ), [B] float32: −Σ p·log(p + 1e-12) for order 1 (Shannon), else
    log(Σ p^order + 1e-12)/(1 − order) (the code's `samplewise_renyi_entropy`)."""
    p = F.softmax(logits.float(), dim=1)
    if abs(order - 1.0) < 1e-6:
        return -(p * torch.log(p + ENTROPY_EPS)).sum(dim=1)
    return torch.log(p.pow(order).sum(dim=1) + ENTROPY_EPS) / (1.0 - order)


def entropy_weights(H: torch.Tensor, H_min: torch.Tensor, H_max: torch.Tensor, scale: float = 5.0):
    """(w, w̄) [B]: wᵢ = scale·(Hᵢ − H_min) and w̄ᵢ = wᵢ/(scale·(H_max − H_min) + 1e-8), with H_min,
    H_max the batch's (global) extremes (0-d tensors). No gradient."""
    w = scale * (H - H_min)
    return w, w / (scale * (H_max - H_min) + NORM_EPS)


@register_method
class SAAD(Method):
    name = "saad"
    attack_start = "normal"   # x + 0.001·N(0, I)
    paper_epochs = 200
    milestones = (100, 150)
    networks = (Network.teacher("robust_teacher", "robust"),)
    progress_hidden = ("mean_weight", "teacher_entropy")
    # the published command (main.sh): weight decay 2e-4 (the base presets'), α_IGDM 1, β 0, Shannon,
    # SWA from epoch 95 of 200 (a fraction, so that it scales with the run: engine/swa.py);
    # α_IGDM 10 on CIFAR-100 and Tiny-ImageNet (the code's comment)
    preset_overrides = {"swa_start": 95 / 200,
                        "method_args": {"igdm_alpha": 1.0, "clean_weight": 0.0, "entropy_order": 1.0,
                                        "inner_lambda": 1.0, "entropy_scale": 5.0}}
    preset_overrides_by_dataset = {"cifar100": {"method_args": {"igdm_alpha": 10.0}},
                                   "tinyimagenet": {"method_args": {"igdm_alpha": 10.0}},
                                   # the digits demo (demo-saad): its lr 1.0 offsets the 1/C of the older
                                   # methods' elementwise-mean KLs; SAAD's loss is a per-example sum
                                   "digits": {"lr": 0.1}}

    @dataclasses.dataclass
    class Options(IGDM.Options):
        igdm_alpha: float = igdm_alpha_option(1.0)
        inner_lambda: float = option(1.0, "λ: weight of the teacher's linearised true-class correction in the attack",
                                     at_least=0)
        entropy_scale: float = option(5.0, "s: per-example weight wᵢ = s·(Hᵢ − min H)", greater_than=0)
        entropy_order: float = option(1.0, "Rényi order of the teacher's entropy on x' (1: Shannon)", greater_than=0)
        clean_weight: float = option(0.0, "β: weight of the clean term (1 − w̄ᵢ)·KL(T(x) ‖ S(x))", at_least=0)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        self.attack_objective = LinearisedTeacherKL(self.options.inner_lambda)
        self.igdm = IGDM.from_options(self.options)   # weighted per example here, not a plug-in

    def training_step(self, x, y):
        S, T = self.student, self.robust_teacher
        opt = self.options
        t_nat, grad = true_class_gradient(T, x, y)
        self.attack_objective.set_point(x, y, t_nat, grad)
        x_adv = self.attack_student(x, y, loss=self.attack_objective, default_start="normal")
        with torch.no_grad():
            t_adv = T(x_adv)
        s_adv = S(x_adv)
        ctx = self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("robust_teacher", ADV): t_adv,
                                              ("robust_teacher", NAT): t_nat})
        igdm = self.igdm.per_sample(ctx) if self.igdm is not None else None     # S(x − δ), T(x − δ)
        with torch.set_grad_enabled(opt.clean_weight != 0):
            s_nat = S(x)   # every step, after S(x') and S(x − δ): BN sees the code's batches in its order

        with torch.no_grad():
            H = renyi_entropy(t_adv, opt.entropy_order)
            neg_min, H_max = self.global_max(-H.min(), H.max())
            w, w_bar = entropy_weights(H, -neg_min, H_max, opt.entropy_scale)
        total = LossSum().add("L_adv", (w * kl_per_sample(t_adv, s_adv)).mean())
        if igdm is not None:
            total.add("igdm", (w * igdm).mean(), weight=self.igdm.weight(ctx))
        if opt.clean_weight != 0:
            total.add("L_nat", ((1.0 - w_bar) * kl_per_sample(t_nat, s_nat)).mean(), weight=opt.clean_weight)
        return total.log("mean_weight", w.mean()).log("teacher_entropy", H.mean()).output()
