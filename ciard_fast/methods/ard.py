"""ARD: Adversarially Robust Distillation (Goldblum, Fowl, Feizi, Goldstein, AAAI 2020, arXiv 1905.09747).

One robust teacher T (the engine's robust-teacher slot), frozen. The teacher sees the clean image,
the student its own adversarial example:

    L = α·τ²·mean_{B×C} KL(softmax(T(x)/τ) ‖ softmax(S(x')/τ)) + (1 − α)·CE(S(x), y)

with KL(p ‖ q) = p·(log p − log q) elementwise (torch's `nn.KLDivLoss()`, default reduction
"mean" over all B×C elements, no +1e-5), τ = 30 (`tau`), α = 1 (`kd_weight`). x' = PGD-10 on the
student's CE, ε = 8/255, step 2/255, uniform random start in the ε-ball. lr 0.1, ×0.1 at epochs
100 and 150 of 200, weight decay 2e-4.

Where this follows the public code (goldblum/AdversariallyRobustDistillation) over the paper, or
differs from it on purpose:
  * Reduction: the code's `nn.KLDivLoss()` averages over B×C (the KL divided by C), not the
    per-example sum; kept, so τ² = 900 multiplies the batch-mean KL / C.
  * The code always runs S(x) in train mode (its BN running statistics see the clean batch) even
    when α = 1 makes the CE term vanish; we do the same, without a graph when α = 1.
  * BN mode during the attack: the code attacks with the student in train mode (batch statistics,
    running statistics updated by every attack step). docs/baselines.md's PGD-CE keeps the student in
    eval mode, our default; `attack_train_mode=True` reproduces the code.
  * Learning rate: the code's `adjust_learning_rate` rescales a local copy of the base lr, so its
    lr stays 0.01 after epoch 150 and it counts epochs from 0; we run the schedule its arguments
    describe (0.1, 0.01 from epoch 100, 0.001 from epoch 150, epochs from 1).

`igdm_alpha` > 0 adds the IGDM term (`methods/igdm.py`, options `igdm_*`); 0, the default, leaves
this method bit-identical.
"""
import dataclasses

import torch
import torch.nn.functional as F

from ..options import option
from . import register_method
from .base import Method, Network
from .igdm import IGDM
from .terms import ADV, NAT, LossSum


def kl_divergence(teacher_logits, student_logits, teacher_T=1.0, student_T=1.0):
    """Elementwise KL(softmax(teacher/T_t) ‖ softmax(student/T_s)) of torch's `nn.KLDivLoss`:
    p·(log p − log q) with 0·log 0 = 0 and no +1e-5, as [B, C] float32 (no reduction).
    The teacher side is detached."""
    log_p = F.log_softmax(teacher_logits.detach().float() / teacher_T, dim=1)
    log_q = F.log_softmax(student_logits.float() / student_T, dim=1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True)


def ard_loss(s_adv, s_nat, t_nat, labels, tau=30.0, kd_weight=1.0, sample_weights=None):
    """The ARD objective on logits [B, C] (float32 0-d tensor):

        α·τ²·mean_i( w_i · mean_c KL_ic ) + (1 − α)·mean_i( w_i · CE(S(x)_i, y_i) ),
        KL_ic = kl(softmax(t_nat/τ), softmax(s_adv/τ))_ic

    s_adv = S(x'), s_nat = S(x) (may be None when α = 1), t_nat = T(x). `sample_weights` [B]
    (Fair-ARD's per-class weights, gathered per example; None: all 1, which is the elementwise
    mean over B×C of plain ARD).
    """
    kl = kl_divergence(t_nat, s_adv, tau, tau).mean(dim=1)
    if sample_weights is not None:
        kl = kl * sample_weights
    loss = kd_weight * tau * tau * kl.mean()
    if kd_weight != 1.0:
        ce = F.cross_entropy(s_nat.float(), labels, reduction="none")
        if sample_weights is not None:
            ce = ce * sample_weights
        loss = loss + (1.0 - kd_weight) * ce.mean()
    return loss


@register_method
class ARD(Method):
    """ARD with the robust-teacher slot as its single teacher T (frozen, eval mode)."""

    name = "ard"
    attack_start = "uniform"   # PGD-CE from a uniform start in the ε-ball (Method.attack_student)
    paper_epochs = 200
    milestones = (100, 150)
    networks = (Network.teacher("robust_teacher", "robust"),)
    # its generated presets: weight decay 2e-4 (the base's), the paper's options spelled out;
    # batch 256 on CIFAR-100, the ARD code's setting there
    preset_overrides = {"method_args": {"tau": 30.0, "kd_weight": 1.0}}
    preset_overrides_by_dataset = {"cifar100": {"batch_size": 256}}
    shared_terms = (IGDM,)   # igdm_alpha > 0 adds the IGDM term (methods/igdm.py)

    @dataclasses.dataclass
    class Options(IGDM.Options):
        tau: float = option(30.0, "distillation temperature τ (both sides)", greater_than=0)
        kd_weight: float = option(1.0, "α: weight of the KD term; 1 − α on the clean CE", at_least=0, at_most=1)
        attack_train_mode: bool = option(False, "attack with the student's BN in train mode, as the public code")

    @property
    def teacher(self):
        return self.robust_teacher

    @property
    def attack_train_mode(self):
        return bool(self.options.attack_train_mode)

    # ---- one step ------------------------------------------------------------------------------
    def student_forwards(self, x, x_adv):
        """S(x') with a graph; S(x) in train mode always (BN statistics as the code), with a graph
        only when the CE term is used."""
        S = self.student
        s_adv = S(x_adv)
        if self.options.kd_weight != 1.0:
            s_nat = S(x)
        else:
            with torch.no_grad():
                s_nat = S(x)
        return s_adv, s_nat

    def training_step(self, x, y):
        opt = self.options
        x_adv = self.attack_student(x, y, loss="ce")
        s_adv, s_nat = self.student_forwards(x, x_adv)
        with torch.no_grad():
            t_nat = self.teacher(x)
        loss = ard_loss(s_adv, s_nat, t_nat, y, tau=opt.tau, kd_weight=opt.kd_weight)
        total = LossSum().add("ard_loss", loss)
        ctx = self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("student", NAT): s_nat,
                                              ("robust_teacher", NAT): t_nat})
        return self.add_shared_terms(total, ctx).output()
