"""The standard robustness evaluation of docs/evaluation.md in one call.

    >>> report = ciard_fast.evaluate(model.eval(), ciard_fast.load_dataset("cifar10", split="test"))
    >>> print(report)                      # Markdown table
    >>> report.accuracy["pgd_sat"], report.accuracy["worst"]
    >>> report.save_json("eval.json")
"""
import datetime
import time
import warnings

import torch

from ..version import __version__
from .autoattack import AA_VERSIONS, standard_attacks
from .checks import (assert_valid_adversarial, check_attack_ordering, check_model_sanity, check_surrogate,
                     EvaluationCheckError, EvaluationWarning)
from .columns import BUILTIN, WORST, AttackContext, get_attack, list_attacks
from .progress import Progress
from .protocols import get_protocol
from .report import EvalReport
from .validate import check_choice, check_images, check_labels, check_labels_in_range, check_logits, check_radius

__all__ = ["evaluate", "ATTACKS", "DEFAULT_ATTACKS", "default_hyperparameters"]

# The built-in columns (each a registered entry of attacks/columns.py, where new ones register).
ATTACKS = BUILTIN
DEFAULT_ATTACKS = ATTACKS


def default_hyperparameters(eps=8 / 255, seed=0):
    """The settings of every registered column (the standard table of docs/evaluation.md for the
    built-in ones); the step sizes are fixed. FGSM's step is ε by definition; CW∞'s start and loss
    are what make it CW∞, so `attack_params` cannot change them."""
    params = {}
    for name in list_attacks():
        value = get_attack(name).defaults(eps, seed)
        if not isinstance(value, dict):
            raise TypeError(f"the defaults of evaluation column {name!r} must return a dict of hyperparameters, "
                            f"got {type(value).__name__}; fix its register_attack(..., defaults=...)")
        params[name] = dict(value)
    return params


class _CountingModel(torch.nn.Module):
    """Counts forward passes (in examples) of the wrapped model; everything else is the model's."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.examples = 0
        # Mirror the wrapped model's flag without recursing into it (a plain wrapper has no layers).
        self.training = bool(getattr(model, "training", False))

    def forward(self, x):
        self.examples += x.shape[0]
        return self.model(x)


def _resolve_device(model, device):
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    model_device = params[0].device if params else None
    if device is None:
        return model_device if model_device is not None else torch.device("cpu")
    device = torch.device(device)
    if model_device is not None and model_device.type != device.type:
        raise ValueError(f"device={str(device)!r} but the model's parameters are on {model_device}; move the model "
                         f"with model.to({str(device)!r}) or pass device=None")
    return device


def _check_int(value, name, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return value


def _batches(data, batch_size, n, device):
    """Yield (x float [0,1] NCHW, y int64) on `device`, at most `n` examples; also return a length hint."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = torch.as_tensor(data.images), torch.as_tensor(data.labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"dataset.images must be uint8 NHWC [N, H, W, C], got dtype {images.dtype} and shape "
                             f"{tuple(images.shape)}")
        total = labels.shape[0] if n is None else min(n, labels.shape[0])

        def gen():
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                xb = images[start:stop].to(device).permute(0, 3, 1, 2).float().div_(255)
                yield xb.contiguous(), labels[start:stop].to(device).long()
        return gen(), -(-total // batch_size)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"(x, y) must have the same length, got {x.shape[0]} images and {y.shape[0]} labels")
        total = x.shape[0] if n is None else min(n, x.shape[0])

        def gen():
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                yield x[start:stop].to(device), y[start:stop].to(device)
        return gen(), -(-total // batch_size)
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(f"dataset_or_loader must be an ImageDataset (.images, .labels), an (x, y) tuple of tensors "
                        f"or an iterable of (x, y) batches, got {type(data).__name__}") from None
    try:
        hint = len(data)
    except TypeError:
        hint = None

    def gen():
        seen = 0
        for batch in iterator:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise TypeError(f"each batch must be an (x, y) pair, got {type(batch).__name__}")
            xb, yb = batch[0], batch[1]
            if n is not None:
                if seen >= n:
                    return
                xb, yb = xb[:n - seen], yb[:n - seen]
            seen += xb.shape[0]
            yield xb.to(device), yb.to(device)
    return gen(), hint


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(model, dataset_or_loader, attacks=None, eps=8 / 255, batch_size=256, n=None, strict=False,
             device=None, progress=True, seed=0, attack_params=None, aa_on_robust_only=False, surrogate=None,
             protocol="standard", surrogate_name=None):
    """Evaluate `model` under the standard table of docs/evaluation.md and return an :class:`EvalReport`.

    Args:
        model: ``nn.Module`` (or callable) mapping [B, C, H, W] images in [0, 1] to logits [B, K]
            (normalisation inside the model). Put it in eval mode: a model in train mode is
            evaluated as it is, with a warning (an error when `strict`).
        dataset_or_loader: an ImageDataset (``.images`` uint8 [N, H, W, C], ``.labels`` int64 [N]),
            an ``(x, y)`` tuple of tensors (x float [N, C, H, W] in [0, 1]), or an iterable of
            (x, y) batches such as ``DeviceLoader(dataset, batch_size)``.
        attacks: column names (a sequence or a comma-separated string) from "clean", "fgsm",
            "pgd_sat" (20 × 2/255, uniform start), "pgd_trades" (20 × 0.003, uniform start), "cw"
            (CW∞, 30 × 2/255, κ = 50, zero init), "aa" (AutoAttack standard), "square" (the
            score-based Square Attack, 5000 queries), the transfer columns "transfer_pgd" (BB
            PGD-TRADES) and "transfer_cw" (BB CW∞), crafted on `surrogate`, and any column
            registered with `ciard_fast.attacks.columns.register_attack`. "clean" is always
            reported. Default (None): the protocol's columns.
        protocol: "standard" (default: Clean, FGSM, PGD-SAT, PGD-TRADES, CW∞, AA) or
            "ciard-paper": the nine columns of the CIARD paper in its order, with its authors'
            settings (Clean, FGSM, PGD-SAT, PGD-TRADES, CW∞, BB PGD-TRADES, Square with 100
            queries, BB CW∞, AA; needs `surrogate`). A protocol other than "standard" fixes the
            columns: `attacks` must then be None (`attack_params` still apply, and are reported).
        surrogate: the model transfer columns craft their images on (e.g. the robust teacher as
            loaded before distillation, ``ciard_fast.load_robustbench("Zhang2019Theoretically")``):
            a callable taking the same [0, 1] images and returning logits over the same classes,
            in eval mode, on `device`. Required when a transfer column runs (ValueError naming
            `surrogate` otherwise). ``surrogate=model`` makes each transfer column equal its
            white-box twin example by example (same random start).
        surrogate_name: how the report names the surrogate (default: its class name).
        eps: L∞ radius in [0, 1]. Default 8/255. Step sizes stay those of the table.
        batch_size: examples per batch for a dataset or tuple (a loader keeps its own). Default 256.
        n: evaluate only the first n examples (None: all).
        strict: raise EvaluationCheckError instead of warning on a failed sanity check, and raise
            ImportError instead of skipping AA when pyautoattack is missing.
        device: where to run (default: the model's device). The model is not moved.
        progress: a progress line on stderr. seed: seeds every attack's random start (each column
            its own generator, so a column does not depend on which others run) and AutoAttack.
        attack_params: optional overrides, column -> dict, e.g. ``{"pgd_sat": {"steps": 50}}`` or
            ``{"aa": {"attacks_to_run": ["apgd-ce"]}}`` (reported in the hyperparameters).
        aa_on_robust_only: run AutoAttack only on the examples that survived every other column
            (cheaper). The AA column then reports AA ∧ all other columns; the worst column is the
            same either way. Default False: AA's own accuracy, on every example (AutoAttack itself
            attacks only the correctly classified ones).

    Returns:
        EvalReport with ``accuracy[column]``, ``correct``, ``hyperparameters``, ``forwards``,
        ``seconds``, ``warnings`` and a "worst" column.

    How "worst" is computed: every attack runs on every example, so each column is that attack's
    own accuracy; an example counts as robust in "worst" only if it is classified correctly under
    every column (a per-example AND) — the transfer and Square columns included.

    Forward counts: ``report.forwards[column]`` counts the evaluated model's forwards (in
    examples); a transfer column's forwards on the surrogate are in ``report.surrogate_forwards``.

    Non-finite logits anywhere (e.g. a model with NaN weights) raise EvaluationCheckError when
    `strict`, else warn; every batch's labels are checked to be < the model's classes.

    Checks (docs/evaluation.md "Rules"): each x_adv is asserted finite, in [0, 1] and within ε (+1e-6)
    of x — :class:`AdversarialCheckError` whatever `strict`; train mode, probability outputs, zero
    input gradients and a non-deterministic forward (checked on the first batch) and PGD accuracy
    above FGSM accuracy are warnings (EvaluationWarning, also listed in ``report.warnings``) or
    errors when `strict`.
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    chosen = get_protocol(protocol)
    if attacks is None:
        attacks = chosen.columns
    elif protocol != "standard":
        raise ValueError(f"protocol={protocol!r} fixes the columns ({', '.join(chosen.columns)}); pass attacks=None, "
                         f"or protocol='standard' with your own attacks")
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    attacks = list(attacks)
    if not attacks:  # e.g. attacks="" or "," from a script: not silently the clean column alone
        raise ValueError("attacks lists no column; give at least one, e.g. 'clean' or 'clean,pgd_sat' (clean is "
                         "always reported)")
    for name in attacks:
        get_attack(name)
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks lists a column twice: {attacks}")
    transfer = [name for name in attacks if get_attack(name).needs_surrogate]
    if transfer and surrogate is None:
        raise ValueError(f"the transfer column(s) {', '.join(transfer)} craft their images on a surrogate model: pass "
                         f"surrogate= (e.g. the robust teacher as loaded before distillation; ciard-fast eval "
                         f"--surrogate PATH or robustbench:NAME), or drop them from attacks")
    if surrogate is not None and not callable(surrogate):
        raise TypeError(f"surrogate must be a callable model, got {type(surrogate).__name__}")
    if isinstance(eps, torch.Tensor):
        raise TypeError("evaluate takes one float eps (the table's radius), got a tensor")
    check_radius(eps, 1, "eps")
    eps = float(eps)
    batch_size = _check_int(batch_size, "batch_size", 1)
    n = _check_int(n, "n", 1, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    device = _resolve_device(model, device)

    entries = {name: get_attack(name) for name in set(attacks) | {"clean"}}
    columns = sorted(entries, key=lambda c: entries[c].order)
    params = default_hyperparameters(eps, seed)
    for column, settings in chosen.params.items():
        params[column].update(settings)
    registered = set(params)
    for column, overrides in (attack_params or {}).items():
        allowed = set(get_attack(column).overridable) if column in registered else set()
        if not allowed:
            raise ValueError(f"attack_params names unknown or parameter-free column {column!r}")
        unknown = set(overrides) - allowed
        if unknown:
            raise ValueError(f"attack_params[{column!r}] cannot set {sorted(unknown)}; "
                             f"allowed: {sorted(allowed)}")
        params[column].update(overrides)
    if "attacks_to_run" in params["aa"]:
        params["aa"]["attacks"] = list(params["aa"].pop("attacks_to_run"))
    check_choice(params["aa"]["version"], "AutoAttack version", AA_VERSIONS)
    hyper = {c: dict(params[c]) for c in columns}

    found = []  # non-fatal findings, in order
    skipped = {}
    notes = ["worst: an example is robust only if it is classified correctly under every column; every column is "
             "computed on every example (its own accuracy)"]
    if protocol != "standard":
        notes.append(f"protocol {protocol}: {chosen.source}"
                     + (f"; attack_params changed {sorted(attack_params)}" if attack_params else ""))
    surrogate_label = ""
    if transfer:
        surrogate_label = surrogate_name or type(surrogate).__name__
        for column in transfer:
            hyper[column]["surrogate"] = surrogate_label
        notes.append(f"{', '.join(transfer)}: transfer attacks crafted on the surrogate {surrogate_label} and scored "
                     f"on the evaluated model (its forwards on the surrogate are counted apart)")
    for column in list(columns):
        if entries[column].available is None:
            continue
        try:
            entries[column].available()
        except ImportError as err:
            if strict:
                raise
            skipped[column] = str(err)
            what = "AutoAttack" if column == "aa" else entries[column].label
            message = f"{what} column skipped: {err}"
            found.append(message)
            warnings.warn(message, EvaluationWarning, stacklevel=2)
            columns.remove(column)
            del hyper[column]
    if "aa" in columns:
        if aa_on_robust_only:
            hyper["aa"]["subset"] = "robust to all other columns"
            notes.append("aa: AutoAttack ran only on the examples robust to every other column, so the AA column "
                         "is the accuracy under AA and all other columns together (equal to worst)")
        version = hyper["aa"]["version"]
        if version == "custom" or hyper["aa"]["attacks"] != standard_attacks(version):
            notes.append(f"aa: only {hyper['aa']['attacks']} were run — not AutoAttack's {hyper['aa']['version']} "
                         f"number")

    counted = _CountingModel(model)
    counted_surrogate = _CountingModel(surrogate) if transfer else None
    generators = {c: torch.Generator(device=device).manual_seed(seed + 1000 * entries[c].seed_index) for c in columns}
    correct = {c: torch.zeros((), dtype=torch.long, device=device) for c in columns + [WORST]}
    forwards = {c: 0 for c in columns}
    surrogate_forwards = {c: 0 for c in columns if entries[c].needs_surrogate}
    seconds = {c: 0.0 for c in columns}
    total = 0

    batches, num_batches = _batches(dataset_or_loader, batch_size, n, device)
    bar = Progress(total=None if num_batches is None else num_batches * len(columns), enabled=progress)
    t_start = time.perf_counter()
    first = True
    # AND of "every logit was finite" over all forwards that decide a column, on the device
    # (read once at the end): a model with NaN weights must not report 10 % as an accuracy.
    finite = torch.ones((), dtype=torch.bool, device=device)
    for xb, yb in batches:
        check_images(xb, "x")
        check_labels(yb, xb.shape[0], "y")
        if xb.shape[0] == 0:
            continue
        if first:
            with torch.no_grad():
                probe = model(xb[:2])
            check_logits(probe, xb[:2].shape[0])  # one logits tensor, not a tuple: said here, not deep inside
            num_classes = probe.shape[1]
        # Every batch, not only the first: a label >= K later on would silently count as an error.
        check_labels_in_range(yb, num_classes)
        if first:
            findings = check_model_sanity(model, xb, yb, strict=strict)
            found.extend(findings)
            if counted_surrogate is not None:
                found.extend(check_surrogate(surrogate, xb, num_classes, strict=strict))
            first = False
        robust = torch.ones(xb.shape[0], dtype=torch.bool, device=device)
        for column in columns:
            _sync(device)
            t0 = time.perf_counter()
            before = counted.examples
            before_surrogate = counted_surrogate.examples if counted_surrogate is not None else 0
            p = hyper[column]
            context = AttackContext(generator=generators[column], robust=robust, batch_size=batch_size,
                                    robust_only=aa_on_robust_only and column == "aa",
                                    surrogate=counted_surrogate if entries[column].needs_surrogate else None)
            x_adv = entries[column].run(counted, xb, yb, p, context)
            if column != "clean":
                # every column's images are checked against the threat model before they are scored
                assert_valid_adversarial(x_adv, xb, p.get("eps", eps), name=column)
            with torch.no_grad():
                logits = counted(x_adv)
                finite &= torch.isfinite(logits).all()
                ok = logits.argmax(dim=1) == yb
            if column == "aa" and aa_on_robust_only:
                ok &= robust
            robust &= ok
            correct[column] += ok.sum()
            forwards[column] += counted.examples - before
            if column in surrogate_forwards:
                surrogate_forwards[column] += counted_surrogate.examples - before_surrogate
            _sync(device)
            seconds[column] += time.perf_counter() - t0
            bar.update(1, column)
        correct[WORST] += robust.sum()
        total += xb.shape[0]
    bar.close()
    if total == 0:
        raise ValueError("dataset_or_loader yielded no examples")

    if not bool(finite.item()):
        message = ("the model returned non-finite logits (NaN or inf; e.g. NaN weights from a diverged run): "
                   "every accuracy below is meaningless")
        if strict:
            raise EvaluationCheckError(message)
        found.append(message)
        warnings.warn(message, EvaluationWarning, stacklevel=2)
    counts = {c: int(v.item()) for c, v in correct.items()}
    accuracy = {c: counts[c] / total for c in counts}
    found.extend(check_attack_ordering(accuracy, strict=strict))
    if skipped:
        notes.append(f"worst is over {', '.join(columns)} only (skipped: {', '.join(skipped)})")
    name = type(model).__name__
    return EvalReport(
        accuracy=accuracy, correct=counts, n=total, eps=eps, hyperparameters=hyper, forwards=forwards,
        seconds={c: round(s, 6) for c, s in seconds.items()}, total_seconds=round(time.perf_counter() - t_start, 6),
        skipped=skipped, warnings=found, notes=notes, device=str(device), seed=seed, strict=strict, model=name,
        version=__version__, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        protocol=protocol, surrogate=surrogate_label, surrogate_forwards=surrogate_forwards,
    )


# Re-exported so `from ciard_fast.attacks.evaluate import EvaluationCheckError` works for callers.
__all__ += ["EvaluationCheckError", "EvalReport"]
