"""PeerAiD: a peer tutor trained on the student's adversarial examples (Jung, Jang, Song, Lee,
"PeerAiD: Improving Adversarial Distillation from a Specialized Peer Tutor", CVPR 2024,
arXiv 2403.06668; code `jaewonalive/PeerAiD`, `main.py` `train_kd`).

No pretrained teacher. A peer network P (the student's architecture, built fresh, trainable,
with its own SGD) is trained jointly with the student S, on the student's adversarial examples
rather than its own, and the student distils from it:

    p₀   = P(x)                         (peer in eval mode, no gradient)
    x'   = argmax_{‖x'−x‖∞≤ε} Σ_i KL(softmax(p₀_i) ‖ softmax(S(x')_i))   (RSLAD's attack with the
           peer's clean logits as target: 10 × 2/255 from x + 0.001·N(0, I), S in eval mode)
    P'   = P(x'),  S' = S(x'),  S₀ = S(x)      (train mode)
    L_P  = γ₁·CE(P', y) + γ₂·T_r²·KL̄(softmax(S'/T_r) ‖ softmax(P'/T_r))            S' detached (default)
    L_S  = λ₁·CE(S', y) + λ₂·T²·KL̄(softmax(P'/T) ‖ softmax(S'/T))                  P' detached
                        + λ₃·T²·KL̄(softmax(S₀/T) ‖ softmax(S'/T))                  S₀ with its gradient
    one backward of L_P + L_S fills both networks' gradients; both SGDs step (student first).

KL̄ is torch's `nn.KLDivLoss()` with its default reduction, the elementwise mean over B×C (the
per-sample KL divided by C), which the public code uses in all three KL terms: the published
λ and γ were tuned with it, so it is kept (rescaling to a per-sample sum would multiply every KL
weight by C). Defaults: the code's CIFAR-10 command, T = 5, T_r = 1, γ₁ = 1, γ₂ = 0.1, λ₁ = 0,
λ₂ = λ₃ = 1; peer and student SGD with lr 0.1, momentum 0.9, weight decay 2e-4, both ×0.1 at
epochs 215, 260, 285 of 300 (the code's 0-based milestones 214/259/284), batch 128. The
published runs add SWA of the student from the first milestone (epoch 215 of 300: the code's
`swa_s_start = lr_decay_epochs_student[0]` = 214, 0-based), which the generated presets set
through the engine's `swa_start` (the SWA callback, `engine/swa.py`).

Where we differ from the public code, or choose between paper and code:
  * The peer term trains the student in the code: its target softmax(S(x')/T_r) is not
    detached, so L_P also sends a gradient into S, while L_S explicitly detaches the peer. That
    asymmetry (and a second, separate student forward kept for L_P) reads as a slip, and the
    paper describes each network minimising its own objective; we detach S' in L_P by default
    (`peer_term_trains_student=False`). `peer_term_trains_student=True` reproduces the code:
    then the first S(x') keeps its graph. Either way the student runs the code's three train-mode
    forwards (S(x') for the peer's target, S(x') for L_S, S(x)), so BatchNorm's running
    statistics follow the code exactly; the option changes only the gradient.
  * The self term's target S(x) is not detached (a TRADES-style consistency term, both sides get
    a gradient), as in the code.
  * Model selection: the code picks its best student and best SWA student by PGD-10 accuracy on
    the test set. We select `best.pt` on the held-out validation split (with SWA: among the
    averaged model's validations), never on the test set.
  * The peer's attack target comes from the peer in eval mode (running statistics) while the
    peer trains in train mode, as in the code. The attack's start x + 0.001·N(0, I) is not
    clamped to [0, 1] (the code's; "normal_unclamped").
  * The code sets no seed and uses cudnn.benchmark; runs here are seeded and resumable exactly.

Per dataset (`preset_overrides_by_dataset`, from the published commands and configs): CIFAR-100
γ₂ = 1; Tiny-ImageNet (ResNet-18) T = 1, γ₂ = 100, λ = (0.035, 35, 20), 200 epochs, ×0.1 at 100
and 150, SWA from epoch 100. (The code's Tiny-ImageNet WideResNet-34-10 run: 100 epochs, ×0.1 at
50 and 80, SWA from 50: `epochs=100, lr_milestones=(50, 80), lr_schedule_epochs=100,
swa_start=50`.)
"""
import dataclasses
from typing import Tuple

import torch
import torch.nn.functional as F

from ..options import MethodOptions, option
from ..schedules import step_lr
from . import register_method
from .base import Method, Network, OptimizerSpec, module_mode
from .terms import LossSum

# The code's CIFAR-10 schedule: ×0.1 from epochs 215, 260, 285 (1-based) of 300.
MILESTONES = (215, 260, 285)


def mean_kl(target_logits, input_logits, T=1.0):
    """torch's `nn.KLDivLoss()(log_softmax(input/T), softmax(target/T))` with its default
    reduction: the elementwise mean over all B×C entries of p·(log p − log q), p = softmax(target/T),
    q = softmax(input/T); logits [B, C], computed in float32. Neither side is detached: a
    gradient flows into both (the caller detaches what must not train)."""
    log_p = F.log_softmax(target_logits.float() / T, dim=1)
    log_q = F.log_softmax(input_logits.float() / T, dim=1)
    # reduction "none" then the mean: torch's "mean" warns that it will become "batchmean"
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).mean()


@register_method
class PeerAiD(Method):
    """PeerAiD (module docstring): the student S and a peer P built fresh, trained together."""

    name = "peeraid"
    paper_epochs = 300
    attack_start = "normal_unclamped"  # x + 0.001·N(0, I), unclamped: the code's LinfPeerAttack
    networks = (Network.fresh("peer"),)  # the student's architecture (every published run), trained
    preset_overrides = {"weight_decay": 2e-4, "batch_size": 128, "swa_start": MILESTONES[0] / 300,
                        "method_args": {"temperature": 5.0, "peer_temperature": 1.0, "gamma_ce": 1.0,
                                        "gamma_kl": 0.1, "lambda_ce": 0.0, "lambda_peer": 1.0, "lambda_self": 1.0}}
    preset_overrides_by_dataset = {
        "cifar100": {"method_args": {"gamma_kl": 1.0}},
        "tinyimagenet": {"epochs": 200, "swa_start": 100 / 200,
                         "method_args": {"temperature": 1.0, "gamma_kl": 100.0, "lambda_ce": 0.035,
                                         "lambda_peer": 35.0, "lambda_self": 20.0, "lr_milestones": (100, 150),
                                         "lr_schedule_epochs": 200}},
    }

    @dataclasses.dataclass
    class Options(MethodOptions):
        temperature: float = option(5.0, "T of the student's two KD terms (×T²)", greater_than=0)
        peer_temperature: float = option(1.0, "T_r of the peer's KD term (×T_r²)", greater_than=0)
        lambda_ce: float = option(0.0, "λ₁: weight of the student's CE on x'", at_least=0)
        lambda_peer: float = option(1.0, "λ₂: weight of KL(peer(x') ‖ S(x')) in the student's loss", at_least=0)
        lambda_self: float = option(1.0, "λ₃: weight of KL(S(x) ‖ S(x')) in the student's loss", at_least=0)
        gamma_ce: float = option(1.0, "γ₁: weight of the peer's CE on x'", at_least=0)
        gamma_kl: float = option(0.1, "γ₂: weight of KL(S(x') ‖ peer(x')) in the peer's loss (CIFAR-10: 0.1)",
                                 at_least=0)
        peer_term_trains_student: bool = option(False, "true: the peer's KL term also trains the student, as "
                                                       "the public code does (its S(x') target is not detached)")
        peer_lr: float = option(0.1, "the peer's SGD learning rate (×0.1 at the milestones)", greater_than=0)
        peer_momentum: float = option(0.9, "the peer's SGD momentum", at_least=0, less_than=1)
        peer_weight_decay: float = option(2e-4, "the peer's SGD weight decay", at_least=0)
        lr_milestones: Tuple[int, ...] = option(MILESTONES, "epochs of the ×0.1 steps of both learning rates, "
                                                            "of lr_schedule_epochs (scaled to the run)", at_least=1)
        lr_schedule_epochs: int = option(300, "the run length lr_milestones are written for", at_least=1)

        def check(self):
            if any(m > self.lr_schedule_epochs for m in self.lr_milestones):
                raise ValueError(f"lr_milestones {tuple(self.lr_milestones)} must lie within lr_schedule_epochs="
                                 f"{self.lr_schedule_epochs}")

    def _decayed(self, epoch, base_lr):
        opt = self.options
        return step_lr(epoch, self.epochs, opt.lr_schedule_epochs, tuple(opt.lr_milestones), base_lr)

    def student_lr(self, epoch):
        return self._decayed(epoch, self.base_lr)

    def peer_lr(self, epoch):
        return self._decayed(epoch, self.options.peer_lr)

    def configure_optimizers(self):
        opt = self.options
        return (OptimizerSpec("peer_optimizer", roles=("peer",), lr=self.peer_lr, momentum=opt.peer_momentum,
                              weight_decay=opt.peer_weight_decay),)

    def training_step(self, x, y):
        S, P, opt = self.student, self.peer, self.options
        with torch.no_grad(), module_mode(P, False):
            p_nat = P(x)  # the attack's target: the peer's clean logits, eval mode (running BN statistics)
        x_adv = self.attack_student(x, y, loss="kl", target_logits=p_nat)
        P.train()
        S.train()
        p_adv = P(x_adv)
        # The peer's target S(x'): its own forward as in the code (BN sees x' here and again below).
        with torch.set_grad_enabled(opt.peer_term_trains_student and torch.is_grad_enabled()):
            s_target = S(x_adv)
        s_adv = S(x_adv)
        s_nat = S(x)
        Tr, T = opt.peer_temperature, opt.temperature
        total = LossSum()
        # the peer's objective L_P
        total.add("peer_ce", F.cross_entropy(p_adv.float(), y), weight=opt.gamma_ce)
        total.add("peer_kl", mean_kl(s_target, p_adv, Tr), weight=opt.gamma_kl * Tr * Tr)
        # the student's objective L_S
        total.add("ce", F.cross_entropy(s_adv.float(), y), weight=opt.lambda_ce)
        total.add("kd_peer", mean_kl(p_adv.detach(), s_adv, T), weight=opt.lambda_peer * T * T)
        total.add("kd_self", mean_kl(s_nat, s_adv, T), weight=opt.lambda_self * T * T)
        return total.output()
