"""Numerics of a run: device choice, autocast, memory format. All harmless on CPU."""
import contextlib

import torch


def resolve_device(name="auto"):
    """'auto' -> cuda when available, else cpu; anything else is checked and returned."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use device='cpu' or 'auto'")
    return device


def resolve_precision(precision, device):
    """'auto' -> bf16 on CUDA, fp32 elsewhere (bf16 matmuls on a 2-core CPU are slower, not faster)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(precision, device):
    """Context for the forward passes. Losses compute their softmax/KL in fp32 themselves.

    The weight-cast cache is off: a CUDA graph captured inside the block (the PGD loop) would
    otherwise read cached bf16 copies of the weights that go stale after the optimiser step.
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def use_channels_last(flag, device):
    return (device.type == "cuda") if flag is None else bool(flag)
