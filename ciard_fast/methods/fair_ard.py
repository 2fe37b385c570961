"""Fair-ARD (Yue, Wang, Li, Cao, "Revisiting Adversarial Robustness Distillation from the Perspective of
Robust Fairness", NeurIPS 2023, arXiv 2305.18519).

ARD (see `ard.py`) with per-class weights that favour the classes that are hard to make robust.
During each epoch the training attack counts, for every example, the PGD steps at which the
student still classifies it correctly; after the epoch

    κ_c  = mean over the class-c examples of that count        (the class's "robustness degree")
    w_c  = (1 / (κ_c + 1e-5))^β,  β = 2;   w ← w·C / Σ_c w_c;   w ← clip(w, 5/6, 5/2)

and the next epoch minimises ARD's loss with every example's terms multiplied by w_{yᵢ}:

    L = α·τ²·mean_i( w_{yᵢ}·mean_c KL(softmax(T(x)/τ) ‖ softmax(S(x')/τ))_ic )
        + (1 − α)·mean_i( w_{yᵢ}·CE(S(x)ᵢ, yᵢ) )

(τ = 30 `tau`, α = 1 `kd_weight`, β = 2 `beta`; all weights 1 in the first epoch).
lr 0.1, ×0.1 at 100/150 of 200.

Following the public code (Fair-ARD `train_fair_ard_cifar10.py`): a step counts as correct when the
prediction *before* that step's update is right (steps 0..K−1 of PGD), the reduction is ARD's
(mean over classes per example, then over the batch). Differences, on purpose: the code divides
each class's count by N/C (it assumes a balanced training set); we divide by the number of
class-c examples actually seen (a class never seen keeps the mean κ of the others, where the code
would divide by zero); and the code's SGD uses Nesterov momentum, the engine's does not. The counts
are accumulated on the device inside the step (a counting wrapper around the student during PGD),
and the weights are recomputed in `start_epoch`, between epochs.
"""
import dataclasses
from typing import Tuple

import torch
from torch import nn

from ..options import option
from . import register_method
from .ard import ARD, ard_loss
from .terms import ADV, NAT, LossSum


class _CorrectStepCounter(nn.Module):
    """The student, seen by PGD: forwards unchanged, and adds 1 per forward to the count of every
    example it classifies correctly (one forward per PGD step, before the step is taken)."""

    def __init__(self, model, labels):
        super().__init__()
        self.model = model
        self.labels = labels
        self.count = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)

    def forward(self, x):
        logits = self.model(x)
        self.count += (logits.detach().argmax(dim=1) == self.labels).float()
        return logits


def fair_class_weights(kappa, beta=2.0, bounds=(5.0 / 6.0, 5.0 / 2.0)):
    """Per-class weights from the mean robust steps κ [C]: (1/(κ+1e-5))^β, scaled to sum to C,
    clipped to `bounds`. Returns a float32 [C] tensor."""
    weights = (1.0 / (kappa.float() + 1e-5)) ** beta
    weights = weights * (kappa.shape[0] / weights.sum())
    return weights.clamp(bounds[0], bounds[1])


@register_method
class FairARD(ARD):
    name = "fair_ard"
    preset_overrides = {"method_args": {"tau": 30.0, "beta": 2.0}}
    preset_overrides_by_dataset = {}  # batch 128 on CIFAR-100 too (not ARD's 256)

    @dataclasses.dataclass
    class Options(ARD.Options):
        beta: float = option(2.0, "w_c = (1/κ_c)^β", at_least=0)
        weight_bounds: Tuple[float, float] = option((5.0 / 6.0, 5.0 / 2.0), "clip of the normalised class weights",
                                                    greater_than=0)

        def check(self):
            low, high = self.weight_bounds
            if not low <= high:
                raise ValueError(f"weight_bounds must be (low, high) with 0 < low <= high, got {self.weight_bounds!r}")

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        C = self.num_classes
        self.weight_bounds = tuple(float(v) for v in self.options.weight_bounds)
        self.register_state("class_weights", torch.ones(C, device=self.device))
        self.register_state("kappa_sum", torch.zeros(C, device=self.device))    # Σ correct steps, per class, this epoch
        self.register_state("class_count", torch.zeros(C, device=self.device))  # examples seen, per class, this epoch
        # ε as a device tensor keeps this attack out of CUDA-graph capture (attacks/graphs.py):
        # the capture's eager warm-up loops would add their forwards to the counts a second and
        # third time, and a per-step wrapper has a new identity every step.
        self._eps = self._scalar(self.attack.eps)

    def start_epoch(self, epoch):
        """New class weights from the counts of the epoch that just ended (none before epoch 1:
        the weights stay 1), then fresh counts."""
        super().start_epoch(epoch)
        self.update_class_weights()
        self.kappa_sum.zero_()
        self.class_count.zero_()

    @torch.no_grad()
    def update_class_weights(self):
        """w ← fair_class_weights(κ) when any example was counted; no host sync."""
        # under DDP: the counts of all ranks (a mean over ranks has the same ratio as the sum)
        kappa_sum, class_count = self.global_mean(self.kappa_sum, self.class_count)
        seen = class_count > 0
        kappa = kappa_sum / class_count.clamp(min=1e-12)
        # classes not seen this epoch take the mean κ of the seen ones (the weights stay defined)
        mean_seen = (kappa * seen).sum() / seen.sum().clamp(min=1)
        kappa = torch.where(seen, kappa, mean_seen)
        new = fair_class_weights(kappa, self.options.beta, self.weight_bounds)
        self.class_weights.copy_(torch.where(seen.any(), new, self.class_weights))

    def training_step(self, x, y):
        opt = self.options
        counter = _CorrectStepCounter(self.student, y)
        x_adv = self.attack_student(x, y, loss="ce", model=counter, eps=self._eps)
        self.kappa_sum.index_add_(0, y, counter.count)
        self.class_count.index_add_(0, y, torch.ones_like(counter.count))
        s_adv, s_nat = self.student_forwards(x, x_adv)
        with torch.no_grad():
            t_nat = self.teacher(x)
        sample_weights = self.class_weights[y]
        loss = ard_loss(s_adv, s_nat, t_nat, y, tau=opt.tau, kd_weight=opt.kd_weight, sample_weights=sample_weights)
        total = LossSum().add("fair_ard_loss", loss).log("mean_sample_weight", sample_weights.mean())
        ctx = self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("student", NAT): s_nat,
                                              ("robust_teacher", NAT): t_nat})
        return self.add_shared_terms(total, ctx).output()   # IGDM when igdm_alpha > 0 (ARD's options)

    def log_values(self):
        return {"class_weight_min": self.class_weights.min(), "class_weight_max": self.class_weights.max()}
