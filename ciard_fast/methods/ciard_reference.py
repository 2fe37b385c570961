"""CIARD as the public code runs it: the variant `reference_code: true` selects.

`method: ciard, reference_code: true` builds :class:`CIARDReference` (a variant registered with
`register_variant`, same name, options and presets as CIARD). It runs the step exactly as the
public code (github eminentgu/CIARD, `CIARD.py` / `mtard_loss.py`) runs it, where that differs
from our default:

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
  * η_w and η_τ are multiplied by 0.1 at *every step* of the (scaled) epochs 215/260/285, after
    that step's temperature and weight updates (the public loop decays them after computing the
    step's τ and w, before its backward): both underflow to ≈0 inside the first of those epochs
    and τ, w freeze. So η decays per step and is checkpointed state here.
The schedules (student lr, ITT lr, ITT after epoch E_itt) are the same in both modes. The
reference mode keeps every quantity on the device, so its step makes no host sync either (the
public code makes ~11). docs/method.md tabulates each difference and why our default differs.
"""
import torch

from .. import losses
from ..schedules import scaled_epoch
from . import register_variant
from .ciard import CIARD
from .terms import ADV, NAT, StepContext


@register_variant("reference_code")
class CIARDReference(CIARD):
    """CIARD's step as the public code runs it (see the module docstring)."""

    default_weighting = "fixed"

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        if not self.options.reference_code:
            raise ValueError("CIARDReference is the reference_code: true variant of CIARD; build CIARD instead")
        # η decays per step, so it is state to checkpoint (the default mode recomputes it per epoch)
        self.register_state("eta_tau", self.eta_tau)
        self.register_state("eta_w", self.eta_w)
        # R stays in train mode for the whole run (its parameters still frozen until ITT)
        self.robust_teacher.train()
        self._eta_decay_epochs = {scaled_epoch(m, self.epochs, self.paper_epochs)
                                  for m in self.options.rate_decay_epochs}

    @property
    def tracks_weights(self):
        # the public code updates (and logs) the adaptive weights even when its total ignores them
        return True

    def decay_rates(self, epoch):
        """No per-epoch decay: the public code decays η at every step of a milestone epoch."""

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        self.robust_teacher.train()

    def forwards(self, x, y) -> StepContext:
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
        return self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("student", NAT): s_nat,
                                               ("robust_teacher", ADV): r_adv, ("clean_teacher", NAT): n_nat,
                                               ("clean_teacher", ADV): n_adv})

    def next_push_lambda(self, L_adv, L_nat, L_push, mask_count):
        # scale_to_magnitude, and nothing at all on a step whose mask is empty
        return torch.where(mask_count > 0, losses.push_weight_reference(L_adv, L_nat, L_push), self.push_lambda)

    def training_step(self, x, y):
        out = super().training_step(x, y)
        if self.epoch in self._eta_decay_epochs:
            # the public order: this step's τ and w used the rates before the decay
            self.eta_tau.mul_(0.1)
            self.eta_w.mul_(0.1)
        return out
