"""IAD-I: Introspective Adversarial Distillation (Zhu et al., "Reliable Adversarial Distillation with
Unreliable Teachers", ICLR 2022, arXiv 2106.04928).

One robust teacher T (the robust-teacher slot), frozen. x' = PGD-10 on the student's CE, uniform
start (the attack of ARD). Before the introspection starts it is ARD with IAD's τ; afterwards each
example trusts the teacher only as far as the teacher is right on x', and the rest of the weight
goes to the student's own clean prediction:

    αᵢ = P_T(x')[yᵢ]^β                       (teacher's probability of the true class on x', no gradient)
    L  = a·τ²·(1/B)Σᵢ Σ_c KL(softmax(T(x)/τ) ‖ softmax(S(x')/τ))
         + a·(1/B)Σᵢ (1 − αᵢ)·Σ_c KL(softmax(S(x)) ‖ softmax(S(x')))
         + (1 − a)·CE(S(x), y)

τ = 1 (`tau`), β = 0.1 (`beta`), a = 1 (`kd_weight`, so the CE term vanishes); before the start
epoch the middle term is absent. Schedule: ARD's (lr 0.1, ×0.1 at 100 and 150 of 200);
introspection after epoch 60 of 200 (`begin`).

Following the public code (ZFancy/IAD, `IAD-I`) where it is more specific than the paper:
  * KL is torch's exact `nn.KLDivLoss` summed over classes and averaged over the batch (not ARD's
    mean over B×C), also before the start epoch.
  * The introspection target softmax(S(x)) is *not* detached: the gradient flows into S(x) too.
  * The code counts epochs from 0 and starts at `epoch >= 60`, i.e. our epoch 61: we start after
    epoch `begin` (scaled with the run length as every breakpoint).
  * The code's extra unused forward S(x') (`basicop`) is skipped; S(x) runs in train mode every step
    (as the code's CE term does) so BN statistics see the same batches.
  * BN mode during the attack: see `ard.py` (eval by default, `attack_train_mode=True` = the code).
  * Learning rate: the code's `adjust_learning_rate(optimizer, epoch, lr)` multiplies its local
    copy of the base lr (0.1) by 0.1 at each epoch of `lr_schedule` (100, 150), so at 150 it sets
    0.01 again: its lr stays 0.01 after epoch 150 instead of dropping to 0.001 (the same bug as
    ARD's code), and it counts epochs from 0 (its epoch 100 is our epoch 101). We run the schedule
    its arguments describe (0.1, 0.01 from epoch 100, 0.001 from epoch 150); `reference_lr=True`
    reproduces the code: 0.1 through epoch 100, 0.01 from epoch 101 to the end (scaled with the
    run length as every breakpoint).
"""
import dataclasses

import torch
import torch.nn.functional as F

from ..options import option
from ..schedules import scaled_epoch
from . import register_method
from .ard import ARD, kl_divergence
from .terms import ADV, NAT, LossSum


def iad_alpha(t_adv, labels, beta=0.1):
    """αᵢ = softmax(T(x'))ᵢ[yᵢ]^β, [B] float32, no gradient."""
    with torch.no_grad():
        p = F.softmax(t_adv.detach().float(), dim=1)
        return p.gather(1, labels[:, None]).squeeze(1).pow(beta)


def iad_loss(s_adv, s_nat, t_nat, t_adv, labels, tau=1.0, beta=0.1, kd_weight=1.0, introspect=True):
    """The IAD-I objective on logits [B, C] (see the module docstring); returns (loss, αᵢ [B]).

    s_adv = S(x'), s_nat = S(x) (both with gradients), t_nat = T(x), t_adv = T(x') (teacher
    side, detached). With introspect=False: the pre-start loss (ARD form with IAD's reduction) and
    α = 1 for every example.
    """
    kd = kl_divergence(t_nat, s_adv, tau, tau).sum(dim=1).mean()
    loss = kd_weight * tau * tau * kd
    if introspect:
        weights = iad_alpha(t_adv, labels, beta)
        # softmax(S(x)) stays in the graph (the public code does not detach it)
        log_p = F.log_softmax(s_nat.float(), dim=1)
        log_q = F.log_softmax(s_adv.float(), dim=1)
        self_kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)
        loss = loss + kd_weight * (self_kl * (1.0 - weights)).mean()
    else:
        weights = torch.ones(labels.shape[0], device=s_adv.device)
    if kd_weight != 1.0:
        loss = loss + (1.0 - kd_weight) * F.cross_entropy(s_nat.float(), labels)
    return loss, weights


@register_method
class IAD(ARD):
    """IAD-I; inherits ARD's attack, teacher handling and schedule."""

    name = "iad"
    paper_epochs = 200
    preset_overrides = {"method_args": {"tau": 1.0, "beta": 0.1, "begin": 60}}
    preset_overrides_by_dataset = {}  # batch 128 on CIFAR-100 too (not ARD's 256)
    milestones = (100, 150)

    @dataclasses.dataclass
    class Options(ARD.Options):
        tau: float = option(1.0, "distillation temperature τ", greater_than=0)
        beta: float = option(0.1, "αᵢ = P_T(x')[yᵢ]^β", at_least=0)
        begin: float = option(60, "introspection after this epoch (of the 200-epoch schedule; scaled)", at_least=0)
        reference_lr: bool = option(False, "the public code's lr (0.01 after epoch 100, never 0.001)")

    def student_lr(self, epoch):
        """ARD's step schedule, or with `reference_lr` the public code's: base_lr through the
        (scaled) epoch 100, then base_lr·0.1 to the end."""
        if not self.options.reference_lr:
            return super().student_lr(epoch)
        first = scaled_epoch(self.milestones[0], self.epochs, self.paper_epochs)
        return self.base_lr * (0.1 if epoch > first else 1.0)

    def introspection_active(self, epoch):
        """True from the epoch after `begin` (scaled to the run length): epoch 61 of 200."""
        begin = self.options.begin
        return epoch > (scaled_epoch(begin, self.epochs, self.paper_epochs) if begin > 0 else 0)

    def training_step(self, x, y):
        opt = self.options
        x_adv = self.attack_student(x, y, loss="ce")
        S, T = self.student, self.teacher
        introspect = self.introspection_active(self.epoch)
        s_adv = S(x_adv)
        # S(x) runs every step (BN statistics as in the code); it needs a graph only when used
        with torch.set_grad_enabled(introspect or opt.kd_weight != 1.0):
            s_nat = S(x)
        with torch.no_grad():
            t_nat = T(x)
            t_adv = T(x_adv) if introspect else None
        loss, weights = iad_loss(s_adv, s_nat, t_nat, t_adv, y, tau=opt.tau, beta=opt.beta, kd_weight=opt.kd_weight,
                                 introspect=introspect)
        total = LossSum().add("iad_loss", loss).log("iad_alpha", weights.mean())
        ctx = self.step_context(x, y, x_adv, {("student", ADV): s_adv, ("student", NAT): s_nat,
                                              ("robust_teacher", NAT): t_nat, ("robust_teacher", ADV): t_adv})
        return self.add_shared_terms(total, ctx).output()   # IGDM when igdm_alpha > 0 (ARD's options)
