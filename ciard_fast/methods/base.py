"""The contract between a method (the math of one training step) and the engine (the loop).

A method says which teachers it needs, builds its losses from the functional pieces in
`ciard_fast.losses` and `ciard_fast.attacks`, and returns a dict of named loss tensors. The engine
backpropagates `out["loss"]`, steps the student's optimiser, then calls `after_optimizer_step()`;
it never knows which method it runs. Everything a method keeps between steps (temperatures,
weights, initial losses) is a device tensor so a step never waits on the host.
"""
import contextlib
import dataclasses

import torch

from ..attacks.pgd import pgd
from ..schedules import step_lr


RANDOM_STARTS = ("default", "uniform", "normal", "none")


@dataclasses.dataclass
class AttackSettings:
    """The training-time inner maximisation (PGD on the student): L∞ radius, step, steps, and
    the random start ("default": the method's own `Method.attack_start` — x + 0.001·N(0,I) for
    CIARD/TRADES/RSLAD/AdaAD/MTARD/B-MTARD, uniform in the ε-ball for SAT/ARD/IAD/Fair-ARD;
    "uniform"/"normal" force that kind for every method; "none" starts at x, deterministic).
    Every method attacks through `Method.attack_student`, which applies it."""

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


@contextlib.contextmanager
def module_mode(module, training):
    """Put `module` (and every submodule) in train (`training=True`) or eval mode for the block,
    then restore each submodule's previous mode exactly, also when the block raises."""
    previous = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, mode in previous:
            m.training = mode


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
      attack_start: the method's own random start of the training attack, "normal"
        (x + 0.001·N(0, I)) or "uniform" (U(−ε, ε)); `attack_random_start` in the config overrides it.
      preset_overrides: what the method's own presets (``<dataset>-<student>-<method>``, generated
        from every ``<dataset>-<student>`` preset) change in their base: its paper schedule
        (``epochs``), lr / weight decay where they differ, spelled-out ``method_args``.
        preset_overrides_by_dataset: dataset name -> further changes for that dataset only.
      Options: a dataclass of the method's own hyperparameters (config key `method_args`).
    """

    name = "base"
    attack_start = "normal"  # the default random start of the training attack (see attack_student)
    paper_epochs = 300
    milestones = None        # paper epochs of the ×0.1 lr steps; None: override student_lr
    state_tensors = ()       # attribute names of device tensors checkpointed as they are
    needs_robust_teacher = False
    needs_clean_teacher = False
    preset_overrides = {}
    preset_overrides_by_dataset = {}

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
    @property
    def attack_train_mode(self):
        """True: attack the student with BN in train mode (ARD's public code); default eval mode."""
        return False

    def attack_student(self, x, y, loss="ce", target_logits=None, default_start=None, model=None, eps=None):
        """The training attack: PGD on the student, the one place every method attacks from.

        The student is in eval mode for the attack (train mode when `attack_train_mode`) and gets
        back the mode of every submodule it had, even when the attack raises. eps/alpha/steps come
        from `self.attack`; the random start is `self.attack.start(default_start)`, i.e. the
        configured `attack_random_start` or, for "default", `default_start` (None: the class's
        `attack_start`). No argument validation (`validate=False`): no host sync.

        Args:
            x: [B, C, H, W] in [0, 1]; y: [B] int64.
            loss: "ce", "kl" (needs `target_logits` [B, K]), "cw", or an objective callable
                ``objective(logits, x_adv) -> 0-d tensor`` (see :func:`ciard_fast.attacks.pgd`).
            model: what PGD differentiates (default the student), e.g. a wrapper that counts
                per-step statistics (Fair-ARD); the mode switch always applies to the student.
            eps: radius override (default `self.attack.eps`), e.g. a device tensor.

        Returns x_adv (detached), like x, within ε of x and in [0, 1].
        """
        start = self.attack.start(self.attack_start if default_start is None else default_start)
        with module_mode(self.student, self.attack_train_mode):
            return pgd(self.student if model is None else model, x, y, eps=self.attack.eps if eps is None else eps,
                       alpha=self.attack.alpha, steps=self.attack.steps, random_start=start, loss=loss,
                       target_logits=target_logits, validate=False)

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
