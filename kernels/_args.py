"""Argument plumbing shared by the Triton launchers (no Triton import here).

A scalar hyper-parameter (ε, α, τ, ...) reaches a kernel in one of three forms, chosen by a
``constexpr`` mode so that each form compiles to its own specialised kernel:

    SCALAR (0)      a Python number, passed by value (fp32 in the kernel)
    POINTER (1)     a 0-d tensor on the kernel's device, loaded inside the kernel
    PER_SAMPLE (2)  a [B] tensor on the kernel's device, element b applies to sample b

Tensors are never read on the host (.item() would force a device sync and break CUDA graphs).
"""
import numbers

import torch

SCALAR, POINTER, PER_SAMPLE = 0, 1, 2


def _is_number(value):
    # bool is a numbers.Number; a flag passed as ε is almost surely a bug.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def scalar_arg(value, device, name, per_sample_size=None):
    """Normalise `value` to (kernel argument, mode).

    value: Python real, 0-d tensor, or (if per_sample_size is given) a [per_sample_size] tensor.
    A 0-d tensor on the CPU while the kernel runs elsewhere is read on the host: that reads host
    memory only and costs no device sync. A [B] tensor must already live on `device`.
    """
    if _is_number(value):
        return float(value), SCALAR
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Python number or a tensor, got {type(value).__name__}")
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a floating-point or integer tensor, got dtype {value.dtype}")
    if value.dim() == 0:
        if value.device != device:
            if value.device.type == "cpu":
                return float(value), SCALAR
            raise ValueError(f"{name} is on {value.device} but the data is on {device}")
        return value, POINTER
    if per_sample_size is not None and value.dim() == 1 and value.shape[0] == per_sample_size:
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but the data is on {device}")
        return value.contiguous(), PER_SAMPLE
    expected = f"0-d or [{per_sample_size}]" if per_sample_size is not None else "0-d"
    raise ValueError(f"{name} must be a number or a {expected} tensor, got shape {tuple(value.shape)}")


def check_float_dtype(tensor, name, allowed=(torch.float32, torch.bfloat16, torch.float16)):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {tensor.dtype}")


def dense_layout(tensor):
    """'contiguous' or 'channels_last' when the tensor is one dense block whose memory order an
    elementwise kernel can walk with the batch index outermost; None otherwise."""
    if tensor.is_contiguous():
        return "contiguous"
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return None
