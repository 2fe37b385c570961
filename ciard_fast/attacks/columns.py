"""The columns of the evaluation table, one registered entry each.

A column is a name, the heading tables print for it, its hyperparameters (what `attack_params`
may change) and the function that attacks one batch. :func:`ciard_fast.evaluate`, the
`test_attacks` of a training run, ``results.json`` and every Markdown table pick registered columns
up by name, so a new column is one file with one registration:

    from ciard_fast.attacks.columns import register_attack

    @register_attack("pgd50", label="PGD-50", defaults=lambda eps, seed: {"eps": eps, "alpha": 2 / 255,
                     "steps": 50}, overridable=("steps",))
    def pgd50(model, x, y, params, ctx):
        return pgd(model, x, y, eps=params["eps"], alpha=params["alpha"], steps=params["steps"],
                   generator=ctx.generator)

    ciard_fast.evaluate(model, data, attacks=("clean", "pgd50"))

The attack function returns the adversarial images x_adv (not the correctness): the evaluator
then asserts that every x_adv is finite, in [0, 1] and within ε of x before it scores it, so no
column can report a number for images outside the threat model. Its params must hold "eps".
"worst" is not a column here: it is the per-example AND of all columns that ran.

A transfer (black-box) column registers with ``surrogate=True``: it crafts its images on
``ctx.surrogate`` (the model given as ``evaluate(..., surrogate=...)``) and the evaluator scores
them on the evaluated model; ``seed_of="pgd_trades"`` gives it the random-start stream of its
white-box twin, so the two columns differ only in the model the gradients come from.
"""
import dataclasses
from typing import Callable, Optional, Tuple

import torch

from ..registry import Registry
from .autoattack import autoattack, import_autoattack, standard_attacks
from .cw import cw_inf
from .fgsm import fgsm
from .pgd import pgd

__all__ = ["EvalAttack", "AttackContext", "register_attack", "get_attack", "list_attacks", "ATTACK_REGISTRY",
           "WORST", "WORST_LABEL"]

WORST = "worst"
WORST_LABEL = "Worst"
ATTACK_REGISTRY = Registry("attack")


@dataclasses.dataclass(frozen=True)
class EvalAttack:
    """One evaluation column.

    name: the key (``report.accuracy[name]``, `test_attacks`, ``results.json``).
    label: its table heading ("PGD-SAT").
    run: ``run(model, x, y, params, ctx) -> x_adv`` on one batch: x [B, C, H, W] in [0, 1], y [B]
        int64, params the column's hyperparameters (after overrides), ctx an :class:`AttackContext`.
    defaults: ``defaults(eps, seed) -> dict`` of hyperparameters (reported in the EvalReport);
        must contain "eps" unless the column is "clean".
    overridable: the keys `attack_params` may change.
    order: position in tables and in the evaluation (ascending; built-ins 0-40, new columns
        100 + their registration index, AutoAttack 1000: last, so it can run on the examples
        robust to every other column).
    seed_index: its random start generator is seeded with ``seed + 1000·seed_index`` (a column
        does not depend on which others run).
    available: optional ``() -> None`` raising ImportError when the column cannot run here (it
        is then skipped with a warning, or the error is raised when strict).
    needs_surrogate: a transfer column: it crafts on ``ctx.surrogate`` (evaluate's `surrogate`,
        required then) and only scores on the evaluated model.
    """

    name: str
    label: str
    run: Callable
    defaults: Callable
    overridable: Tuple[str, ...] = ()
    order: float = 100.0
    seed_index: int = 0
    available: Optional[Callable] = None
    needs_surrogate: bool = False


@dataclasses.dataclass
class AttackContext:
    """What a column's `run` may use besides its params: the column's own seeded `generator`
    (on x's device), `robust` (bool [B]: examples correct under every column so far),
    `batch_size` (the evaluation's), `robust_only` (evaluate's aa_on_robust_only), `surrogate`
    (the model transfer columns craft on; None when the evaluation has none)."""

    generator: torch.Generator
    robust: torch.Tensor
    batch_size: int
    robust_only: bool = False
    surrogate: Optional[Callable] = None


def register_attack(name, label=None, defaults=None, overridable=(), order=None, available=None, run=None,
                    surrogate=False, seed_of=None):
    """Register an evaluation column; a decorator of ``run(model, x, y, params, ctx) -> x_adv``
    (or pass `run`). `label` defaults to `name`; `defaults` to ``{"eps": eps}``. `surrogate=True`:
    a transfer column (crafts on ``ctx.surrogate``). `seed_of`: a registered column whose random
    start stream this one shares (its seed_index). Returns `run`."""
    if defaults is None:
        def defaults(eps, seed):
            return {"eps": eps}
    if not callable(defaults):
        raise TypeError(f"register_attack({name!r}): defaults must be a callable (eps, seed) -> dict, got {defaults!r}")
    if name == WORST:
        raise ValueError(f"{WORST!r} is the per-example AND of all columns, not an attack; choose another name")

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"register_attack({name!r}) needs a callable run(model, x, y, params, ctx), got {fn!r}")
        taken = ATTACK_REGISTRY.get(name) if name in ATTACK_REGISTRY else None
        index = taken.seed_index if taken is not None else len(ATTACK_REGISTRY.names())
        position = order if order is not None else 100.0 + index
        seed_index = get_attack(seed_of).seed_index if seed_of is not None else index
        entry = EvalAttack(name=name, label=label or name, run=fn, defaults=defaults,
                           overridable=tuple(overridable), order=float(position), seed_index=seed_index,
                           available=available, needs_surrogate=bool(surrogate))
        if taken is not None and taken.run is fn:
            return fn  # the same registration again (a module imported twice)
        ATTACK_REGISTRY.register(name, entry)
        return fn

    return decorator if run is None else decorator(run)


def list_attacks():
    """Registered column names in table order."""
    return sorted(ATTACK_REGISTRY.names(), key=lambda n: ATTACK_REGISTRY.get(n).order)


def get_attack(name):
    """The :class:`EvalAttack` registered as `name`; ValueError listing the valid names otherwise."""
    if isinstance(name, str) and name in ATTACK_REGISTRY:
        return ATTACK_REGISTRY.get(name)
    import difflib

    close = difflib.get_close_matches(str(name), list_attacks(), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown attack {name!r}; choose from {', '.join(list_attacks())}{hint}")


# ---- the standard table (the robust-distillation literature's columns) ------------------------------
def _clean(model, x, y, params, ctx):
    return x


def _fgsm(model, x, y, params, ctx):
    return fgsm(model, x, y, eps=params["eps"])


def _pgd(model, x, y, params, ctx):
    return pgd(model, x, y, eps=params["eps"], alpha=params["alpha"], steps=params["steps"],
               random_start=params["random_start"], loss=params["loss"], generator=ctx.generator)


def _cw(model, x, y, params, ctx):
    return cw_inf(model, x, y, eps=params["eps"], alpha=params["alpha"], steps=params["steps"], kappa=params["kappa"])


def _aa(model, x, y, params, ctx):
    kwargs = dict(eps=params["eps"], version=params["version"], seed=params["seed"], norm=params["norm"],
                  batch_size=params.get("batch_size", ctx.batch_size))
    if params["version"] == "custom" or params["attacks"] != standard_attacks(params["version"]):
        kwargs["attacks_to_run"] = params["attacks"]
    if not ctx.robust_only:
        return autoattack(model, x, y, **kwargs)
    # Boolean indexing syncs; this is evaluation, not a training step.
    idx = ctx.robust.nonzero().squeeze(1)
    x_adv = x.clone()
    if idx.numel():
        x_adv[idx] = autoattack(model, x[idx], y[idx], **kwargs)
    return x_adv


register_attack("clean", "Clean", defaults=lambda eps, seed: {}, order=0, run=_clean)
register_attack("fgsm", "FGSM", overridable=("eps",), order=10, run=_fgsm,
                defaults=lambda eps, seed: {"eps": eps, "alpha": eps, "steps": 1, "random_start": None, "loss": "ce"})
register_attack("pgd_sat", "PGD-SAT", overridable=("eps", "alpha", "steps", "random_start"), order=20, run=_pgd,
                defaults=lambda eps, seed: {"eps": eps, "alpha": 2 / 255, "steps": 20, "random_start": "uniform",
                                            "loss": "ce"})
register_attack("pgd_trades", "PGD-TRADES", overridable=("eps", "alpha", "steps", "random_start"), order=30,
                run=_pgd, defaults=lambda eps, seed: {"eps": eps, "alpha": 0.003, "steps": 20,
                                                      "random_start": "uniform", "loss": "ce"})
register_attack("cw", "CW∞", overridable=("eps", "alpha", "steps", "kappa"), order=40, run=_cw,
                defaults=lambda eps, seed: {"eps": eps, "alpha": 2 / 255, "steps": 30, "random_start": None,
                                            "loss": "cw", "kappa": 50.0})
# AutoAttack is by far the most expensive column and may run on a subset (robust_only), so it
# runs last, once every other column of the batch is known.
register_attack("aa", "AA", overridable=("eps", "version", "attacks_to_run", "batch_size", "norm", "seed"),
                order=1000, run=_aa, available=import_autoattack,
                defaults=lambda eps, seed: {"eps": eps, "version": "standard", "attacks": standard_attacks("standard"),
                                            "norm": "Linf", "seed": seed})

# The built-in columns, in table order (the default of evaluate()).
BUILTIN = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw", "aa")
