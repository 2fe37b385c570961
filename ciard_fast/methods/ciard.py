"""CIARD: Cyclic Iterative Adversarial Robustness Distillation (Lu et al., ICCV 2025).

Implements ../shared/spec/CIARD.md exactly; the step numbers below refer to that page.
Two teachers: a robust teacher R (re-trained during distillation: Iterative Teacher Training) and
a clean teacher N (frozen). Losses: robust KD + clean KD with adaptive temperatures and weights,
minus a magnitude-matched contrastive push loss that pushes the student's adversarial prediction
away from the clean teacher's wrong answers.
"""
import dataclasses
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import losses
from ..schedules import ciard_student_lr, ciard_teacher_lr, step_decay_factor
from . import register_method
from .base import Method, freeze


@register_method
class CIARD(Method):
    """CIARD.md steps 1-10. `options` (config key `method_args`) are the ablation switches."""

    name = "ciard"
    paper_epochs = 300
    needs_robust_teacher = True
    needs_clean_teacher = True

    @dataclasses.dataclass
    class Options:
        weighting: str = "adaptive"       # "adaptive" (MTARD rule) or "fixed" (w_adv = w_nat = 1)
        push: bool = True                 # contrastive push loss on/off
        itt: bool = True                  # iterative teacher training on/off
        T_push: float = 5.0               # temperature of the student in the push loss
        E_itt: Optional[float] = None     # ITT starts after this epoch; None: E/6 (50 of 300)
        eta_tau: float = 0.001            # temperature learning rate
        eta_w: float = 0.025              # loss-weight learning rate
        rate_decay_epochs: Tuple[int, ...] = (215, 260, 285)  # η_τ, η_w ×0.1 (of 300 epochs)
        teacher_lr: float = 1e-4          # peak ITT learning rate of R
        teacher_momentum: float = 0.1
        teacher_weight_decay: float = 2e-4
        kd_scale: Optional[float] = None  # None: C/10 (×10 on CIFAR-100)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        opt = self.options
        if opt.weighting not in ("adaptive", "fixed"):
            raise ValueError(f"weighting must be 'adaptive' or 'fixed', got {opt.weighting!r}")
        if opt.T_push <= 0:
            raise ValueError(f"T_push must be > 0, got {opt.T_push}")
        self.kd_scale = self.num_classes / 10.0 if opt.kd_scale is None else float(opt.kd_scale)
        self.E_itt = self.epochs / 6.0 if opt.E_itt is None else float(opt.E_itt)
        freeze(self.clean_teacher)
        freeze(self.robust_teacher)
        self.teacher_optimizer = None
        if opt.itt:
            self.teacher_optimizer = torch.optim.SGD(
                self.robust_teacher.parameters(), lr=0.0,
                momentum=opt.teacher_momentum, weight_decay=opt.teacher_weight_decay,
            )
        # Method state: all 0-d / 1-d device tensors (CIARD.md steps 6-8), never read on the host.
        self.tau_adv = self._scalar(1.0)
        self.tau_nat = self._scalar(1.0)
        fixed = opt.weighting == "fixed"
        self.weights = torch.tensor([1.0, 1.0] if fixed else [0.5, 0.5], device=self.device)
        self.initial_losses = torch.ones(2, device=self.device)
        self.has_initial_losses = torch.zeros((), dtype=torch.bool, device=self.device)
        self.eta_tau = self._scalar(opt.eta_tau)
        self.eta_w = self._scalar(opt.eta_w)
        self.push_lambda = self._scalar(0.0)
        self.itt_active = False

    # ---- schedules (CIARD.md "Schedules") ------------------------------------------------------
    def student_lr(self, epoch):
        return ciard_student_lr(epoch, self.epochs, self.base_lr)

    def teacher_lr(self, epoch):
        return ciard_teacher_lr(epoch, self.epochs, self.options.teacher_lr, start_epoch=self.E_itt)

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        decay = step_decay_factor(epoch, self.options.rate_decay_epochs, self.epochs, self.paper_epochs)
        self.eta_tau.fill_(self.options.eta_tau * decay)
        self.eta_w.fill_(self.options.eta_w * decay)
        self.itt_active = bool(self.options.itt and epoch > self.E_itt)
        if self.itt_active:
            self.robust_teacher.requires_grad_(True)
            for group in self.teacher_optimizer.param_groups:
                group["lr"] = self.teacher_lr(epoch)
        else:
            freeze(self.robust_teacher)

    # ---- one step ------------------------------------------------------------------------------
    def training_step(self, x, y):
        S, R, N = self.student, self.robust_teacher, self.clean_teacher
        opt = self.options

        # Step 1: PGD-CE on the student in eval mode, from x + 0.001·N(0, I).
        x_adv = self.attack_student(x, y, loss="ce", default_start="normal")

        # Step 2: forwards. N always frozen; R trainable only while ITT runs.
        s_adv = S(x_adv)
        s_nat = S(x)
        N.eval()
        with torch.no_grad():
            n_nat = N(x)
            n_adv = N(x_adv)
        if self.itt_active:
            R.train()
            r_adv = R(x_adv)
        else:
            R.eval()
            with torch.no_grad():
                r_adv = R(x_adv)

        # Steps 3-5 in one fused pass; the teacher side is detached inside.
        terms = losses.ciard_loss(s_adv, s_nat, r_adv.detach(), n_nat, n_adv, y,
                                  self.tau_adv, self.tau_nat, T_push=opt.T_push, kd_scale=self.kd_scale)

        # Under DDP the state below is computed from global (all-rank) statistics so every rank
        # holds the same τ, w, L⁰, λ; in a single process these are the local values.
        L_adv, L_nat, H_adv, H_nat = self.global_mean(terms.L_adv, terms.L_nat, terms.H_adv, terms.H_nat)
        L_push, push_objective = self.global_masked_mean(terms.L_push, terms.mask_count)

        # Step 6: λ (no gradient), a power of ten matching the push term to the KD terms.
        if opt.push:
            self.push_lambda.copy_(losses.push_weight(L_adv, L_nat, L_push))

        # Step 7: temperatures for the next step.
        losses.update_temperatures(self.tau_adv, self.tau_nat, H_adv, H_nat, self.eta_tau)

        # Step 8: loss weights, used in this step's total.
        if opt.weighting == "adaptive":
            current = torch.stack([L_adv, L_nat])
            self.initial_losses.copy_(torch.where(self.has_initial_losses, self.initial_losses, current))
            self.has_initial_losses.fill_(True)
            losses.update_loss_weights(self.weights, current, self.initial_losses, self.eta_w)

        # Step 9: the student's objective.
        student_loss = self.weights[0] * terms.L_adv + self.weights[1] * terms.L_nat
        if opt.push:
            student_loss = student_loss - self.push_lambda * push_objective

        out = {
            "student_loss": student_loss.detach(),
            "L_adv": L_adv,
            "L_nat": L_nat,
            "L_push": L_push,
            "mask_count": terms.mask_count,
        }
        # Step 10: ITT. R's CE on the same x' joins the backward; its graph is disjoint from the
        # student's (r_adv was detached above), so one backward fills both sets of gradients.
        if self.itt_active:
            teacher_loss = F.cross_entropy(r_adv.float(), y)
            out["teacher_loss"] = teacher_loss.detach()
            out["loss"] = student_loss + teacher_loss
        else:
            out["loss"] = student_loss
        return out

    def after_optimizer_step(self):
        if self.itt_active:
            self.teacher_optimizer.step()
            self.teacher_optimizer.zero_grad(set_to_none=True)

    # ---- logging and checkpoints ---------------------------------------------------------------
    def log_values(self):
        return {"tau_adv": self.tau_adv, "tau_nat": self.tau_nat, "w_adv": self.weights[0],
                "w_nat": self.weights[1], "lambda": self.push_lambda}

    def trainable_modules(self):
        return {"robust_teacher": self.robust_teacher} if self.options.itt else {}

    state_tensors = ("tau_adv", "tau_nat", "weights", "initial_losses", "has_initial_losses", "push_lambda")

    def state_dict(self):
        state = super().state_dict()
        if self.teacher_optimizer is not None:
            state["teacher_optimizer"] = self.teacher_optimizer.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.teacher_optimizer is not None and "teacher_optimizer" in state:
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
