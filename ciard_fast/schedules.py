"""Learning-rate and rate-decay schedules of the methods, as plain functions of the epoch.

Epochs are counted from 1. Every schedule is written for the paper's length (300 epochs for CIARD,
RSLAD, MTARD, B-MTARD; 200 for ARD and AdaAD) and scales to any run length E by mapping each
breakpoint b to b·E/E_paper, so a 30-epoch demo keeps the shape of the 300-epoch run.
Continuous breakpoints (the cosine start) scale as real numbers; discrete events (a ×0.1 decay
"at epoch 215") scale to the nearest whole epoch, at least 1.
"""
import math


def scaled_epoch(paper_epoch, epochs, paper_epochs):
    """A discrete milestone of the paper's schedule mapped to a run of `epochs` epochs."""
    return max(1, int(math.floor(paper_epoch * epochs / paper_epochs + 0.5)))


def step_decay_factor(epoch, milestones, epochs, paper_epochs, gamma=0.1):
    """gamma ** (number of scaled milestones reached by `epoch`): e.g. ×0.1 at 215, 260, 285."""
    reached = sum(1 for m in milestones if epoch >= scaled_epoch(m, epochs, paper_epochs))
    return gamma ** reached


def _cosine_exp(progress):
    """0.5·(1 + cos(π·p))·exp(−0.01·p²): CIARD's decay shape for p ∈ [0, 1]."""
    return (0.5 + 0.5 * math.cos(math.pi * progress)) * math.exp(-0.01 * progress ** 2)


def ciard_student_lr(epoch, epochs=300, base_lr=0.1):
    """docs/method.md §4: base_lr for e < E/2, then base_lr·(0.5 + 0.5·cos(π(e−E/2)/(E/2)))·exp(−0.01·((e−E/2)/(E/2))²)."""
    half = epochs / 2.0
    if epoch < half:
        return base_lr
    return base_lr * _cosine_exp((epoch - half) / half)


def ciard_teacher_lr(epoch, epochs=300, base_lr=1e-4, start_epoch=None):
    """docs/method.md §4, ITT schedule: 0 for e ≤ E_itt (E/6 = 50 of 300); then
    base_lr·(0.5 + 0.5·cos(π(e−E_itt)/(E−E_itt)))·exp(−0.01·((e−E_itt)/(E−E_itt))²)."""
    start = epochs / 6.0 if start_epoch is None else float(start_epoch)
    if epoch <= start:
        return 0.0
    span = max(epochs - start, 1e-12)
    return base_lr * _cosine_exp((epoch - start) / span)


def step_lr(epoch, epochs, paper_epochs, milestones, base_lr=0.1, gamma=0.1):
    """Piecewise-constant decay: base_lr × gamma at each scaled milestone (ARD: 100/150 of 200)."""
    return base_lr * step_decay_factor(epoch, milestones, epochs, paper_epochs, gamma)
