"""CIARD: Cyclic Iterative Adversarial Robustness Distillation (Lu et al., ICCV 2025).

The step numbers below are those of the method's description in docs/method.md.
Two teachers: a robust teacher R (re-trained during distillation: Iterative Teacher Training) and
a clean teacher N (frozen). Losses: robust KD + clean KD with adaptive temperatures and weights,
minus a magnitude-matched contrastive push loss that pushes the student's adversarial prediction
away from the clean teacher's wrong answers.

`reference_code: true` runs the step exactly as the public code (github eminentgu/CIARD,
`CIARD.py` / `mtard_loss.py`) runs it, where that differs from our default:

  * R is in train mode for the whole run: before ITT, R(x') uses batch statistics (no gradients);
    every step an unused R(x) under no_grad moves R's BN running statistics.
  * S(x) (and N(x), R(x)) run before the attack, S in train mode, so the eval-mode attack sees BN
    statistics already moved by this batch; S(x') after the attack.
  * The attack starts at x + 0.001·N(0, I) without clamping it to [0, 1].
  * The total is 1·L_adv + 1·L_nat − λ·L_push (`weighting: fixed`, the default of this mode); the
    adaptive weights are still updated and logged. `weighting: adaptive` gives the earlier
    upload's MTARD-weighted total.
  * λ is the public `scale_to_magnitude`: 1e-7 is added only to a loss that is exactly 0 (no
    floor), and λ and the push term are skipped on a step whose mask is empty.
  * η_w and η_τ are multiplied by 0.1 at *every step* of the (scaled) epochs 215/260/285, before
    that step's updates: both underflow to ≈0 inside the first of those epochs and τ, w freeze.
The schedules (student lr, ITT lr, ITT after epoch E_itt) are the same in both modes. The
reference mode keeps every quantity on the device, so its step makes no host sync either (the
public code makes ~11). The README tabulates each difference and why our default differs.
"""
import dataclasses
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import losses
from ..schedules import ciard_student_lr, ciard_teacher_lr, scaled_epoch, step_decay_factor
from . import register_method
from .base import Method, freeze


@register_method
class CIARD(Method):
    """CIARD steps 1-10 (docs/method.md). `options` (config key `method_args`) are the ablation
    switches and `reference_code` (the public code's step, see the module docstring)."""

    name = "ciard"
    paper_epochs = 300
    needs_robust_teacher = True
    needs_clean_teacher = True

    @dataclasses.dataclass
    class Options:
        weighting: Optional[str] = None   # "adaptive" (MTARD rule) or "fixed" (w_adv = w_nat = 1);
        #                                   None: "adaptive", or "fixed" with reference_code
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
        reference_code: bool = False      # True: the public code's step (module docstring)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        opt = self.options
        if not isinstance(opt.reference_code, bool):
            raise TypeError(f"reference_code must be true or false, got {opt.reference_code!r}")
        self.reference_code = opt.reference_code
        self.weighting = opt.weighting if opt.weighting is not None else (
            "fixed" if self.reference_code else "adaptive")
        if self.weighting not in ("adaptive", "fixed"):
            raise ValueError(f"weighting must be 'adaptive' or 'fixed' (or None for the mode's default), "
                             f"got {opt.weighting!r}")
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
        # Method state: all 0-d / 1-d device tensors (steps 6-8), never read on the host. float64
        # for a float64 student (exact checks), else float32.
        self.state_dtype = next((p.dtype for p in student.parameters() if p.dtype == torch.float64), torch.float32)
        self.tau_adv = self._state(1.0)
        self.tau_nat = self._state(1.0)
        # The reference code updates (and logs) the adaptive weights even when its total ignores them.
        tracked = self.weighting == "adaptive" or self.reference_code
        self.weights = self._state([0.5, 0.5] if tracked else [1.0, 1.0])
        self.initial_losses = self._state([1.0, 1.0])
        self.has_initial_losses = torch.zeros((), dtype=torch.bool, device=self.device)
        self.eta_tau = self._state(opt.eta_tau)
        self.eta_w = self._state(opt.eta_w)
        self.push_lambda = self._state(0.0)
        self.itt_active = False
        if self.reference_code:
            # η decays per step, so it is state to checkpoint (the default mode recomputes it per epoch);
            # R stays in train mode for the whole run (parameters still frozen until ITT).
            self.state_tensors = type(self).state_tensors + ("eta_tau", "eta_w")
            self.robust_teacher.train()
            self._eta_decay_epochs = {scaled_epoch(m, self.epochs, self.paper_epochs) for m in opt.rate_decay_epochs}

    # ---- schedules (docs/method.md) -------------------------------------------------------------
    def student_lr(self, epoch):
        return ciard_student_lr(epoch, self.epochs, self.base_lr)

    def teacher_lr(self, epoch):
        return ciard_teacher_lr(epoch, self.epochs, self.options.teacher_lr, start_epoch=self.E_itt)

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        if not self.reference_code:
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
        if self.reference_code:
            self.robust_teacher.train()

    # ---- the training attack (the one place the student is attacked) ---------------------------
    # ---- one step ------------------------------------------------------------------------------
    def training_step(self, x, y):
        if self.reference_code:
            s_adv, s_nat, r_adv, n_nat, n_adv = self._reference_forwards(x, y)
        else:
            s_adv, s_nat, r_adv, n_nat, n_adv = self._forwards(x, y)
        return self._losses_and_updates(s_adv, s_nat, r_adv, n_nat, n_adv, y)

    def _forwards(self, x, y):
        """Steps 1-2 (our default): attack first, then every forward on x and x'."""
        S, R, N = self.student, self.robust_teacher, self.clean_teacher
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
        return s_adv, s_nat, r_adv, n_nat, n_adv

    def _reference_forwards(self, x, y):
        """Steps 1-2 in the public code's order and modes (module docstring)."""
        S, R, N = self.student, self.robust_teacher, self.clean_teacher
        S.train()
        R.train()
        N.eval()
        s_nat = S(x)
        with torch.no_grad():
            n_nat = N(x)
            R(x)  # unused: computed for its effect on R's BN running statistics, as the public code
        x_adv = self.attack_student(x, y, loss="ce", default_start="normal_unclamped")
        s_adv = S(x_adv)
        with torch.no_grad():
            n_adv = N(x_adv)
        with torch.set_grad_enabled(self.itt_active):
            r_adv = R(x_adv)  # train mode (batch statistics) before ITT too
        return s_adv, s_nat, r_adv, n_nat, n_adv

    def _losses_and_updates(self, s_adv, s_nat, r_adv, n_nat, n_adv, y):
        opt = self.options
        reference = self.reference_code
        if reference and self.epoch in self._eta_decay_epochs:
            # the public code's per-step decay inside a milestone epoch (before this step's updates)
            self.eta_tau.mul_(0.1)
            self.eta_w.mul_(0.1)

        # Steps 3-5 in one fused pass; the teacher side is detached inside.
        terms = losses.ciard_loss(s_adv, s_nat, r_adv.detach(), n_nat, n_adv, y,
                                  self.tau_adv, self.tau_nat, T_push=opt.T_push, kd_scale=self.kd_scale)

        # Under DDP the state below is computed from global (all-rank) statistics so every rank
        # holds the same τ, w, L⁰, λ; in a single process these are the local values.
        L_adv, L_nat, H_adv, H_nat = self.global_mean(terms.L_adv, terms.L_nat, terms.H_adv, terms.H_nat)
        L_push, push_objective = self.global_masked_mean(terms.L_push, terms.mask_count)

        # Step 6: λ (no gradient), a power of ten matching the push term to the KD terms.
        if opt.push and reference:
            # scale_to_magnitude, and nothing at all on a step whose mask is empty
            self.push_lambda.copy_(torch.where(terms.mask_count > 0,
                                               losses.push_weight_reference(L_adv, L_nat, L_push), self.push_lambda))
        elif opt.push:
            self.push_lambda.copy_(losses.push_weight(L_adv, L_nat, L_push))

        # Step 7: temperatures for the next step.
        losses.update_temperatures(self.tau_adv, self.tau_nat, H_adv, H_nat, self.eta_tau)

        # Step 8: loss weights, used in this step's total.
        if self.weighting == "adaptive" or reference:
            current = torch.stack([L_adv, L_nat]).to(self.state_dtype)
            self.initial_losses.copy_(torch.where(self.has_initial_losses, self.initial_losses, current))
            self.has_initial_losses.fill_(True)
            losses.update_loss_weights(self.weights, current, self.initial_losses, self.eta_w)

        # Step 9: the student's objective.
        if self.weighting == "adaptive":
            student_loss = self.weights[0] * terms.L_adv + self.weights[1] * terms.L_nat
        else:
            student_loss = terms.L_adv + terms.L_nat
        if opt.push:
            # (reference mode, empty mask: L_push is exactly 0 with a zero gradient, so the
            # term is skipped in effect without a data-dependent branch)
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
            teacher_loss = F.cross_entropy(losses.upcast(r_adv), y)
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

    def _state(self, value):
        """A 0-d (or 1-d, for a list) state tensor in the method's state dtype on its device."""
        return torch.tensor(value, dtype=self.state_dtype, device=self.device)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.teacher_optimizer is not None and "teacher_optimizer" in state:
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
