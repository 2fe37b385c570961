"""Small helpers shared by the attacks (not public API)."""
import contextlib

import torch

__all__ = ["frozen_parameters", "to_device_param", "preserved_rng", "import_pyautoattack", "PYAUTOATTACK_HINT"]

PYAUTOATTACK_HINT = 'pip install "ciard-fast[autoattack]"'


@contextlib.contextmanager
def frozen_parameters(model):
    """Turn off ``requires_grad`` on every parameter of `model` for the block, then restore it.

    An attack needs the gradient with respect to the input only; with parameters frozen autograd
    skips the weight-gradient kernels (about a third of a backward pass) and no parameter ``.grad``
    can be written, even by code that calls ``.backward()``. Flags are restored exactly, even when
    the block raises. Callables that are not ``nn.Module`` have no parameters to freeze.
    """
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    flags = [p.requires_grad for p in params]
    try:
        for p, flag in zip(params, flags):
            if flag:
                p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            if p.requires_grad != flag:
                p.requires_grad_(flag)


def to_device_param(value, like):
    """A per-sample/scalar tensor hyperparameter moved to `like`'s device (numbers pass through)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=like.device)
    return float(value)


@contextlib.contextmanager
def preserved_rng(device=None):
    """Restore torch's global CPU (and current CUDA device's) RNG state after the block.

    Third-party attacks (AutoAttack) reseed the global generator; the caller's random stream
    must not depend on whether an evaluation ran.
    """
    cpu_state = torch.get_rng_state()
    cuda_state = None
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if use_cuda:
        cuda_state = torch.cuda.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state)


def import_pyautoattack(module, name, what):
    """``from <module> import <name>`` of the optional package pyautoattack (AutoAttack, its Square
    Attack), or an ImportError saying that `what` needs it and how to install it."""
    try:  # through __import__ (not importlib), so that a test can hide the package
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"{what} needs the optional package 'pyautoattack' ({err}); install it with: "
                          f"{PYAUTOATTACK_HINT}") from err
