"""The contract between a method (the math of one training step) and the engine (the loop).

A method says which teachers it needs, builds its losses from the functional pieces in
`ciard_fast.losses` and `ciard_fast.attacks`, and returns a dict of named loss tensors. The engine
backpropagates `out["loss"]`, steps the student's optimiser, then calls `after_optimizer_step()`;
it never knows which method it runs. Everything a method keeps between steps (temperatures,
weights, initial losses) is a device tensor so a step never waits on the host.
"""
import dataclasses

import torch

from ..schedules import step_lr


RANDOM_STARTS = ("default", "uniform", "normal", "none")


@dataclasses.dataclass
class AttackSettings:
    """The training-time inner maximisation (PGD on the student): L∞ radius, step, steps, and
    the random start ("default": the method's own — x + 0.001·N(0,I) for CIARD/TRADES/RSLAD,
    uniform in the ε-ball for SAT/ARD; "none" makes the attack deterministic)."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: str = "default"

    def __post_init__(self):
        if self.random_start not in RANDOM_STARTS:
            raise ValueError(f"attack random_start must be one of {RANDOM_STARTS}, got {self.random_start!r}")

    def start(self, method_default):
        """The random start to pass to `pgd`: the configured one, or the method's default."""
        if self.random_start == "default":
            return method_default
        return None if self.random_start == "none" else self.random_start


def _identity(tensor):
    return tensor


def freeze(model):
    """A teacher that must not change: eval mode (BN statistics frozen), no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Method:
    """Base class of every training method; subclasses set the class attributes and `training_step`.

    Class attributes:
      name: registry name.  paper_epochs: the length its schedules were written for.
      needs_robust_teacher / needs_clean_teacher: which teachers the engine must provide.
      Options: a dataclass of the method's own hyperparameters (config key `method_args`).
    """

    name = "base"
    paper_epochs = 300
    milestones = None        # paper epochs of the ×0.1 lr steps; None: override student_lr
    state_tensors = ()       # attribute names of device tensors checkpointed as they are
    needs_robust_teacher = False
    needs_clean_teacher = False

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, student, *, num_classes, epochs, base_lr=0.1, robust_teacher=None, clean_teacher=None,
                 options=None, attack=None, device=None):
        if self.needs_robust_teacher and robust_teacher is None:
            raise ValueError(f"method {self.name!r} needs a robust teacher; give robust_teacher=PATH or let train() make one")
        if self.needs_clean_teacher and clean_teacher is None:
            raise ValueError(f"method {self.name!r} needs a clean teacher; give clean_teacher=PATH or let train() make one")
        self.student = student
        self.robust_teacher = robust_teacher
        self.clean_teacher = clean_teacher
        self.num_classes = int(num_classes)
        self.epochs = int(epochs)
        self.base_lr = float(base_lr)
        self.options = options if options is not None else self.Options()
        self.attack = attack if attack is not None else AttackSettings()
        self.device = device if device is not None else next(student.parameters()).device
        self.epoch = 1
        # Set by the engine under torch.distributed: the mean over ranks of a tensor (an async
        # all-reduce, no host sync). Identity in a single process.
        self.reduce_mean = _identity
        self.world_size = 1

    # ---- schedule -------------------------------------------------------------------------
    def student_lr(self, epoch):
        """Learning rate of the student's optimiser during `epoch` (counted from 1): base_lr ×0.1
        at each of `milestones` (scaled from paper_epochs to the run's length), else constant."""
        if self.milestones is None:
            return self.base_lr
        return step_lr(epoch, self.epochs, self.paper_epochs, self.milestones, self.base_lr)

    def start_epoch(self, epoch):
        """Called by the engine before the first step of every epoch (counted from 1)."""
        self.epoch = int(epoch)

    # ---- one step --------------------------------------------------------------------------
    def training_step(self, x, y):
        """x: [B, C, H, W] in [0,1]; y: [B] int64. Returns {"loss": tensor to backward, ...}."""
        raise NotImplementedError

    def after_optimizer_step(self):
        """Called after the student's optimiser step (e.g. a teacher's own update)."""

    # ---- what is logged and checkpointed ---------------------------------------------------
    def log_values(self):
        """Device tensors worth logging besides the losses (τ, w, λ, ...): name -> 0-d tensor."""
        return {}

    def trainable_modules(self):
        """Modules other than the student that this method updates (wrapped for DDP by the engine)."""
        return {}

    def state_dict(self):
        """Everything needed to resume exactly: teachers' weights, their optimisers, state tensors."""
        state = {"epoch": self.epoch}
        for key in ("robust_teacher", "clean_teacher"):
            module = getattr(self, key)
            if module is not None:
                state[key] = module.state_dict()
        state.update({key: getattr(self, key).clone() for key in self.state_tensors})
        return state

    def load_state_dict(self, state):
        self.epoch = int(state.get("epoch", 1))
        for key in ("robust_teacher", "clean_teacher"):
            module = getattr(self, key)
            if module is not None and key in state:
                module.load_state_dict(state[key])
        for key in self.state_tensors:
            getattr(self, key).copy_(state[key])

    # ---- helpers for subclasses ------------------------------------------------------------
    def global_mean(self, *values):
        """Batch means over the global batch (all ranks); the inputs themselves when single-process.

        For state updates (τ, w, L⁰, λ) that must be identical on every rank. Detached.
        """
        if self.world_size == 1:
            return tuple(v.detach() for v in values)
        return tuple(self.reduce_mean(torch.stack([v.detach().float() for v in values])).unbind(0))

    def global_masked_mean(self, local_mean, local_count):
        """A masked mean (e.g. the push loss, a mean over |M|·C) over the global batch.

        Returns (value, objective): `value` is the global masked mean (detached, for logging and
        λ); `objective` is what this rank adds to its loss so that DDP's gradient average equals
        the gradient of the global masked mean: W·local_mean·|M_rank| / |M_global|. In a single
        process both are `local_mean`.
        """
        if self.world_size == 1:
            return local_mean.detach(), local_mean
        stats = self.reduce_mean(torch.stack([(local_mean * local_count).detach(), local_count.detach().float()]))
        total_count = (stats[1] * self.world_size).clamp(min=1.0)
        value = stats[0] * self.world_size / total_count
        return value, local_mean * local_count * (self.world_size / total_count)

    def _scalar(self, value):
        """A 0-d float32 state tensor on the method's device."""
        return torch.tensor(float(value), dtype=torch.float32, device=self.device)
