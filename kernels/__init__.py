"""Fused ops and their dispatch (installed as ``ciard_fast.kernels``).

One dispatch function per op. Callers (attacks, losses) never choose an implementation: on CUDA
tensors with Triton importable the Triton kernel runs, otherwise the pure-torch reference.
``CIARD_FAST_KERNELS=reference`` or ``=triton`` forces one (``triton`` on CPU tensors needs
``TRITON_INTERPRET=1`` set before triton is imported); ``auto`` (the default) is the rule above.
The variable is read at every call, so tests and scripts may change it at any time.

Importing this package never imports triton: the Triton modules load on first use, so the
package works where triton is absent (macOS, Windows) through the reference path.
"""
import os

import torch

from . import reference

__all__ = ["pgd_step", "pgd_random_start", "distill_loss", "reference", "kernel_mode", "backend_for",
           "triton_available"]

_MODES = ("auto", "triton", "reference")
_ENV = "CIARD_FAST_KERNELS"
_triton_state = {}  # "ops": module namespace of the Triton launchers, or "error": why not


def kernel_mode():
    """The current value of CIARD_FAST_KERNELS: 'auto' (default), 'triton' or 'reference'."""
    mode = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{_ENV} must be one of {', '.join(_MODES)}; got {os.environ[_ENV]!r}")
    return mode


def _triton_ops():
    """The Triton launchers, imported once; None (with the reason kept) if triton is unusable."""
    if "ops" not in _triton_state and "error" not in _triton_state:
        try:
            # Module names differ from the dispatch functions: importing a submodule binds its name
            # on this package and would otherwise replace the function of the same name.
            from . import _triton_common, distill_loss_triton as dl, pgd_step_triton as ps, random_start_triton as rs
        except Exception as exc:  # ImportError, or a triton that fails to initialise
            _triton_state["error"] = f"{type(exc).__name__}: {exc}"
        else:
            _triton_state["ops"] = {"pgd_step": ps.pgd_step, "pgd_random_start": rs.pgd_random_start,
                                    "distill_loss": dl.distill_loss,
                                    "interpreted": _triton_common.INTERPRETED}
    return _triton_state.get("ops")


def triton_available():
    """True when this package's Triton kernels could be imported."""
    return _triton_ops() is not None


def backend_for(tensor):
    """'triton' or 'reference': the implementation the dispatch picks for ops on `tensor`."""
    mode = kernel_mode()
    if mode == "reference":
        return "reference"
    ops = _triton_ops()
    if mode == "triton":
        if ops is None:
            raise RuntimeError(f"{_ENV}=triton but the Triton kernels cannot be imported "
                               f"({_triton_state['error']})")
        return "triton"  # a CPU tensor without TRITON_INTERPRET=1 fails in the launcher, saying so
    # auto: compiled Triton on CUDA only (the interpreter is for tests, never a fast path); the
    # kernels compute in float32, so float64 (exact checks, gradcheck) stays on the reference
    if tensor.is_cuda and tensor.dtype != torch.float64 and ops is not None and not ops["interpreted"]:
        return "triton"
    return "reference"


def pgd_step(x, x0, grad, eps, alpha, out=None):
    """x ← clamp₀₁(min(max(x + α·sign(g), x₀ − ε), x₀ + ε)); see reference.pgd_step.

    eps, alpha: Python numbers, 0-d tensors or per-sample [B] tensors. out may be x (in place).
    """
    if backend_for(x) == "triton":
        return _triton_ops()["pgd_step"](x, x0, grad, eps, alpha, out=out)
    return reference.pgd_step(x, x0, grad, eps, alpha, out=out)


def pgd_random_start(x0, eps, kind="uniform", sigma=0.001, generator=None, seed=None, clamp=True):
    """Random start in the ε-ball (uniform) or x₀ + σ·N(0, I) (normal), clamped to [0, 1]
    (clamp=False: not clamped, the public CIARD code's start; always the reference path, which
    costs one elementwise op more than the fused kernel).

    generator: torch.Generator on x0's device. seed (optional, instead of generator): an int or a
    one-element int tensor fixing the noise; the reference path reads a tensor seed on the host.
    The Triton and reference paths draw from different streams (same distribution).
    """
    if clamp and backend_for(x0) == "triton":
        return _triton_ops()["pgd_random_start"](x0, eps, kind=kind, sigma=sigma, generator=generator, seed=seed)
    if seed is not None:
        if generator is not None:
            raise ValueError("give either seed or generator, not both")
        generator = torch.Generator(device=x0.device).manual_seed(int(seed))
    return reference.pgd_random_start(x0, eps, kind=kind, sigma=sigma, generator=generator, clamp=clamp)


def distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push):
    """(L_adv, L_nat, L_push, H_a, H_n, mask_count); see reference.distill_loss.

    Gradients flow to s_adv and s_nat; tau_adv, tau_nat, T_push may be numbers or 0-d tensors.
    """
    if backend_for(s_adv) == "triton":
        return _triton_ops()["distill_loss"](s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push)
    return reference.distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push)
