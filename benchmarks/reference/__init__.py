"""A faithful re-implementation of the reference CIARD training step, for bench_train.py.

Written by us from docs/method.md and the public code's structure (no code copied): it
computes the same mathematics as ``ciard_fast.methods.ciard.CIARD`` and pays the reference's
costs — a per-image PIL loader with no workers (``loader``), a plain eager PGD loop (``attack``),
losses as separate eager ops with data-dependent shapes (``losses``), ~11 host syncs, Python-float
state and an extra unused teacher forward (``step``). Speed claims are measured against it.
"""
from .attack import pgd_ce
from .loader import ReferenceLoader, to_device
from .step import ReferenceCIARD

__all__ = ["ReferenceCIARD", "ReferenceLoader", "pgd_ce", "to_device"]
