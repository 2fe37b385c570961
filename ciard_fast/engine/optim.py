"""The student's optimiser: SGD, fused on CUDA with a device-tensor learning rate.

PyTorch's fused SGD (one kernel for all parameters) reads the learning rate from a 0-d device
tensor, so changing it each epoch is a `fill_` — no recompilation, nothing baked into a CUDA
graph, no host sync. NVIDIA apex's FusedSGD is used only when asked for and importable: apex is
not on PyPI (the PyPI package named `apex` is unrelated), so it is never a dependency.
"""
import torch

OPTIMIZERS = ("auto", "sgd", "fused", "apex")


def build_optimizer(params, lr, momentum, weight_decay, device, kind="auto"):
    """kind: auto (fused on CUDA, plain on CPU) | sgd (plain torch SGD) | fused | apex."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    params = list(params)
    if kind == "apex":
        try:
            from apex.optimizers import FusedSGD
        except ImportError:
            raise ImportError("optimizer='apex' needs NVIDIA apex built from source (github.com/NVIDIA/apex); "
                              "it is not the PyPI package named 'apex'. Use optimizer='fused' instead.") from None
        return FusedSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    fused = kind == "fused" or (kind == "auto" and device.type == "cuda")
    if fused:
        lr_tensor = torch.tensor(float(lr), dtype=torch.float32, device=device)
        return torch.optim.SGD(params, lr=lr_tensor, momentum=momentum, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer, lr):
    """Set every group's learning rate: in place for device tensors, by value for floats."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(float(lr))
        else:
            group["lr"] = float(lr)

