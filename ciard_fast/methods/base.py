"""The contract between a method (the mathematics of one training step) and the engine (the loop).

A method *declares* what it needs and the engine provides it; the engine names no role but the
student's.

* **Networks, by role** (`networks`, or `declare_networks(options)` when options change them):
  each a :class:`Network` — a teacher from one of the config's teacher slots (its file, or
  trained first), or a network built fresh (e.g. a peer trained beside the student), trainable
  or frozen. The engine builds each one, hands it to the method's constructor under its role
  (``self.<role>``), wraps the trainable ones for DDP (`set_network`), checks bf16 on all of them
  and checkpoints them all.
* **Optimisers** besides the student's (`configure_optimizers`, in the spirit of Lightning's):
  each an :class:`OptimizerSpec` naming the roles it updates and its learning-rate schedule. The
  engine builds them, zeroes them, steps them after the student's, sets their learning rate at
  every epoch and checkpoints them.
* **Options** (`Options`, a :class:`~ciard_fast.options.MethodOptions` dataclass): checked when
  built — which the config does when it is built — and inherited by related methods.
* **State** (`register_state`): the device tensors a checkpoint carries (τ, w, L⁰, λ, counts).
* **Hooks**, called by the engine in this order every epoch: `start_epoch(epoch)`; per batch
  `training_step(x, y)`, backward, every optimiser's step, `after_optimizer_step()`; then
  `end_epoch(epoch)` before validation.

Everything a method keeps between steps is a device tensor, so a step never waits on the host.
"""
import contextlib
import dataclasses
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ..attacks.pgd import TRAINING_RANDOM_STARTS, pgd
from ..options import MethodOptions
from ..schedules import step_lr
from .terms import LossSum, LossTerm, StepContext

# The config's spelling of the training attack's random starts (one list, owned by attacks/pgd.py).
RANDOM_STARTS = TRAINING_RANDOM_STARTS
STUDENT = "student"
NETWORK_SOURCES = ("teacher", "fresh")


@dataclasses.dataclass
class AttackSettings:
    """The training-time inner maximisation (PGD on the student): L∞ radius, step, steps, and
    the random start ("default": the method's own `Method.attack_start` — x + 0.001·N(0,I) for
    CIARD/TRADES/RSLAD/AdaAD/MTARD/B-MTARD, uniform in the ε-ball for SAT/ARD/IAD/Fair-ARD;
    "uniform"/"normal"/"normal_unclamped" force that start for every method; "none" starts at x,
    deterministic). Every method attacks through `Method.attack_student`, which applies it."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: str = "default"

    def __post_init__(self) -> None:
        if self.random_start not in RANDOM_STARTS:
            raise ValueError(f"attack random_start must be one of {RANDOM_STARTS}, got {self.random_start!r}")

    def start(self, method_default: Optional[str]) -> Optional[str]:
        """The random start to pass to `pgd`: the configured one, or the method's default."""
        if self.random_start == "default":
            return method_default
        return None if self.random_start == "none" else self.random_start


@dataclasses.dataclass(frozen=True)
class Network:
    """One network a method uses besides the student, by role.

    Attributes:
        role: its name, the keyword the method's constructor takes it under and the attribute
            it is reached by (``self.<role>``); also its key in checkpoints. Not "student".
        source: "teacher" — one of the config's teacher slots (`slot`): its weights file, or a
            teacher trained first (`ciard_fast.engine.teachers`); "fresh" — built from scratch
            like the student (same data, normalisation and precision).
        slot: the teacher slot of a "teacher" network: "robust" or "clean" (the config fields
            `<slot>_teacher`, `<slot>_teacher_model`, ...).
        model, model_args: a "fresh" network's registered model and its keyword arguments (None:
            the student's architecture and arguments).
        trainable: True if the method trains it (an optimiser in `configure_optimizers` updates
            it; DDP-wrapped; its weights are checked for NaN). A frozen network must stay
            bit-identical for the whole run (the contract tests check it).
    """

    role: str
    source: str
    slot: Optional[str] = None
    model: Optional[str] = None
    model_args: Optional[Mapping[str, Any]] = None
    trainable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not self.role.isidentifier() or self.role == STUDENT:
            raise ValueError(f"a network role must be a Python identifier other than {STUDENT!r}, got {self.role!r}")
        if self.source not in NETWORK_SOURCES:
            raise ValueError(f"network {self.role!r}: source must be one of {NETWORK_SOURCES}, got {self.source!r}")
        if (self.source == "teacher") != (self.slot is not None):
            raise ValueError(f"network {self.role!r}: a 'teacher' network names its slot, a 'fresh' one does not")
        if self.source == "teacher" and self.model is not None:
            raise ValueError(f"network {self.role!r}: a teacher's model comes from its config slot, not the method")
        if not isinstance(self.trainable, bool):
            raise TypeError(f"network {self.role!r}: trainable must be True or False, got {self.trainable!r}")

    @classmethod
    def teacher(cls, role: str, slot: str, trainable: bool = False) -> "Network":
        """A teacher from the config's `slot` ("robust" or "clean"): its file, or trained first."""
        return cls(role=role, source="teacher", slot=slot, trainable=trainable)

    @classmethod
    def fresh(cls, role: str, model: Optional[str] = None, model_args: Optional[Mapping[str, Any]] = None,
              trainable: bool = True) -> "Network":
        """A network built from scratch (default: the student's architecture), trained by the method."""
        return cls(role=role, source="fresh", model=model, model_args=model_args, trainable=trainable)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser the method wants besides the student's: SGD over the parameters of `roles`.

    Attributes:
        name: its key in checkpoints (unique among the method's roles, optimisers and state).
        roles: the trainable networks (declared with trainable=True) whose parameters it updates.
        lr: the learning rate of each epoch, ``lr(epoch) -> float`` (epochs counted from 1); the
            engine sets it before `start_epoch`.
        momentum, weight_decay: SGD's.
        kind: an optimiser kind of `ciard_fast.engine.optim` ("sgd", "fused", "auto", ...);
            None: the run's `optimizer` setting.
    The engine zeroes it with the student's before each step and steps it right after the
    student's; a parameter that received no gradient (a frozen network) is left untouched.
    """

    name: str
    roles: Tuple[str, ...]
    lr: Callable[[int], float]
    momentum: float = 0.0
    weight_decay: float = 0.0
    kind: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == STUDENT:
            raise ValueError(f"an optimiser needs a name other than {STUDENT!r}, got {self.name!r}")
        if isinstance(self.roles, str) or not self.roles:
            raise ValueError(f"optimiser {self.name!r}: roles must be a non-empty tuple of roles, got {self.roles!r}")
        if not callable(self.lr):
            raise TypeError(f"optimiser {self.name!r}: lr must be a schedule lr(epoch) -> float")


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def module_mode(module: nn.Module, training: bool):
    """Put `module` (and every submodule) in train (`training=True`) or eval mode for the block,
    then restore each submodule's previous mode exactly, also when the block raises."""
    previous = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, mode in previous:
            m.training = mode


def freeze(model: nn.Module) -> nn.Module:
    """A teacher that must not change: eval mode (BN statistics frozen), no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Method:
    """Base class of every training method; subclasses set the class attributes and `training_step`.

    Class attributes:
      name: registry name.  paper_epochs: the length its schedules were written for.
      networks: its networks besides the student (:class:`Network`); override
        `declare_networks(options)` instead when the options change them. (The older shorthand
        `needs_robust_teacher` / `needs_clean_teacher` = True still declares a frozen teacher
        under the role "robust_teacher" / "clean_teacher"; both flags are kept in step with the
        declaration for readers.)
      attack_start: the method's own random start of the training attack, "normal"
        (x + 0.001·N(0, I)) or "uniform" (U(−ε, ε)); `attack_random_start` in the config overrides it.
      milestones: paper epochs of the ×0.1 steps of the student's lr; None: override `student_lr`.
      progress_hidden: logged values kept in the history but left off the progress line.
      preset_overrides: what the method's own presets (``<dataset>-<student>-<method>``, generated
        from every ``<dataset>-<student>`` preset) change in their base: its paper schedule
        (``epochs``), lr / weight decay where they differ, spelled-out ``method_args``.
        preset_overrides_by_dataset: dataset name -> further changes for that dataset only.
      Options: a :class:`~ciard_fast.options.MethodOptions` dataclass of its hyperparameters
        (config key `method_args`).
      variants: option name -> subclass, filled by `register_variant`: constructing the method
        with that (boolean) option true builds the subclass (e.g. CIARD's `reference_code`).
      shared_terms: plug-in loss terms (`methods/terms.py`) the method accepts; its `Options`
        derive from each term's `Options`, and its step ends with `add_shared_terms`.
    """

    name: ClassVar[str] = "base"
    attack_start: ClassVar[str] = "normal"  # the default random start of the training attack (see attack_student)
    paper_epochs: ClassVar[int] = 300
    milestones: ClassVar[Optional[Tuple[float, ...]]] = None
    networks: ClassVar[Tuple[Network, ...]] = ()
    needs_robust_teacher: ClassVar[bool] = False
    needs_clean_teacher: ClassVar[bool] = False
    progress_hidden: ClassVar[Tuple[str, ...]] = ()
    preset_overrides: ClassVar[Dict[str, Any]] = {}
    preset_overrides_by_dataset: ClassVar[Dict[str, Dict[str, Any]]] = {}
    variants: ClassVar[Dict[str, Type["Method"]]] = {}
    shared_terms: ClassVar[Tuple[Type[LossTerm], ...]] = ()
    # The usual roles of the two teacher slots read as None on a method that does not declare
    # them (code written for the two-slot contract asks `method.clean_teacher is None`).
    robust_teacher: Optional[nn.Module] = None
    clean_teacher: Optional[nn.Module] = None

    @dataclasses.dataclass
    class Options(MethodOptions):
        pass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for term in cls.shared_terms:
            if term.Options is not None and not issubclass(cls.Options, term.Options):
                raise TypeError(f"{cls.__qualname__} lists the shared term {term.__qualname__} but its Options do "
                                f"not derive from {term.__qualname__}.Options (the term's options, declared once)")
        own = cls.__dict__
        if "networks" not in own and ("needs_robust_teacher" in own or "needs_clean_teacher" in own):
            # the shorthand of methods written before networks were declared
            cls.networks = tuple(
                Network.teacher(f"{slot}_teacher", slot) for slot, needed in
                (("robust", cls.needs_robust_teacher), ("clean", cls.needs_clean_teacher)) if needed)
        try:
            declared = cls.declare_networks(cls.Options())
        except Exception:  # options without defaults: the flags stay as the class set them
            return
        slots = {n.slot for n in declared if n.source == "teacher"}
        cls.needs_robust_teacher, cls.needs_clean_teacher = "robust" in slots, "clean" in slots

    def __new__(cls, *args, options: Optional[MethodOptions] = None, **kwargs):
        # Options that select a registered variant (e.g. CIARD's reference_code: true) build it.
        return super().__new__(cls.variant_for(options) if options is not None else cls)

    @classmethod
    def variant_for(cls, options: MethodOptions) -> Type["Method"]:
        """The class these options build: the variant a true boolean option selects, else `cls`."""
        from . import METHODS

        METHODS.names()  # every method module imported: their variants are registered
        chosen = [variant for option, variant in cls.variants.items() if getattr(options, option, False) is True]
        if len(chosen) > 1:
            raise ValueError(f"method {cls.name!r}: options select several variants "
                             f"({', '.join(v.__name__ for v in chosen)}); choose one")
        return chosen[0] if chosen else cls

    @classmethod
    def declare_networks(cls, options: MethodOptions) -> Tuple[Network, ...]:
        """The networks besides the student that a run with `options` uses (default: `networks`)."""
        return tuple(cls.networks)

    def __init__(self, student: nn.Module, *, num_classes: int, epochs: int, base_lr: float = 0.1,
                 options: Optional[MethodOptions] = None, attack: Optional[AttackSettings] = None,
                 device: Optional[torch.device] = None, **networks: Optional[nn.Module]) -> None:
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(f"method {self.name!r} takes options of type {self.Options.__qualname__}, "
                            f"got {type(self.options).__qualname__}")
        self.network_specs: Tuple[Network, ...] = self.declare_networks(self.options)
        roles = [spec.role for spec in self.network_specs]
        stray = sorted(set(networks) - set(roles))
        if stray:
            raise TypeError(f"method {self.name!r} has no network role(s) {stray}; its roles: "
                            f"{', '.join(roles) or 'none besides the student'}")
        self.student = student
        self._roles = [STUDENT]
        for spec in self.network_specs:
            module = networks.get(spec.role)
            if module is None:
                what = f"a {spec.slot} teacher" if spec.source == "teacher" else f"a {spec.role} network"
                hint = (f"; give {spec.slot}_teacher=PATH or let train() make one" if spec.source == "teacher"
                        else "")
                raise ValueError(f"method {self.name!r} needs {what} ({spec.role}=...){hint}")
            self.set_network(spec.role, module)
        self.freeze_frozen_networks()
        self.num_classes = int(num_classes)
        self.epochs = int(epochs)
        self.base_lr = float(base_lr)
        self.attack = attack if attack is not None else AttackSettings()
        self.device = device if device is not None else next(student.parameters()).device
        self.epoch = 1
        self._state_names: list = []
        built = (term.from_options(self.options) for term in self.shared_terms)
        self._shared_terms: Tuple[LossTerm, ...] = tuple(term for term in built if term is not None)
        # Set by the engine under torch.distributed: the mean (the maximum) over ranks of a tensor,
        # elementwise (an async all-reduce, no host sync). Identity in a single process.
        self.reduce_mean: Callable[[torch.Tensor], torch.Tensor] = _identity
        self.reduce_max: Callable[[torch.Tensor], torch.Tensor] = _identity
        self.world_size = 1

    # ---- networks and optimisers ------------------------------------------------------------
    def set_network(self, role: str, module: nn.Module) -> None:
        """Replace the network of `role` (the engine's DDP wrapper, for instance): ``self.<role>``."""
        if role not in self._roles and role not in {s.role for s in self.network_specs}:
            raise ValueError(f"method {self.name!r} has no network role {role!r}")
        setattr(self, role, module)
        if role not in self._roles:
            self._roles.append(role)

    def all_networks(self) -> Dict[str, nn.Module]:
        """role -> module of every network, the student first, then in declaration order."""
        return {role: getattr(self, role) for role in self._roles}

    def trainable_roles(self) -> Tuple[str, ...]:
        """The roles the method trains: the student and every network declared trainable."""
        return (STUDENT,) + tuple(spec.role for spec in self.network_specs if spec.trainable)

    def freeze_frozen_networks(self) -> None:
        """Put every network declared not trainable in eval mode without parameter gradients
        (:func:`freeze`): at construction and again at the start of every epoch, so that no method
        has to remember it and nothing the engine did to the modules in between is carried over."""
        for spec in self.network_specs:
            if not spec.trainable:
                freeze(getattr(self, spec.role))

    def configure_optimizers(self) -> Sequence[OptimizerSpec]:
        """The optimisers besides the student's (none by default); see :class:`OptimizerSpec`."""
        return ()

    # ---- schedule and hooks ------------------------------------------------------------------
    def student_lr(self, epoch: int) -> float:
        """Learning rate of the student's optimiser during `epoch` (counted from 1): base_lr ×0.1
        at each of `milestones` (scaled from paper_epochs to the run's length), else constant."""
        if self.milestones is None:
            return self.base_lr
        return step_lr(epoch, self.epochs, self.paper_epochs, self.milestones, self.base_lr)

    def start_epoch(self, epoch: int) -> None:
        """Called by the engine before the first step of every epoch (counted from 1), after every
        optimiser's learning rate for the epoch is set. Overrides call it first."""
        self.epoch = int(epoch)
        self.freeze_frozen_networks()

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One step's objective. x: [B, C, H, W] in [0, 1]; y: [B] int64.

        Returns a dict (usually `LossSum.output()`, see `methods/terms.py`):
          * "loss": the 0-d tensor to backpropagate (one backward fills the gradients of every
            trainable network; the engine then steps every optimiser);
          * every other key: a detached 0-d tensor, logged as its mean over the epoch
            (``train_<key>`` in the history, metrics files, TensorBoard) and shown on the progress
            line unless listed in `progress_hidden`.
        No host sync (no `.item()`, `nonzero`, boolean indexing, printing of tensors).
        """
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimiser has stepped (work that must see the updated weights)."""

    def end_epoch(self, epoch: int) -> None:
        """Called after the last step of `epoch`, before validation (e.g. per-epoch state updates)."""

    # ---- what is logged and checkpointed ---------------------------------------------------
    def log_values(self) -> Dict[str, torch.Tensor]:
        """Device tensors worth logging besides the losses (τ, w, λ, ...): name -> 0-d tensor."""
        return {}

    def register_state(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Make `tensor` (a device tensor, updated in place from then on) part of the method's
        checkpointed state, reachable as ``self.<name>``. Returns it."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state {name!r} of method {self.name!r} must be a tensor, got {type(tensor).__name__}")
        if name in self._state_names or name in self._roles or name == "epoch":
            raise ValueError(f"method {self.name!r}: state name {name!r} is taken")
        setattr(self, name, tensor)
        self._state_names.append(name)
        return tensor

    def state_names(self) -> Tuple[str, ...]:
        """The names of the registered state tensors, in registration order."""
        return tuple(self._state_names)

    def state_dict(self) -> Dict[str, Any]:
        """The epoch and every registered state tensor (the engine adds the networks and optimisers)."""
        state: Dict[str, Any] = {"epoch": self.epoch}
        state.update({name: getattr(self, name).clone() for name in self._state_names})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put back what `state_dict` returned; ValueError naming a state tensor it lacks."""
        missing = [name for name in self._state_names if name not in state]
        if missing:
            raise ValueError(f"the checkpoint holds no state {missing} of method {self.name!r} (written by another "
                             "method or version?); resume it with the code that wrote it, or start a new run")
        self.epoch = int(state.get("epoch", 1))
        for name in self._state_names:
            getattr(self, name).copy_(state[name])

    # ---- helpers for subclasses ------------------------------------------------------------
    def step_context(self, x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor] = None,
                     logits: Optional[Mapping[Tuple[str, str], Optional[torch.Tensor]]] = None) -> StepContext:
        """A :class:`StepContext` of this step: the inputs, the logits computed (None entries
        dropped), the run's networks by role, the epoch."""
        known = {k: v for k, v in (logits or {}).items() if v is not None}
        return StepContext(x=x, y=y, x_adv=x_adv, logits=known, networks=self.all_networks(), epoch=self.epoch,
                           epochs=self.epochs)

    def add_shared_terms(self, total: LossSum, ctx: StepContext) -> LossSum:
        """Add every plug-in term of `shared_terms` that the options switch on (see LossTerm)."""
        for term in self._shared_terms:
            total.add_term(term, ctx)
        return total

    @property
    def attack_train_mode(self) -> bool:
        """True: attack the student with BN in train mode (ARD's public code); default eval mode."""
        return False

    def attack_student(self, x: torch.Tensor, y: torch.Tensor, loss="ce", target_logits: Optional[torch.Tensor] = None,
                       default_start: Optional[str] = None, model: Optional[nn.Module] = None,
                       eps=None) -> torch.Tensor:
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

    def global_mean(self, *values: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Batch means over the global batch (all ranks); the inputs themselves when single-process.

        For state updates (τ, w, L⁰, λ) that must be identical on every rank. Detached.
        """
        if self.world_size == 1:
            return tuple(v.detach() for v in values)
        return tuple(self.reduce_mean(torch.stack([v.detach().float() for v in values])).unbind(0))

    def global_max(self, *values: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Maxima over the global batch (all ranks) of 0-d per-rank values, e.g. a batch's largest
        entropy (a minimum is ``-global_max(-v)``); the inputs themselves when single-process. Detached."""
        if self.world_size == 1:
            return tuple(v.detach() for v in values)
        return tuple(self.reduce_max(torch.stack([v.detach().float() for v in values])).unbind(0))

    def global_masked_mean(self, local_mean: torch.Tensor, local_count: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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

    def _scalar(self, value: float) -> torch.Tensor:
        """A 0-d float32 tensor on the method's device."""
        return torch.tensor(float(value), dtype=torch.float32, device=self.device)
