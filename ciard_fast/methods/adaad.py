"""AdaAD: Adaptive Adversarial Distillation (Huang, Chen, Yang, Wang, Huang, Wu, "Boosting Accuracy and
Robustness of Student Models via Adaptive Adversarial Distillation", CVPR 2023).

One robust teacher T (the robust-teacher slot), frozen. The inner maximisation looks for the
point where student and teacher disagree most, *both* evaluated at x' (the gradient flows through
the teacher as well as the student):

    x' = argmax_{‖x'−x‖∞≤ε} Σᵢ KL(softmax(T(x')) ‖ softmax(S(x')))   (10 steps of 2/255 from
         x + 0.001·N(0, I), student and teacher in eval mode)
    L  = kd_scale·[ α·mean KL(softmax(T(x')) ‖ softmax(S(x'))) + (1 − α)·mean KL(softmax(T(x)) ‖ softmax(S(x))) ]

KL exact (torch's `nn.KLDivLoss`, p·(log p − log q)), α = 1 (`adv_weight`). lr 0.1, ×0.1 at 100 and 150 of 200,
weight decay 5e-4.

Following the public code (`adaad_inner_loss` and the training loop of the AdaAD repository):
  * Reduction: on CIFAR-10 `nn.KLDivLoss()` (mean over B×C); on CIFAR-100 the code sums over
    classes and averages over the batch, i.e. ×C. So kd_scale = None means 1 for C = 10 and C for
    any other number of classes (our generalisation of its two cases).
  * S(x) is always computed in train mode (BN statistics see the clean batch), without a graph
    when α = 1; T(x) only when 1 − α > 0.
The teacher-dependent objective is `pgd`'s callable-objective form (`TeacherStudentKL`): the
attack is the library's one PGD loop (validation, random start, fused step, CUDA graph).

`igdm_alpha` > 0 adds the IGDM term (`methods/igdm.py`, options `igdm_*`); 0, the default, leaves
this method bit-identical.
"""
import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..options import option
from . import register_method
from .ard import kl_divergence
from .base import Method, Network
from .igdm import IGDM
from .terms import ADV, NAT, LossSum


def adaad_objective(s_logits, t_logits):
    """Σ_{i,c} KL(softmax(T(x'))ᵢ ‖ softmax(S(x'))ᵢ) with gradients through both (float32 0-d)."""
    log_p = F.log_softmax(t_logits.float(), dim=1)
    log_q = F.log_softmax(s_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum()


class TeacherStudentKL(nn.Module):
    """AdaAD's inner maximisation as a `pgd` objective: ``objective(s_logits, x_adv)`` =
    Σ KL(softmax(T(x_adv)) ‖ softmax(s_logits)), the teacher evaluated at the iterate with the
    gradient through it (`adaad_objective`). The teacher is used in the mode it is in; `pgd`
    freezes its parameters for the attack. A module, created once per method, so the CUDA-graph
    cache keys one objective (attacks/graphs.py)."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, s_logits, x_adv):
        return adaad_objective(s_logits, self.teacher(x_adv))


def adaad_loss(s_adv, s_nat, t_adv, t_nat, adv_weight=1.0, kd_scale=1.0):
    """kd_scale·[α·mean_{B×C} KL(T(x') ‖ S(x')) + (1 − α)·mean_{B×C} KL(T(x) ‖ S(x))] (float32 0-d).
    s_nat and t_nat may be None when α = 1."""
    loss = adv_weight * kl_divergence(t_adv, s_adv).mean()
    if adv_weight != 1.0:
        loss = loss + (1.0 - adv_weight) * kl_divergence(t_nat, s_nat).mean()
    return kd_scale * loss


@register_method
class AdaAD(Method):
    name = "adaad"
    paper_epochs = 200
    milestones = (100, 150)
    networks = (Network.teacher("robust_teacher", "robust"),)
    preset_overrides = {"weight_decay": 5e-4, "method_args": {"adv_weight": 1.0}}  # the AdaAD code's weight decay
    shared_terms = (IGDM,)   # igdm_alpha > 0 adds the IGDM term (methods/igdm.py)

    @dataclasses.dataclass
    class Options(IGDM.Options):
        adv_weight: float = option(1.0, "α: weight of the KL at x'; 1 − α on the KL at x", at_least=0, at_most=1)
        kd_scale: Optional[float] = option(None, "factor of the loss; None: 1 on 10 classes, C otherwise (the "
                                                 "code's CIFAR-100 sum)", greater_than=0)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        opt = self.options
        self.kd_scale = self.default_kd_scale() if opt.kd_scale is None else float(opt.kd_scale)
        self.attack_objective = TeacherStudentKL(self.robust_teacher)

    def default_kd_scale(self):
        """kd_scale when the option is None: 1 on 10 classes (the code's CIFAR-10 mean over B×C), C
        otherwise (its CIFAR-100 sum over classes)."""
        return 1.0 if self.num_classes == 10 else float(self.num_classes)

    def training_step(self, x, y):
        S, T = self.student, self.robust_teacher
        alpha = self.options.adv_weight
        # student in eval mode, teacher frozen (eval); from x + 0.001·N(0, I) unless configured
        x_adv = self.attack_student(x, y, loss=self.attack_objective, default_start="normal")
        s_adv = S(x_adv)
        with torch.set_grad_enabled(alpha != 1.0):
            s_nat = S(x)
        with torch.no_grad():
            t_adv = T(x_adv)
            t_nat = T(x) if alpha != 1.0 else None
        loss = adaad_loss(s_adv, s_nat, t_adv, t_nat, adv_weight=alpha, kd_scale=self.kd_scale)
        total = LossSum().add("adaad_loss", loss)
        ctx = self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("student", NAT): s_nat,
                                              ("robust_teacher", ADV): t_adv, ("robust_teacher", NAT): t_nat})
        return self.add_shared_terms(total, ctx).output()
