"""RSLAD: Robust Soft Label Adversarial Distillation (Zi, Zhao, Ma, Jiang, "Revisiting Adversarial
Robustness Distillation: Robust Soft Labels Make Student Better", ICCV 2021, arXiv 2108.07969).

One robust teacher T (the robust-teacher slot), frozen; its clean soft labels T(x) replace the
hard labels everywhere, including in the attack:

    x' = argmax_{‖x'−x‖∞≤ε} Σᵢ KL(softmax(T(x)) ‖ softmax(S(x')))   (10 steps of 2/255 from
         x + 0.001·N(0, I), student in eval mode, KL summed: the `loss="kl"` PGD)
    L  = kd_scale·[ (5/6)·mean_{B×C} kl(softmax(T(x)), log_softmax(S(x')))
                  + (1/6)·mean_{B×C} kl(softmax(T(x)), log_softmax(S(x))) ]

with kl(p, log q) = p·(log(p + 1e-5) − log q) (`losses.kd_kl`, the code's `kl_loss`), T = 1.
lr 0.1, ×0.1 at epochs 215, 260, 285 of 300, weight decay 2e-4.

kd_scale: the public CIFAR-100 scripts (zibojia/RSLAD `resnet18_rslad_cifar100.py`) multiply both
terms by 10 "to keep consistent with CIFAR-10"; that is the elementwise `kl` (docs/method.md §2) with
its kd_scale = C/10, our default (1 on CIFAR-10). The code decays the lr after epoch 215
has run (from epoch 216); `step_lr` decays from epoch 215 itself, as for every method here.

`igdm_alpha` > 0 adds the IGDM term (`methods/igdm.py`, options `igdm_*`); 0, the default, leaves
this method bit-identical.
"""
import dataclasses
from typing import Optional

import torch

from .. import losses
from ..options import option
from . import register_method
from .base import Method, Network
from .igdm import IGDM
from .terms import ADV, NAT, LossSum


def rslad_terms(s_adv, s_nat, t_nat, kd_scale=1.0):
    """(L_adv, L_nat) = kd_scale·(kd_kl(S(x'), T(x)), kd_kl(S(x), T(x))); logits [B, C]."""
    return kd_scale * losses.kd_kl(s_adv, t_nat), kd_scale * losses.kd_kl(s_nat, t_nat)


def rslad_loss(s_adv, s_nat, t_nat, adv_weight=5.0 / 6.0, kd_scale=1.0):
    """kd_scale·[w·kd_kl(S(x'), T(x)) + (1 − w)·kd_kl(S(x), T(x))], w = 5/6; logits [B, C].

    Returns (loss, L_adv, L_nat), the last two already multiplied by kd_scale."""
    L_adv, L_nat = rslad_terms(s_adv, s_nat, t_nat, kd_scale)
    return adv_weight * L_adv + (1.0 - adv_weight) * L_nat, L_adv, L_nat


@register_method
class RSLAD(Method):
    name = "rslad"
    paper_epochs = 300
    milestones = (215, 260, 285)
    networks = (Network.teacher("robust_teacher", "robust"),)
    shared_terms = (IGDM,)   # igdm_alpha > 0 adds the IGDM term (methods/igdm.py)

    @dataclasses.dataclass
    class Options(IGDM.Options):
        adv_weight: float = option(5.0 / 6.0, "weight of the adversarial term; 1 − it on the clean term",
                                   at_least=0, at_most=1)
        kd_scale: Optional[float] = option(None, "factor of both KD terms; None: C/10 (×10 on CIFAR-100, as the "
                                                 "public code)", greater_than=0)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        opt = self.options
        self.kd_scale = self.num_classes / 10.0 if opt.kd_scale is None else float(opt.kd_scale)

    def training_step(self, x, y):
        S, T = self.student, self.robust_teacher
        with torch.no_grad():
            t_nat = T(x)
        x_adv = self.attack_student(x, y, loss="kl", target_logits=t_nat, default_start="normal")
        s_adv = S(x_adv)
        s_nat = S(x)
        L_adv, L_nat = rslad_terms(s_adv, s_nat, t_nat, self.kd_scale)
        w = self.options.adv_weight
        total = LossSum().add("L_adv", L_adv, weight=w).add("L_nat", L_nat, weight=1.0 - w)
        ctx = self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("student", NAT): s_nat,
                                              ("robust_teacher", NAT): t_nat})
        return self.add_shared_terms(total, ctx).output()
