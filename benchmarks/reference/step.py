"""One CIARD training step as the public reference code runs it (the baseline of bench_train).

Same mathematics as ``ciard_fast.methods.ciard.CIARD`` (docs/method.md, steps 1-10, checked by
tests/test_bench_train.py); the *costs* are the reference code's:

- fp32, NCHW, eager; every loss piece a separate op (``reference.losses``);
- PGD-CE on the student as a plain loop (``reference.attack``), noise drawn on the host;
- five model forwards besides the attack: S(x'), S(x), N(x), N(x'), R(x') — and R(x), which the
  public code computes and never uses;
- ~11 host synchronisations per step: ``.item()`` of both sign(H ratio) for τ, four ``.item()``
  of the KD losses for the loss weights (the public code reads each value twice), ``nonzero`` for
  the push mask, ``isnan().any()`` on the push terms, three ``.item()`` for λ;
- τ, w, L⁰ and λ live in Python floats;
- plain (for-loop, not foreach) SGD for the student; ITT as a second backward and the teacher's
  own SGD after the student's step.

Where the public code and docs/method.md differ, this follows docs/method.md (so that both sides compute the
same thing), keeping the reference's cost wherever the difference allows:
- the attack comes first and the forwards after it (the public code runs S(x), N(x), R(x) before
  the attack, which lets S(x) update BN statistics that the eval-mode attack then uses);
- before ITT, R runs in eval mode without a graph (the public code keeps R in train mode
  throughout); the unused R(x) runs in R's current mode, without a graph, as in the public code;
- the η_w/η_τ decay and the learning-rate schedules are the caller's business (``set_lrs``).
"""
import torch
import torch.nn.functional as F

from .attack import pgd_ce
from .losses import kl_elementwise, neg_entropy_elementwise, push_terms, push_weight


class ReferenceCIARD:
    """The reference step for student S, robust teacher R (re-trained by ITT) and clean teacher N.

    Args:
        student, robust_teacher, clean_teacher: nn.Modules on the same device, fp32, NCHW.
        lr, momentum, weight_decay: the student's SGD (docs/method.md §4: 0.1, 0.9, 2e-4).
        teacher_lr, teacher_momentum, teacher_weight_decay: R's SGD for ITT (lr of the current
            epoch; 0.1 momentum, 2e-4 weight decay).
        eps, alpha, steps: the training attack (8/255, 2/255, 10).
        T_push: the student's temperature in the push loss (5).
        eta_tau, eta_w: rates of the temperature and loss-weight updates (0.001, 0.025).
        kd_scale: factor on every KD term (C/10 by the MTARD convention; 1 on CIFAR-10).
        itt_active: whether this step trains R (epoch > E_itt).
    """

    def __init__(self, student, robust_teacher, clean_teacher, *, lr=0.1, momentum=0.9, weight_decay=2e-4,
                 teacher_lr=0.0, teacher_momentum=0.1, teacher_weight_decay=2e-4, eps=8 / 255, alpha=2 / 255,
                 steps=10, T_push=5.0, eta_tau=0.001, eta_w=0.025, kd_scale=1.0, itt_active=False):
        self.student, self.robust_teacher, self.clean_teacher = student, robust_teacher, clean_teacher
        self.optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=weight_decay, foreach=False)
        self.teacher_optimizer = torch.optim.SGD(robust_teacher.parameters(), lr=teacher_lr,
                                                 momentum=teacher_momentum, weight_decay=teacher_weight_decay,
                                                 foreach=False)
        self.eps, self.alpha, self.steps, self.T_push = eps, alpha, steps, T_push
        self.eta_tau, self.eta_w, self.kd_scale = eta_tau, eta_w, kd_scale
        self.itt_active = bool(itt_active)
        # Method state in Python floats, as the public code keeps it.
        self.temp_adv = self.temp_nat = 1.0
        self.temp_min, self.temp_max = 1.0, 10.0
        self.weight = {"adv_loss": 0.5, "nat_loss": 0.5}
        self.init_loss_adv = self.init_loss_nat = None
        self.push_lambda = 0.0
        clean_teacher.eval()

    def set_lrs(self, lr=None, teacher_lr=None):
        """Set the learning rates of the current epoch (the public code does it every step)."""
        for optimizer, value in ((self.optimizer, lr), (self.teacher_optimizer, teacher_lr)):
            if value is not None:
                for group in optimizer.param_groups:
                    group["lr"] = value

    def step(self, x, y):
        """One training step on a device batch; returns the loss values (floats)."""
        out = self.forward_losses(x, y)
        self.update(out)
        return {k: float(v) for k, v in out.items() if k in ("L_adv", "L_nat", "L_push")}

    # ---- the forward half: attack, forwards, losses, state updates (with the host syncs) --------
    def forward_losses(self, x, y):
        S, R, N = self.student, self.robust_teacher, self.clean_teacher
        self.optimizer.zero_grad()
        self.teacher_optimizer.zero_grad()

        # Step 1: the attack.
        x_adv = pgd_ce(S, x, y, self.eps, self.alpha, self.steps)

        # Step 2: the forwards, the unused R(x) included.
        S.train()
        s_adv = S(x_adv)
        s_nat = S(x)
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
        with torch.no_grad():
            R(x)  # computed and discarded, as in the public code

        # Steps 3, 4: KD losses.
        l_adv = torch.mean(kl_elementwise(F.log_softmax(s_adv, dim=1),
                                          F.softmax(r_adv.detach() / self.temp_adv, dim=1))) * self.kd_scale
        l_nat = torch.mean(kl_elementwise(F.log_softmax(s_nat, dim=1),
                                          F.softmax(n_nat.detach() / self.temp_nat, dim=1))) * self.kd_scale

        # Step 7: temperatures for the next step (syncs 1-2).
        h_adv = torch.mean(neg_entropy_elementwise(F.softmax(r_adv.detach() / self.temp_adv, dim=1)))
        h_nat = torch.mean(neg_entropy_elementwise(F.softmax(n_nat.detach() / self.temp_nat, dim=1)))
        temp_adv = self.temp_adv - self.eta_tau * torch.sign(h_adv.detach() / h_nat.detach() - 1).item()
        temp_nat = self.temp_nat - self.eta_tau * torch.sign(h_nat.detach() / h_adv.detach() - 1).item()
        self.temp_adv = max(min(self.temp_max, temp_adv), self.temp_min)
        self.temp_nat = max(min(self.temp_max, temp_nat), self.temp_min)

        # Step 8: loss weights, used in this step's total (syncs 3-6; two more on the first step).
        if self.init_loss_nat is None:
            self.init_loss_nat = l_nat.item()
        if self.init_loss_adv is None:
            self.init_loss_adv = l_adv.item()
        self.mean_loss = (l_adv.item() + l_nat.item()) / len(self.weight)  # logged by the public code
        lhat_adv = l_adv.item() / self.init_loss_adv
        lhat_nat = l_nat.item() / self.init_loss_nat
        lhat_avg = (lhat_adv + lhat_nat) / len(self.weight)
        inv_rate_adv, inv_rate_nat = lhat_adv / lhat_avg, lhat_nat / lhat_avg
        w = self.weight
        w["nat_loss"] = w["nat_loss"] - self.eta_w * (w["nat_loss"] - inv_rate_nat / (inv_rate_adv + inv_rate_nat))
        w["adv_loss"] = w["adv_loss"] - self.eta_w * (w["adv_loss"] - inv_rate_adv / (inv_rate_adv + inv_rate_nat))
        w["adv_loss"], w["nat_loss"] = max(w["adv_loss"], 0.0), max(w["nat_loss"], 0.0)
        coef = 1.0 / (w["adv_loss"] + w["nat_loss"])
        w["adv_loss"] *= coef
        w["nat_loss"] *= coef
        total = w["adv_loss"] * l_adv + w["nat_loss"] * l_nat

        # Steps 5, 6, 9: push loss on the clean teacher's mistakes, λ on the host (syncs 7-11).
        terms = push_terms(n_adv, s_adv, y, self.T_push)
        if torch.isnan(terms).any() or terms.numel() == 0:
            l_push = torch.tensor(0.0)
        else:
            l_push = torch.mean(terms) * self.kd_scale
            self.push_lambda = push_weight(float(l_adv.item()), float(l_nat.item()), float(l_push.item()))
            total = total - self.push_lambda * l_push

        out = {"loss": total, "L_adv": l_adv.detach(), "L_nat": l_nat.detach(), "L_push": l_push.detach()}
        if self.itt_active:
            out["teacher_loss"] = F.cross_entropy(r_adv, y)  # step 10, backpropagated after the student's step
        return out

    # ---- the backward half: student update, then ITT ------------------------------------------------
    def update(self, out):
        self.student.train()
        out["loss"].backward()
        self.optimizer.step()
        if self.itt_active:
            out["teacher_loss"].backward()
            self.teacher_optimizer.step()
