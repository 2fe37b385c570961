"""Attacks and the evaluation suite.

- :func:`pgd` (``pgd.py``): L∞ PGD with CE / KL / CW losses, uniform or normal start.
- :func:`fgsm` (``fgsm.py``), :func:`cw_inf` (``cw.py``), :func:`autoattack` (``autoattack.py``),
  :func:`square` (``square.py``, the Square Attack through pyautoattack).
- transfer columns (``transfer.py``): PGD-TRADES and CW∞ crafted on a surrogate model.
- ``protocols.py``: the named column sets of :func:`evaluate` ("standard", "ciard-paper").
- :func:`evaluate` (``evaluate.py``) -> :class:`EvalReport` (``report.py``): the standard table,
  whose columns are registered entries (``columns.py``: :func:`register_attack` adds one).
- ``checks.py``: the sanity checks of an evaluation; ``validate.py``: argument validation.

Note: the submodules ``pgd``, ``fgsm`` and ``evaluate`` share their function's name; this package
exposes the *functions* (``ciard_fast.attacks.pgd`` is the function). Reach a module with
``importlib.import_module("ciard_fast.attacks.pgd")`` or ``from ciard_fast.attacks.pgd import ...``.
"""
from .autoattack import autoattack
from .checks import (AdversarialCheckError, assert_valid_adversarial, check_eps_monotone, check_model_sanity,
                     check_steps_monotone, EvaluationCheckError, EvaluationWarning)
from .cw import cw_inf
from .columns import list_attacks, register_attack
from .evaluate import ATTACKS, evaluate
from .fgsm import fgsm
from .objectives import cw_margin
from .pgd import pgd
from .protocols import PROTOCOLS
from .report import EvalReport
from .square import square

__all__ = [
    "pgd", "fgsm", "cw_inf", "autoattack", "evaluate", "EvalReport", "ATTACKS", "cw_margin",
    "AdversarialCheckError", "EvaluationCheckError", "EvaluationWarning", "assert_valid_adversarial",
    "check_model_sanity", "check_steps_monotone", "check_eps_monotone", "list_attacks", "register_attack",
    "square", "PROTOCOLS",
]
