"""MTARD: Multi-Teacher Adversarial Robustness Distillation (Zhao, Yu, Wang, Wang, Chen, Liu, Cao, ECCV 2022,
arXiv 2207.08284).

Two frozen teachers: the robust teacher R on the student's adversarial example and the clean
teacher N on the clean image, balanced by MTARD's adaptive loss weights (docs/method.md, step 8 for w_nat):

    x'    = PGD-10 on CE(S(x'), y), step 2/255, from x + 0.001·N(0, I), student in eval mode
    L_adv = kd_scale·mean_{B×C} kl(softmax(R(x')), log_softmax(S(x')))
    L_nat = kd_scale·mean_{B×C} kl(softmax(N(x)),  log_softmax(S(x)))
    L⁰ recorded on the first step;  rᵢ = Lᵢ / L⁰ᵢ
    w_nat ← w_nat − η_w·(w_nat − r_nat / (r_adv + r_nat));   w_adv = 1 − w_nat
    L     = w_adv·L_adv + w_nat·L_nat          (weights updated before they are used)

kl(p, log q) = p·(log(p + 1e-5) − log q) (`losses.kd_kl`), no temperatures, w = 0.5/0.5 at start,
η_w = 0.025; lr and η_w ×0.1 at 215, 260, 285 of 300; kd_scale = C/10 (×10 on CIFAR-100).

Following the MTARD training loop as published (read here in the Fair-ARD authors' MTARD
script, whose loop is MTARD's) where it is specific: the attack starts from x + 0.001·N(0, I)
(not the generic uniform start of docs/baselines.md) and the weight rule updates w_nat only. That rule is
the two-weight rule of `losses.update_loss_weights` restricted to w_adv + w_nat = 1, which keeps
the sum at 1 on its own; we apply that function and then set w_adv = 1 − w_nat exactly. The code
decays lr and η_w after epoch 215 has run (from 216); here the decays take effect from epoch 215,
as `step_lr` does for every method. All state (w, L⁰, η_w) is on the device: no host sync in a step.
"""
import dataclasses
from typing import Optional, Tuple

import torch

from .. import losses
from ..options import MethodOptions, option
from ..schedules import step_decay_factor
from . import register_method
from .base import Method, Network
from .terms import LossSum


@register_method
class MTARD(Method):
    name = "mtard"
    paper_epochs = 300
    milestones = (215, 260, 285)
    networks = (Network.teacher("robust_teacher", "robust"), Network.teacher("clean_teacher", "clean"))
    preset_overrides = {"method_args": {"eta_w": 0.025}}

    @dataclasses.dataclass
    class Options(MethodOptions):
        eta_w: float = option(0.025, "loss-weight learning rate η_w", at_least=0, at_most=1)
        w_nat: float = option(0.5, "initial clean-KD weight (w_adv = 1 − it)", at_least=0, at_most=1)
        rate_decay_epochs: Tuple[int, ...] = option((215, 260, 285), "the adaptive rates ×0.1 at these epochs "
                                                    "(of paper_epochs; scaled)", at_least=0)
        kd_scale: Optional[float] = option(None, "factor of the KD terms; None: C/10 (×10 on CIFAR-100)",
                                           greater_than=0)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        opt = self.options
        self.rate_decay_epochs = tuple(float(e) for e in opt.rate_decay_epochs)
        self.kd_scale = self.num_classes / 10.0 if opt.kd_scale is None else float(opt.kd_scale)
        # Method state, all device tensors (read on the host only for logging, between steps).
        self.register_state("weights", torch.tensor([1.0 - opt.w_nat, opt.w_nat], device=self.device))  # [w_adv, w_nat]
        self.register_state("initial_losses", torch.ones(2, device=self.device))
        self.register_state("has_initial_losses", torch.zeros((), dtype=torch.bool, device=self.device))
        self.register_state("eta_w", self._scalar(opt.eta_w))

    # ---- schedules -----------------------------------------------------------------------------
    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        self.eta_w.fill_(self.options.eta_w * self.rate_decay(epoch))

    def rate_decay(self, epoch):
        """×0.1 per scaled `rate_decay_epochs` event reached by `epoch` (215, 260, 285 of 300)."""
        return step_decay_factor(epoch, self.rate_decay_epochs, self.epochs, self.paper_epochs)

    # ---- one step ------------------------------------------------------------------------------
    def forwards(self, x, y):
        """PGD-CE on the student (eval mode, normal start); then S(x'), S(x) in train mode and
        R(x'), N(x) in eval mode without a graph. Returns (s_adv, s_nat, r_adv, n_nat)."""
        S = self.student
        x_adv = self.attack_student(x, y, loss="ce", default_start="normal")
        s_adv = S(x_adv)
        s_nat = S(x)
        with torch.no_grad():
            r_adv = self.robust_teacher(x_adv)
            n_nat = self.clean_teacher(x)
        return s_adv, s_nat, r_adv, n_nat

    def training_step(self, x, y):
        s_adv, s_nat, r_adv, n_nat = self.forwards(x, y)
        L_adv = self.kd_scale * losses.kd_kl(s_adv, r_adv)
        L_nat = self.kd_scale * losses.kd_kl(s_nat, n_nat)

        # Under DDP the weights follow the global (all-rank) losses so every rank holds the same w.
        current = torch.stack(self.global_mean(L_adv, L_nat))
        self.initial_losses.copy_(torch.where(self.has_initial_losses, self.initial_losses, current))
        self.has_initial_losses.fill_(True)
        losses.update_loss_weights(self.weights, current, self.initial_losses, self.eta_w)
        # MTARD keeps w_adv = 1 − w_nat by construction; make it exact after the renormalisation.
        self.weights[0].copy_(1.0 - self.weights[1])

        total = LossSum().add("L_adv", L_adv, weight=self.weights[0], logged=current[0])
        return total.add("L_nat", L_nat, weight=self.weights[1], logged=current[1]).output()

    # ---- logging -------------------------------------------------------------------------------
    def log_values(self):
        return {"w_adv": self.weights[0], "w_nat": self.weights[1]}
