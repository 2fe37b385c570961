"""Fused ops and their dispatch (installed as ``ciard_fast.kernels``).

One dispatch function per op. Callers (attacks, losses) never choose an implementation: on CUDA
tensors with Triton importable the Triton kernel runs, otherwise the pure-torch reference.
``CIARD_FAST_KERNELS=reference`` or ``=triton`` forces one (``triton`` on CPU tensors needs
``TRITON_INTERPRET=1`` set before triton is imported); ``auto`` (the default) is the rule above.
The variable is read at every call, so tests and scripts may change it at any time.

Importing this package never imports triton: the Triton modules load on first use, so the
package works where triton is absent (macOS, Windows) through the reference path.

Self-checks. The first time an op would run its Triton kernel on a CUDA device for a given
dtype, memory layout and hyper-parameter form, the dispatch first runs the kernel once on a
small random input against the reference (``_selfcheck.py``; the tolerances of the kernel
tests). If the kernel raises or disagrees, one :class:`KernelFallbackWarning` names the op, the
device, the dtype and the error, and that op uses the reference for that key for the rest of
the process; under ``CIARD_FAST_KERNELS=triton`` the same finding is a ``RuntimeError`` instead.
A Triton that cannot be imported is reported the same way (one warning, the first time a CUDA
tensor reaches the dispatch). After the first call per key the cost is one dict lookup; a call
made while a CUDA graph is being captured is never checked (a check synchronises): an unchecked
key then takes the reference path inside that graph. :func:`self_check_results` lists what was
checked; :func:`check_kernel` runs one check on demand (``ciard-fast doctor``).
"""
import os
import warnings

import torch

from . import _selfcheck, reference
from ._args import dense_layout

__all__ = ["pgd_step", "pgd_random_start", "distill_loss", "reference", "kernel_mode", "backend_for",
           "triton_available", "triton_error", "check_kernel", "self_check_results", "KernelFallbackWarning"]

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


def triton_error():
    """Why the Triton kernels cannot be imported ("ImportError: ..."), or None when they can."""
    _triton_ops()
    return _triton_state.get("error")


class KernelFallbackWarning(RuntimeWarning):
    """A fused kernel was found unusable here; its op runs on the pure-torch reference instead."""


# Internal test hook: when True, "auto" treats CPU tensors under TRITON_INTERPRET=1 as it treats
# CUDA tensors (Triton path, self-checked on first use), so CPU tests can drive the self-check
# and the fallback. Never set in library code.
_CHECK_ON_CPU = False
_checks = {}     # (op, device, dtype, layout, form) -> _selfcheck.CheckResult
_warned = set()  # one-off warnings already given


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, KernelFallbackWarning, stacklevel=4)


def _checked_device(tensor):
    return tensor.is_cuda or (_CHECK_ON_CPU and tensor.device.type == "cpu")


def _mode_picks_triton(tensor, mode, ops):
    """The mode rule alone (no self-check): does `mode` send `tensor` to the Triton kernels?"""
    if mode == "reference":
        return False
    if mode == "triton":
        if ops is None:
            raise RuntimeError(f"{_ENV}=triton but the Triton kernels cannot be imported "
                               f"({_triton_state['error']})")
        return True  # a CPU tensor without TRITON_INTERPRET=1 fails in the launcher, saying so
    if ops is None:
        if tensor.is_cuda:
            _warn_once("import", f"ciard_fast.kernels: the Triton kernels cannot be imported "
                                 f"({_triton_state['error']}); every fused op runs the pure-torch reference "
                                 f"on {tensor.device} (slower, same results)")
        return False
    # auto: compiled Triton on CUDA only (the interpreter is for tests, never a fast path); the
    # kernels compute in float32, so float64 (exact checks, gradcheck) stays on the reference
    if tensor.dtype == torch.float64:
        return False
    if tensor.is_cuda:
        if ops["interpreted"]:
            _warn_once("interpreted", "ciard_fast.kernels: triton was imported with TRITON_INTERPRET=1, which "
                                      f"runs kernels on host memory only; ops on {tensor.device} use the "
                                      "pure-torch reference (unset TRITON_INTERPRET for GPU runs)")
            return False
        return True
    return _CHECK_ON_CPU and tensor.device.type == "cpu" and ops["interpreted"]


def _form(*values, vector="per_sample"):
    """How hyper-parameters are passed (each form compiles its own kernel specialisation): a 1-d
    tensor is `vector` ("per_sample" for the PGD ops' ε and α, "per_class" for distill_loss's τ)."""
    if any(isinstance(v, torch.Tensor) and v.dim() == 1 for v in values):
        return vector
    if any(isinstance(v, torch.Tensor) for v in values):
        return "0d"
    return "number"


def _use_triton(op, tensor, form):
    """True to launch `op`'s Triton kernel on `tensor`, False for the reference (see the module
    docstring: mode rule, then a self-check the first time per key)."""
    mode = kernel_mode()
    ops = _triton_ops()
    if not _mode_picks_triton(tensor, mode, ops):
        return False
    if not _checked_device(tensor):
        return True  # CIARD_FAST_KERNELS=triton on CPU tensors: the kernel tests' own territory
    layout = dense_layout(tensor) or "strided"
    key = (op, str(tensor.device), tensor.dtype, layout, form)
    result = _checks.get(key)
    if result is None:
        if tensor.is_cuda and torch.cuda.is_current_stream_capturing():
            return mode == "triton"  # cannot check now (it syncs); forced Triton stays Triton
        result = _selfcheck.run_check(op, ops[op], tensor.device, tensor.dtype,
                                      "channels_last" if layout == "channels_last" else "contiguous", form)
        _checks[key] = result
        if not result.ok and mode == "auto":
            _warn_once(key, f"ciard_fast.kernels: self-check of the Triton kernel failed — {result.describe()}. "
                            f"{op} runs the pure-torch reference on {tensor.device} for {result.dtype} for the "
                            f"rest of this process ({_ENV}=triton makes this an error)")
    if result.ok:
        return True
    if mode == "triton":
        raise RuntimeError(f"{_ENV}=triton but the Triton kernel failed its self-check — {result.describe()}")
    return False


def backend_for(tensor, op=None):
    """'triton' or 'reference': the implementation the dispatch picks for ops on `tensor`.

    Without `op`, the mode rule alone; with `op` (one of pgd_step, pgd_random_start,
    distill_loss), the full decision, running that op's self-check if it has not run yet (with
    number hyper-parameters).
    """
    if op is None:
        return "triton" if _mode_picks_triton(tensor, kernel_mode(), _triton_ops()) else "reference"
    if op not in _selfcheck.OPS:
        raise ValueError(f"op must be one of {', '.join(_selfcheck.OPS)}; got {op!r}")
    return "triton" if _use_triton(op, tensor, "number") else "reference"


def check_kernel(op, device, dtype=torch.float32, layout="contiguous", form="number"):
    """Run the self-check of `op`'s Triton kernel now (whatever the mode) and return its
    ``CheckResult``; raises RuntimeError when triton cannot be imported. Not cached."""
    if op not in _selfcheck.OPS:
        raise ValueError(f"op must be one of {', '.join(_selfcheck.OPS)}; got {op!r}")
    ops = _triton_ops()
    if ops is None:
        raise RuntimeError(f"the Triton kernels cannot be imported ({_triton_state['error']})")
    return _selfcheck.run_check(op, ops[op], device, dtype, layout, form)


def self_check_results():
    """The self-checks the dispatch has run in this process, in order (``CheckResult`` objects)."""
    return list(_checks.values())


def pgd_step(x, x0, grad, eps, alpha, out=None):
    """x ← clamp₀₁(min(max(x + α·sign(g), x₀ − ε), x₀ + ε)); see reference.pgd_step.

    eps, alpha: Python numbers, 0-d tensors or per-sample [B] tensors. out may be x (in place).
    """
    if _use_triton("pgd_step", x, _form(eps, alpha)):
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
    if clamp and _use_triton("pgd_random_start", x0, _form(eps)):
        return _triton_ops()["pgd_random_start"](x0, eps, kind=kind, sigma=sigma, generator=generator, seed=seed)
    if seed is not None:
        if generator is not None:
            raise ValueError("give either seed or generator, not both")
        generator = torch.Generator(device=x0.device).manual_seed(int(seed))
    return reference.pgd_random_start(x0, eps, kind=kind, sigma=sigma, generator=generator, clamp=clamp)


def distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push):
    """(L_adv, L_nat, L_push, H_a, H_n, mask_count); see reference.distill_loss.

    Gradients flow to s_adv and s_nat; T_push may be a number or a 0-d tensor; tau_adv, tau_nat a
    number, a 0-d tensor or a per-class [C] tensor (row i uses τ[labels_i], ABSLD's per-class
    temperatures). The per-class form always runs the reference (the fused kernel takes one
    temperature per tensor).
    """
    form = _form(tau_adv, tau_nat, T_push, vector="per_class")
    if form != "per_class" and _use_triton("distill_loss", s_adv, form):
        return _triton_ops()["distill_loss"](s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push)
    return reference.distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, T_push)
