"""B-MTARD: Balanced Multi-Teacher Adversarial Robustness Distillation (Zhao, Wang, Wang, Chen, Liu, Cao,
"Mitigating Accuracy-Robustness Trade-off via Balanced Multi-Teacher Adversarial Distillation",
IEEE TPAMI 2024, arXiv 2306.16170).

CIARD without the push loss and without iterative teacher training (docs/baselines.md): two frozen
teachers in eval mode, the adaptive temperatures and loss weights of docs/method.md, steps 7-8:

    x'    = PGD-10 on CE(S(x'), y), step 2/255, from x + 0.001·N(0, I), student in eval mode
    L_adv = kd_scale·mean_{B×C} kl(softmax(R(x')/τ_adv), log_softmax(S(x')))
    L_nat = kd_scale·mean_{B×C} kl(softmax(N(x)/τ_nat),  log_softmax(S(x)))
    H_a   = mean p_a·log(p_a + 1e-5), p_a = softmax(R(x')/τ_adv);  H_n likewise for N(x)/τ_nat
    τ_adv ← clip(τ_adv − η_τ·sign(H_a/H_n − 1), 1, 10)
    τ_nat ← clip(τ_nat − η_τ·sign(H_n/H_a − 1), 1, 10)     (the new τ take effect from the next step)
    rᵢ = Lᵢ/L⁰ᵢ (L⁰ from the first step);  wᵢ ← wᵢ − η_w·(wᵢ − rᵢ/(r_adv + r_nat));
    w ← max(w, 0) / Σ max(w, 0)
    L     = w_adv·L_adv + w_nat·L_nat

τ = 1, w = 0.5/0.5 at start, η_τ = 0.001, η_w = 0.025; lr, η_τ and η_w ×0.1 at 215, 260, 285 of
300 epochs; kd_scale = C/10. The temperature divides the teacher logits only (docs/method.md, step 3).
This is also what the public B-MTARD training script computes (its `kl_loss`, `entropy_value` and
weight rule, R on the student's x', N on x); it applies the ×0.1 events after epoch 215 has run
(from 216), here they take effect from epoch 215 as `step_lr` does for every method.
All state (τ, w, L⁰, η) lives on the device: a step makes no host sync.
"""
import dataclasses

import torch

from .. import losses
from ..options import option
from . import register_method
from .mtard import MTARD
from .terms import LossSum


@register_method
class BMTARD(MTARD):
    name = "bmtard"
    preset_overrides = {"method_args": {"eta_tau": 0.001, "eta_w": 0.025}}

    @dataclasses.dataclass
    class Options(MTARD.Options):
        eta_tau: float = option(0.001, "temperature learning rate η_τ", at_least=0)

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        self.register_state("tau_adv", self._scalar(1.0))
        self.register_state("tau_nat", self._scalar(1.0))
        self.register_state("eta_tau", self._scalar(self.options.eta_tau))

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        self.eta_tau.fill_(self.options.eta_tau * self.rate_decay(epoch))

    def training_step(self, x, y):
        s_adv, s_nat, r_adv, n_nat = self.forwards(x, y)
        L_adv = self.kd_scale * losses.kd_kl(s_adv, r_adv, teacher_T=self.tau_adv)
        L_nat = self.kd_scale * losses.kd_kl(s_nat, n_nat, teacher_T=self.tau_nat)

        # Under DDP τ and w follow global (all-rank) statistics so every rank holds the same state.
        H_adv, H_nat, G_adv, G_nat = self.global_mean(losses.neg_entropy(r_adv, self.tau_adv),
                                                      losses.neg_entropy(n_nat, self.tau_nat), L_adv, L_nat)

        # Step 7: entropies at the current temperatures; the new τ is used from the next step.
        losses.update_temperatures(self.tau_adv, self.tau_nat, H_adv, H_nat, self.eta_tau)

        # Step 8: weights, used in this step's total.
        current = torch.stack([G_adv, G_nat])
        self.initial_losses.copy_(torch.where(self.has_initial_losses, self.initial_losses, current))
        self.has_initial_losses.fill_(True)
        losses.update_loss_weights(self.weights, current, self.initial_losses, self.eta_w)

        total = LossSum().add("L_adv", L_adv, weight=self.weights[0], logged=G_adv)
        total.add("L_nat", L_nat, weight=self.weights[1], logged=G_nat)
        return total.log("H_adv", H_adv).log("H_nat", H_nat).output()

    def log_values(self):
        return {"tau_adv": self.tau_adv, "tau_nat": self.tau_nat, **super().log_values()}
