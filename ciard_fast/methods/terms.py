"""Loss terms as data: what a step has computed (`StepContext`), named terms, and their sum.

A method's step fills a :class:`StepContext` (the clean batch x, its adversarial example x', the
labels y and the logits of each network on each input, by role) and sums named loss terms with
a :class:`LossSum`; every term it adds is logged under its name. A term that several methods use
is a :class:`LossTerm` in one file: it reads what it needs from the context (and may run the
context's networks on new inputs) and returns a 0-d tensor, so a method adds it with one line::

    total = LossSum()
    total.add("L_adv", L_adv, weight=self.weights[0])
    total.subtract("L_push", push_objective, weight=self.push_lambda, logged=L_push)
    total.add_term(SomeSharedTerm(alpha=0.5), ctx)
    return total.output()   # {"loss": Σ, "L_adv": ..., "L_push": ..., "some_shared_term": ...}

The output follows the `training_step` return contract (`Method.training_step`): "loss" is the
0-d tensor to backpropagate; every other entry is a detached 0-d tensor that the engine logs.
No function here reads a value on the host.
"""
import dataclasses
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["StepContext", "LossTerm", "LossSum", "NAT", "ADV"]

NAT, ADV = "nat", "adv"   # the two inputs of a step: x (clean) and x' (adversarial)

Weight = Union[None, float, torch.Tensor]


@dataclasses.dataclass
class StepContext:
    """One training step's inputs and logits, by role.

    Attributes:
        x: the clean batch [B, C, H, W] in [0, 1]; y: its labels [B] int64.
        x_adv: the adversarial example x' (like x), or None for a method without an attack.
        logits: (role, input) -> logits [B, K], input "nat" (x) or "adv" (x'); e.g.
            ``ctx.logits["student", "adv"]`` = S(x'), ``ctx.logits["robust_teacher", "nat"]`` = R(x).
            Teacher logits are detached (no gradient) unless the method trains that network.
        networks: role -> module of every network of the run ("student" included), for terms that
            evaluate a network on inputs of their own (e.g. x ± δ).
        epoch: the current epoch (from 1); epochs: the run's length.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_adv: Optional[torch.Tensor] = None
    logits: Dict[Tuple[str, str], torch.Tensor] = dataclasses.field(default_factory=dict)
    networks: Mapping[str, nn.Module] = dataclasses.field(default_factory=dict)
    epoch: int = 1
    epochs: int = 1

    def __getitem__(self, key: Tuple[str, str]) -> torch.Tensor:
        """``ctx[role, input]``: the logits of network `role` on input "nat" or "adv"; a KeyError
        naming what the step did compute when it did not compute these."""
        try:
            return self.logits[key]
        except KeyError:
            have = ", ".join(f"{r}/{i}" for r, i in self.logits) or "none"
            raise KeyError(f"this step computed no logits for {key[0]}/{key[1]} (it has: {have})") from None

    @property
    def delta(self) -> torch.Tensor:
        """x' − x (the perturbation), [B, C, H, W]."""
        if self.x_adv is None:
            raise ValueError("this step has no adversarial example (x_adv is None)")
        return self.x_adv - self.x


class LossTerm:
    """A named loss term shared by several methods: ``term(ctx) -> 0-d tensor`` (with gradient).

    Subclasses set `name` (the key it is logged under) and implement `__call__`. A term that
    methods switch on through their options (a plug-in, e.g. IGDM's ``igdm_alpha``) also sets
    `Options`, a `MethodOptions` mixin declaring those options once, and `from_options`, which
    builds the term from a method's options (None: off). A method lists such terms in its
    `shared_terms`, derives its `Options` from theirs, and calls `Method.add_shared_terms` at the
    end of its step. `weight(ctx)` may schedule the term (e.g. α·epoch/E). No host sync.
    """

    name: str = "term"
    Options: Optional[type] = None

    @classmethod
    def from_options(cls, options) -> Optional["LossTerm"]:
        """The term for a method's `options`, or None when they switch it off (default: always on)."""
        return cls()

    def weight(self, ctx: StepContext) -> Weight:
        """Its weight in the step's sum (None: 1)."""
        return None

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError


class LossSum:
    """The objective of one step as a sum of named terms, each logged (see the module docstring).

    The sum is formed in the order the terms are added: ``total = w₀·t₀; total = total ± wᵢ·tᵢ``,
    with no multiplication where the weight is None (a weight of one).
    """

    def __init__(self) -> None:
        self._total: Optional[torch.Tensor] = None
        self._logged: Dict[str, torch.Tensor] = {}

    def _name(self, name: str) -> str:
        if not isinstance(name, str) or not name or name == "loss":
            raise ValueError(f"a loss term needs a name other than 'loss', got {name!r}")
        if name in self._logged:
            raise ValueError(f"loss term {name!r} added twice in one step")
        return name

    def _accumulate(self, value: torch.Tensor, weight: Weight, sign: int) -> None:
        part = value if weight is None else weight * value
        if self._total is None:
            self._total = part if sign > 0 else -part
        else:
            self._total = self._total + part if sign > 0 else self._total - part

    def add(self, name: str, value: torch.Tensor, weight: Weight = None,
            logged: Optional[torch.Tensor] = None) -> "LossSum":
        """total += weight·value; logs `logged` (default: value, detached) under `name`."""
        self._logged[self._name(name)] = (value if logged is None else logged).detach()
        self._accumulate(value, weight, +1)
        return self

    def subtract(self, name: str, value: torch.Tensor, weight: Weight = None,
                 logged: Optional[torch.Tensor] = None) -> "LossSum":
        """total −= weight·value (a term the student is pushed away from); logged as `add`."""
        self._logged[self._name(name)] = (value if logged is None else logged).detach()
        self._accumulate(value, weight, -1)
        return self

    def add_term(self, term: LossTerm, ctx: StepContext, weight: Weight = None) -> "LossSum":
        """Evaluate a shared `LossTerm` on the step's context and add it under its name, weighted
        by `weight` (default: the term's own `weight(ctx)`)."""
        return self.add(term.name, term(ctx), term.weight(ctx) if weight is None else weight)

    def log(self, name: str, value: torch.Tensor) -> "LossSum":
        """Log a value that is not part of the objective (a count, a subtotal), detached."""
        self._logged[self._name(name)] = value.detach()
        return self

    def subtotal(self) -> torch.Tensor:
        """The sum so far, detached (e.g. the student's objective before a teacher's own term)."""
        if self._total is None:
            raise ValueError("LossSum.subtotal(): no term was added yet")
        return self._total.detach()

    def output(self) -> Dict[str, torch.Tensor]:
        """{"loss": the sum, name: logged value, ...}: the `training_step` return value."""
        if self._total is None:
            raise ValueError("LossSum.output(): no term was added")
        return {"loss": self._total, **self._logged}
