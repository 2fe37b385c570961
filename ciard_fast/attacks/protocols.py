"""Named evaluation protocols: which columns a table has, and with which settings.

- ``"standard"``: the table of docs/evaluation.md (Clean, FGSM, PGD-SAT, PGD-TRADES, CW∞, AA),
  ``evaluate``'s default.
- ``"ciard-paper"``: the nine columns of the CIARD paper's tables, in its order, with the settings
  of its authors' evaluation script (``attack_eval.py``, github eminentgu/CIARD): Clean, FGSM,
  PGD-SAT, PGD-TRADES, CW∞, BB PGD-TRADES, Square (100 queries, as that script runs it: not
  AutoAttack's 5000), BB CW∞, AA (standard). The BB columns need a surrogate: the script crafts
  them on the robust teacher's original file (the TRADES WideResNet-34-10,
  ``robustbench:Zhang2019Theoretically``).
"""
import dataclasses
from typing import Tuple

from .columns import BUILTIN
# importing the modules registers their columns
from . import transfer  # noqa: F401
from .square import square  # noqa: F401

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "CIARD_PAPER_COLUMNS"]

CIARD_PAPER_COLUMNS = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw", "transfer_pgd", "square", "transfer_cw", "aa")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """name; columns (in table order); params: column -> settings that replace the column's
    defaults (before any `attack_params`); source: where the protocol comes from."""

    name: str
    columns: Tuple[str, ...]
    params: dict
    source: str


PROTOCOLS = {
    "standard": Protocol("standard", BUILTIN, {}, "docs/evaluation.md, the standard table"),
    "ciard-paper": Protocol("ciard-paper", CIARD_PAPER_COLUMNS, {"square": {"n_queries": 100}},
                            "the CIARD authors' attack_eval.py (github eminentgu/CIARD): Square with 100 queries, "
                            "BB columns crafted on the robust teacher's original file"),
}


def get_protocol(name):
    """The :class:`Protocol` `name`; ValueError listing the valid names otherwise."""
    if isinstance(name, str) and name in PROTOCOLS:
        return PROTOCOLS[name]
    raise ValueError(f"protocol must be one of {', '.join(map(repr, PROTOCOLS))}; got {name!r}")
