"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv 2003.01690) through the ``pyautoattack`` package.

Install the optional dependency with ``pip install "ciard-fast[autoattack]"``.
"""
import logging
import sys
import warnings

import torch

from ._common import frozen_parameters, import_pyautoattack, preserved_rng
from .validate import check_choice, check_images, check_labels, check_labels_in_range, check_model, check_radius

__all__ = ["autoattack", "AA_ATTACKS", "AA_VERSIONS", "standard_attacks", "import_autoattack"]

AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def import_autoattack():
    """Return pyautoattack's ``AutoAttack`` class, or raise ImportError saying how to install it."""
    return import_pyautoattack("pyautoattack", "AutoAttack", "AutoAttack")


def standard_attacks(version="standard"):
    """The sub-attacks a version runs (AutoAttack's own lists), e.g. standard: APGD-CE, APGD-T, FAB-T, Square."""
    return {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
            "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
            "rand": ["apgd-ce", "apgd-dlr"]}[version]


def autoattack(model, x, y, eps=8 / 255, version="standard", batch_size=256, seed=0, attacks_to_run=None,
               verbose=False, norm="Linf"):
    """Run AutoAttack on (x, y) and return x_adv.

    Args:
        model: ``nn.Module`` (or callable) [B, C, H, W] -> logits [B, K]; evaluated in the mode it
            is in (put it in eval mode). Parameter ``requires_grad`` flags are switched off during
            the attack and restored (FAB calls ``.backward()``, which would otherwise write
            parameter ``.grad``).
        x: floating [B, C, H, W] in [0, 1]; y: int64 [B] in [0, K).
        eps: radius, a float in [0, 1] (AutoAttack has no per-sample radius). Default 8/255.
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square 5000 queries), "plus", "rand", or
            "custom" (then `attacks_to_run` is required).
        batch_size: AutoAttack's internal batch size (>= 1). Default 256.
        seed: AutoAttack's seed (int). AutoAttack reseeds torch's global RNG; the caller's global
            RNG state is restored afterwards.
        attacks_to_run: optional subset of ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t",
            "square"). With version "standard"/"plus"/"rand" the version's hyperparameters are kept
            and only these sub-attacks run (e.g. ``["apgd-ce"]`` for a quick check) — the result is
            then *not* AutoAttack's standard number.
        verbose: log AutoAttack's progress (to stderr) when True.
        norm: "Linf" (default), "L2" or "L1".

    Returns:
        x_adv: same shape/device as x (dtype float32 for float32 x). Examples AutoAttack did not
        break (or that were misclassified to begin with) are returned unchanged.

    With fewer than 10 classes the targeted attacks use K − 1 target classes instead of 9; with
    K < 4 APGD-T (whose targeted DLR loss needs 4 classes) and with K < 3 APGD-DLR are dropped,
    with a warning. Raises ImportError (with the install command) if pyautoattack is missing.
    """
    check_model(model)
    check_images(x)
    check_labels(y, x.shape[0])
    if isinstance(eps, torch.Tensor):
        raise TypeError("AutoAttack takes a single float eps, got a tensor; run per-radius groups separately")
    check_radius(eps, x.shape[0], "eps")
    check_choice(version, "version", AA_VERSIONS)
    check_choice(norm, "norm", ("Linf", "L2", "L1"))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if attacks_to_run is not None:
        if isinstance(attacks_to_run, str):
            attacks_to_run = [attacks_to_run]
        attacks_to_run = list(attacks_to_run)
        for name in attacks_to_run:
            check_choice(name, "AutoAttack sub-attack", AA_ATTACKS)
        if not attacks_to_run:
            raise ValueError("attacks_to_run is empty; pass None for the version's attacks or name at least one of "
                             + ", ".join(AA_ATTACKS))
    elif version == "custom":
        raise ValueError("version='custom' needs attacks_to_run, e.g. ['apgd-ce', 'square']")
    AutoAttack = import_autoattack()
    if x.shape[0] == 0:
        return x.detach().clone()

    with torch.no_grad():
        num_classes = model(x[:2]).shape[1]  # 2, not 1: a BatchNorm in train mode needs > 1 value
    check_labels_in_range(y, num_classes)
    attacks = list(attacks_to_run) if attacks_to_run is not None else standard_attacks(version)
    dropped = [a for a in attacks if (a == "apgd-t" and num_classes < 4) or (a == "apgd-dlr" and num_classes < 3)]
    if dropped:
        warnings.warn(f"AutoAttack: {', '.join(dropped)} dropped: the DLR loss needs >= 3 classes (targeted: >= 4), "
                      f"the model has {num_classes}", RuntimeWarning, stacklevel=2)
        attacks = [a for a in attacks if a not in dropped]
    if not attacks:
        raise ValueError(f"no AutoAttack sub-attack can run on a {num_classes}-class model with attacks "
                         f"{attacks_to_run}")

    x0 = x.detach()
    logger = logging.getLogger("auto-attack")
    handler = None
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.DEBUG)
    try:
        with frozen_parameters(model), preserved_rng(x0.device):
            if version == "custom":
                adversary = AutoAttack(model, attacks=attacks, device=x0.device, eps=float(eps), norm=norm,
                                       seed=seed, version="custom")
            else:
                # pyautoattack refuses attacks= with a named version; keep the version's settings and
                # narrow the list afterwards (what the original auto-attack did with a warning).
                adversary = AutoAttack(model, device=x0.device, eps=float(eps), norm=norm, seed=seed,
                                       version=version)
                adversary.attacks_to_run = attacks
            adversary.verbose = bool(verbose)
            targets = max(1, num_classes - 1)
            adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, targets)
            adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, targets)
            x_adv, _ = adversary.run_standard_evaluation(x0, y, batch_size=batch_size)
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    return x_adv.detach()
