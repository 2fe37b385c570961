"""The run's optimisers: SGD, fused on CUDA with a device-tensor learning rate.

PyTorch's fused SGD (one kernel for all parameters) reads the learning rate from a 0-d device
tensor, so changing it each epoch is a `fill_` — no recompilation, nothing baked into a CUDA
graph, no host sync. NVIDIA apex's FusedSGD is used only when asked for and importable: apex is
not on PyPI (the PyPI package named `apex` is unrelated), so it is never a dependency.
"""
import torch

from .distributed import unwrap

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


class RunOptimizers:
    """Every optimiser of a run, by name: "student" (the config's SGD on `method.student_lr`)
    first, then each `OptimizerSpec` of `method.configure_optimizers()` in its order.

    The engine's one handle on them: `zero_grad` before a step, `step` after the backward (the
    student's first), `set_epoch` before `method.start_epoch` (each learning rate from its
    schedule), `state_dict` / `load_state_dict` for checkpoints. A declared optimiser may only
    update networks the method declared trainable; it is built over their unwrapped parameters.

    Args: momentum, weight_decay, kind — the student's SGD (`build_optimizer`; the declared ones
    carry their own); device (default the method's); student_params (default the student's).
    """

    STUDENT = "student"

    def __init__(self, method, momentum=0.9, weight_decay=0.0, device=None, kind="auto", student_params=None):
        device = device if device is not None else method.device
        params = student_params if student_params is not None else unwrap(method.student).parameters()
        self.optimizers = {self.STUDENT: build_optimizer(params, method.student_lr(1), momentum, weight_decay,
                                                         device, kind)}
        self.schedules = {self.STUDENT: method.student_lr}
        trainable = set(method.trainable_roles())
        for spec in method.configure_optimizers():
            if spec.name in self.optimizers:
                raise ValueError(f"method {method.name!r} declares two optimisers named {spec.name!r}")
            untrained = [role for role in spec.roles if role not in trainable]
            if untrained:
                raise ValueError(f"method {method.name!r}: optimiser {spec.name!r} updates {untrained}, which the "
                                 "method does not declare trainable (Network(..., trainable=True))")
            networks = method.all_networks()
            spec_params = [p for role in spec.roles for p in unwrap(networks[role]).parameters()]
            self.optimizers[spec.name] = build_optimizer(spec_params, spec.lr(1), spec.momentum, spec.weight_decay,
                                                         device, spec.kind or kind)
            self.schedules[spec.name] = spec.lr

    def __getitem__(self, name):
        return self.optimizers[name]

    def names(self):
        return tuple(self.optimizers)

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self):
        """Every optimiser's step, the student's first (a parameter without a gradient is left as it is)."""
        for optimizer in self.optimizers.values():
            optimizer.step()

    def set_epoch(self, epoch):
        """Each optimiser's learning rate for `epoch` from its schedule; returns the student's."""
        for name, optimizer in self.optimizers.items():
            set_lr(optimizer, self.schedules[name](epoch))
        return self.schedules[self.STUDENT](epoch)

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, states):
        missing = [name for name in self.optimizers if name not in states]
        if missing:
            raise ValueError(f"the checkpoint holds no state of optimiser(s) {missing}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(states[name])
