"""CIARD: Cyclic Iterative Adversarial Robustness Distillation (Lu et al., ICCV 2025).

The step numbers below are those of the method's description in docs/method.md.
Two teachers: a robust teacher R (re-trained during distillation: Iterative Teacher Training) and
a clean teacher N (frozen). Losses: robust KD + clean KD with adaptive temperatures and weights,
minus a magnitude-matched contrastive push loss that pushes the student's adversarial prediction
away from the clean teacher's wrong answers.

CIARD is B-MTARD (its adaptive τ and w, `bmtard.py`) plus the push loss and ITT, so its options
extend B-MTARD's. `reference_code: true` runs the step of the public code instead: a registered
variant (`ciard_reference.py`, `CIARDReference`), so the class below has no branch for it.
"""
import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F

from .. import losses
from ..options import option
from ..schedules import ciard_student_lr, ciard_teacher_lr, step_decay_factor
from . import register_method
from .base import Method, Network, OptimizerSpec, freeze
from .bmtard import BMTARD
from .terms import ADV, NAT, LossSum, StepContext


@register_method
class CIARD(Method):
    """CIARD steps 1-10 (docs/method.md). `options` (config key `method_args`) are the ablation
    switches and `reference_code` (the public code's step, see `ciard_reference.py`)."""

    name = "ciard"
    paper_epochs = 300
    progress_hidden = ("mask_count",)  # in the history, not on the progress line
    default_weighting = "adaptive"     # what `weighting: None` means

    @dataclasses.dataclass
    class Options(BMTARD.Options):
        weighting: Optional[str] = option(None, "adaptive (the MTARD rule) or fixed (w_adv = w_nat = 1); None: "
                                                "adaptive, or fixed with reference_code",
                                          choices=(None, "adaptive", "fixed"))
        push: bool = option(True, "the contrastive push loss on/off")
        itt: bool = option(True, "iterative teacher training of R on/off")
        T_push: float = option(5.0, "temperature of the student in the push loss", greater_than=0)
        E_itt: Optional[float] = option(None, "ITT starts after this epoch; None: E/6 (50 of 300)", at_least=0)
        itt_lr: float = option(1e-4, "peak ITT learning rate of R", greater_than=0)
        itt_momentum: float = option(0.1, "ITT SGD momentum", at_least=0, less_than=1)
        itt_weight_decay: float = option(2e-4, "ITT SGD weight decay", at_least=0)
        reference_code: bool = option(False, "the public code's step (ciard_reference.py)")

        # Before: teacher_lr & co. A flat --teacher_lr is the config field (the lr of teachers
        # trained first), so the option of the same name could only be reached as method_args.
        renamed = {"teacher_lr": "itt_lr", "teacher_momentum": "itt_momentum",
                   "teacher_weight_decay": "itt_weight_decay"}

        def check(self):
            super().check()
            default = {f.name: f.default for f in dataclasses.fields(self)}["w_nat"]
            if self.weighting == "fixed" and not self.reference_code and self.w_nat != default:
                raise ValueError(f"w_nat={self.w_nat!r} sets the adaptive weights' start, but weighting='fixed' "
                                 "uses none (outside reference_code); drop w_nat or use weighting='adaptive'")

    @classmethod
    def declare_networks(cls, options):
        return (Network.teacher("robust_teacher", "robust", trainable=options.itt),
                Network.teacher("clean_teacher", "clean"))

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        opt = self.options
        self.weighting = opt.weighting if opt.weighting is not None else self.default_weighting
        self.kd_scale = self.num_classes / 10.0 if opt.kd_scale is None else float(opt.kd_scale)
        self.E_itt = self.epochs / 6.0 if opt.E_itt is None else float(opt.E_itt)
        freeze(self.robust_teacher)  # trainable with ITT, but only from epoch E_itt on (start_epoch)
        # Method state: all 0-d / 1-d device tensors (steps 6-8), never read on the host. float64
        # for a float64 student (exact checks), else float32.
        self.state_dtype = next((p.dtype for p in student.parameters() if p.dtype == torch.float64), torch.float32)
        self.register_state("tau_adv", self._state(1.0))
        self.register_state("tau_nat", self._state(1.0))
        initial = [1.0 - opt.w_nat, opt.w_nat] if self.tracks_weights else [1.0, 1.0]
        self.register_state("weights", self._state(initial))
        self.register_state("initial_losses", self._state([1.0, 1.0]))
        self.register_state("has_initial_losses", torch.zeros((), dtype=torch.bool, device=self.device))
        self.register_state("push_lambda", self._state(0.0))
        # η_τ, η_w follow the epoch (recomputed in start_epoch), so they are not checkpointed here.
        self.eta_tau = self._state(opt.eta_tau)
        self.eta_w = self._state(opt.eta_w)
        self.itt_active = False

    @property
    def tracks_weights(self) -> bool:
        """Whether the adaptive weights are updated (and logged): with adaptive weighting."""
        return self.weighting == "adaptive"

    # ---- schedules (docs/method.md) -------------------------------------------------------------
    def student_lr(self, epoch):
        return ciard_student_lr(epoch, self.epochs, self.base_lr)

    def teacher_lr(self, epoch):
        return ciard_teacher_lr(epoch, self.epochs, self.options.itt_lr, start_epoch=self.E_itt)

    def configure_optimizers(self):
        """Step 10's optimiser: plain SGD on R at `teacher_lr(epoch)` (0 until ITT starts)."""
        if not self.options.itt:
            return ()
        opt = self.options
        return (OptimizerSpec("teacher_optimizer", roles=("robust_teacher",), lr=self.teacher_lr,
                              momentum=opt.itt_momentum, weight_decay=opt.itt_weight_decay, kind="sgd"),)

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        self.decay_rates(epoch)
        self.itt_active = bool(self.options.itt and epoch > self.E_itt)
        if self.itt_active:
            self.robust_teacher.requires_grad_(True)
        else:
            freeze(self.robust_teacher)

    def decay_rates(self, epoch):
        """η_τ, η_w ×0.1 at each (scaled) `rate_decay_epochs` event reached by `epoch`."""
        decay = step_decay_factor(epoch, self.options.rate_decay_epochs, self.epochs, self.paper_epochs)
        self.eta_tau.fill_(self.options.eta_tau * decay)
        self.eta_w.fill_(self.options.eta_w * decay)

    # ---- one step ------------------------------------------------------------------------------
    def forwards(self, x, y) -> StepContext:
        """Steps 1-2: attack first, then every forward on x and x'."""
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
        return self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("student", NAT): s_nat,
                                               ("robust_teacher", ADV): r_adv, ("clean_teacher", NAT): n_nat,
                                               ("clean_teacher", ADV): n_adv})

    def next_push_lambda(self, L_adv, L_nat, L_push, mask_count):
        """Step 6: λ (no gradient), a power of ten matching the push term to the KD terms."""
        return losses.push_weight(L_adv, L_nat, L_push)

    def training_step(self, x, y):
        opt = self.options
        ctx = self.forwards(x, y)
        s_adv, r_adv = ctx["student", ADV], ctx["robust_teacher", ADV]

        # Steps 3-5 in one fused pass; the teacher side is detached inside.
        terms = losses.ciard_loss(s_adv, ctx["student", NAT], r_adv.detach(), ctx["clean_teacher", NAT],
                                  ctx["clean_teacher", ADV], ctx.y, self.tau_adv, self.tau_nat, T_push=opt.T_push,
                                  kd_scale=self.kd_scale)

        # Under DDP the state below is computed from global (all-rank) statistics so every rank
        # holds the same τ, w, L⁰, λ; in a single process these are the local values.
        L_adv, L_nat, H_adv, H_nat = self.global_mean(terms.L_adv, terms.L_nat, terms.H_adv, terms.H_nat)
        L_push, push_objective = self.global_masked_mean(terms.L_push, terms.mask_count)

        if opt.push:
            self.push_lambda.copy_(self.next_push_lambda(L_adv, L_nat, L_push, terms.mask_count))

        # Step 7: temperatures for the next step.
        losses.update_temperatures(self.tau_adv, self.tau_nat, H_adv, H_nat, self.eta_tau)

        # Step 8: loss weights, used in this step's total.
        if self.tracks_weights:
            current = torch.stack([L_adv, L_nat]).to(self.state_dtype)
            self.initial_losses.copy_(torch.where(self.has_initial_losses, self.initial_losses, current))
            self.has_initial_losses.fill_(True)
            losses.update_loss_weights(self.weights, current, self.initial_losses, self.eta_w)

        # Step 9: the student's objective, w_adv·L_adv + w_nat·L_nat − λ·L_push (w = 1 when fixed).
        adaptive = self.weighting == "adaptive"
        total = LossSum()
        total.add("L_adv", terms.L_adv, weight=self.weights[0] if adaptive else None, logged=L_adv)
        total.add("L_nat", terms.L_nat, weight=self.weights[1] if adaptive else None, logged=L_nat)
        if opt.push:
            # (an empty mask gives L_push = 0 with a zero gradient: no data-dependent branch)
            total.subtract("L_push", push_objective, weight=self.push_lambda, logged=L_push)
        else:
            total.log("L_push", L_push)
        total.log("mask_count", terms.mask_count)
        total.log("student_loss", total.subtotal())
        # Step 10: ITT. R's CE on the same x' joins the backward; its graph is disjoint from the
        # student's (r_adv was detached above), so one backward fills both sets of gradients and
        # the engine steps the teacher's optimiser after the student's.
        if self.itt_active:
            total.add("teacher_loss", F.cross_entropy(losses.upcast(r_adv), ctx.y))
        return total.output()

    # ---- logging -------------------------------------------------------------------------------
    def log_values(self):
        return {"tau_adv": self.tau_adv, "tau_nat": self.tau_nat, "w_adv": self.weights[0],
                "w_nat": self.weights[1], "lambda": self.push_lambda}

    def _state(self, value):
        """A 0-d (or 1-d, for a list) state tensor in the method's state dtype on its device."""
        return torch.tensor(value, dtype=self.state_dtype, device=self.device)
