"""Fused ops and their dispatch (installed as ``ciard_fast.kernels``).

One dispatch function per op. Callers (attacks, losses) never choose an implementation: on CUDA
tensors with Triton importable the Triton kernel runs, otherwise the pure-torch reference.
``CIARD_FAST_KERNELS=reference`` or ``=triton`` forces one (``triton`` on CPU tensors needs
``TRITON_INTERPRET=1``).
"""
from . import reference

__all__ = ["pgd_step", "pgd_random_start", "distill_loss", "reference"]


def pgd_step(x, x0, grad, eps, alpha, out=None):
    """x ← clamp₀₁(min(max(x + α·sign(g), x₀ − ε), x₀ + ε)); see reference.pgd_step."""
    return reference.pgd_step(x, x0, grad, eps, alpha, out=out)


def pgd_random_start(x0, eps, kind="uniform", sigma=0.001, generator=None):
    """Random start in the ε-ball (uniform) or x₀ + σ·N(0, I) (normal); see reference."""
    return reference.pgd_random_start(x0, eps, kind=kind, sigma=sigma, generator=generator)


def distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push):
    """(L_adv, L_nat, L_push, H_a, H_n, mask_count); see reference.distill_loss."""
    return reference.distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push)
