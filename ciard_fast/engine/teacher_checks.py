"""Teachers checked before they teach: validation accuracy, `auto` normalisation, weak-teacher stop.

A teacher given as a file carries no record of the input normalisation it was trained with: the
clean ResNet-56 of the public CIARD code was trained on raw [0, 1] pixels (RSLAD's transforms have
no Normalize), the public hub ResNet-56 (chenyaofo/pytorch-cifar-models) on normalised ones. A
wrong choice silently corrupts L_nat and the push mask. So before distillation every teacher is
evaluated on the held-out validation split (never the test set) — clean accuracy, and PGD for
the robust teacher — the result is printed and written to ``<out_dir>/teachers.json``::

    {"unit": "percent",
     "robust": {"path", "model", "normalize", "val_clean", "val_pgd", ...},
     "clean":  {"path", "model", "normalize", "val_clean", ...}}

(accuracies are in percent, as every table, ``results.json`` and the model card: the file says so
in its ``"unit"`` key; a file written before that key existed holds fractions in [0, 1] and is
converted when read, :func:`read_teachers_json`. ``"weak"`` says whether the clean accuracy is
under the threshold below). With ``normalize="auto"`` every candidate normalisation
(raw pixels, the dataset's statistics, each published statistics set of that dataset) is tried,
the most accurate one is kept, and the choice and every accuracy measured are recorded
(``"auto": {candidate: val_clean}``). An explicit normalisation is kept, but the other candidates
are measured too (``"alternatives"``) and one that beats it by more than 5 points is warned about.
A teacher whose clean accuracy is under 1.5× chance stops
the run with :class:`WeakTeacherError` unless ``allow_weak=True``: a teacher given as a file,
that is; one the run trained itself is reported as weak, with a warning, and distillation goes on.

This module only needs built models, a loader of the validation split and the attack settings;
it does not know how the engine builds or caches teachers.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Optional

import torch

from ..atomic import write_text_atomic
from ..models.normalization import AUTO, DATASET_STATS
from .validation import correct_clean_and_pgd

__all__ = ["AUTO", "WEAK_FACTOR", "TeacherToCheck", "WeakTeacherError", "normalization_candidates",
           "check_teachers", "describe_normalize", "read_teachers_json", "teacher_entries", "TEACHERS_JSON", "UNIT"]

WEAK_FACTOR = 1.5          # a teacher must beat chance by this factor on clean validation images
TEACHERS_JSON = "teachers.json"
UNIT = "percent"           # of every accuracy in teachers.json (its "unit" key)
BETTER_MARGIN = 5.0        # an explicit normalisation beaten by this many points is warned about


class WeakTeacherError(ValueError):
    """A teacher's clean validation accuracy is under WEAK_FACTOR × chance."""


@dataclasses.dataclass
class TeacherToCheck:
    """One teacher to evaluate.

    kind: "robust" (also evaluated under PGD) or "clean".
    model: the built ``nn.Module`` (weights loaded), taking [0, 1] images.
    path: where its weights came from (recorded as given).
    model_name: its registry name (recorded).
    normalize: the configured value (True, False, a statistics name) or "auto".
    candidates: for "auto", the normalize values to try (see `normalization_candidates`).
    set_normalize: for "auto", callable(value) that makes `model` apply normalisation `value`
        (True, False or a statistics name, as in the config).
    given_as_file: True for a checkpoint the user brought (a weak one stops the run); False for
        a teacher this run trained itself (its normalisation is known and its length was the
        user's choice: a weak one is reported and recorded, with a warning, but does not stop).
    zoo: for a RobustBench entry, its record (``ZooEntry.describe()`` and the file read):
        written to teachers.json under "robustbench"; its listed accuracies are printed beside the
        measured ones.
    """

    kind: str
    model: Any
    path: Optional[str]
    model_name: str
    normalize: Any
    candidates: tuple = ()
    set_normalize: Optional[Callable[[Any], None]] = None
    given_as_file: bool = True
    zoo: Optional[dict] = None


def describe_normalize(value):
    """A readable name of a normalize value: 'raw pixels', 'dataset statistics' or the name."""
    if value is False or value is None:
        return "raw pixels"
    if value is True:
        return "dataset statistics"
    return str(value)


def normalization_candidates(dataset_name, mean, std):
    """The normalize values `auto` tries, in order: False (raw [0, 1] pixels), True (the
    dataset's own mean/std), then each entry of DATASET_STATS whose name is the dataset's or
    starts with it (e.g. "cifar10", "cifar10_legacy") — skipping statistics equal to one already
    listed, so no candidate is measured twice."""
    candidates = [False, True]
    seen = [None, (tuple(float(m) for m in mean), tuple(float(s) for s in std))]
    for name, (m, s) in DATASET_STATS.items():
        if name == dataset_name or name.startswith(f"{dataset_name}_"):
            stats = (tuple(m), tuple(s))
            if not any(stats == other for other in seen):
                candidates.append(name)
                seen.append(stats)
    return candidates


def _json_value(value):
    return value if isinstance(value, (bool, str)) or value is None else str(value)


@torch.no_grad()
def _clean_accuracy(model, loader, precision_ctx):
    was_training = model.training
    model.eval()
    correct = None
    total = 0
    try:
        for x, y in loader:
            with precision_ctx():
                hits = (model(x).argmax(1) == y).sum()
            correct = hits if correct is None else correct + hits
            total += y.shape[0]
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the validation split is empty; teachers cannot be checked (use val_size > 0)")
    return 100.0 * float(correct) / total  # percent; one host read per check, outside any training step


def check_teachers(teachers, val_loader, *, num_classes, eps, alpha=2 / 255, pgd_steps=20, precision_ctx=None,
                   out_dir=None, allow_weak=False, seed=0, log=print):
    """Evaluate each teacher on the validation split, resolve `auto`, stop on a weak teacher.

    Args:
        teachers: TeacherToCheck objects (kinds "robust" and/or "clean").
        val_loader: iterable of (images [B, C, H, W] in [0, 1] on the models' device, labels [B]).
        num_classes: K, for the weak-teacher threshold WEAK_FACTOR / K.
        eps, alpha, pgd_steps: the robust teacher's PGD (uniform start, the model-selection attack).
        precision_ctx: callable returning a context (the run's autocast); default: none.
        out_dir: where teachers.json is written (atomically); None: not written.
        allow_weak: record and print a weak teacher instead of raising.
        seed: seed of the PGD start's own generator (the training RNG is not touched).
        log: where the one-line report of each teacher goes.

    Returns:
        the report dict (as written to teachers.json). Each teacher's model is left with the
        chosen normalisation applied.

    Raises:
        WeakTeacherError: a teacher given as a file has clean accuracy < WEAK_FACTOR / K (and not
            allow_weak); the message names the teacher, its accuracy and every normalisation
            tried. teachers.json is written first, with what was measured.
    """
    precision_ctx = precision_ctx or _no_context
    chance = 100.0 / num_classes  # percent
    report = {"unit": UNIT}
    for teacher in teachers:
        entry = {"path": teacher.path, "model": teacher.model_name}
        if teacher.zoo is not None:
            entry["robustbench"] = dict(teacher.zoo)
        own = None
        if teacher.normalize == AUTO:
            if teacher.set_normalize is None or not teacher.candidates:
                raise ValueError(f"{teacher.kind} teacher: normalize='auto' needs candidates and set_normalize")
            tried = {}
            for value in teacher.candidates:
                teacher.set_normalize(value)
                tried[describe_normalize(value)] = (value, _clean_accuracy(teacher.model, val_loader, precision_ctx))
            # the first of equals wins: raw pixels before statistics, as listed
            best_name = max(tried, key=lambda k: (tried[k][1], -list(tried).index(k)))
            chosen = tried[best_name][0]
            teacher.set_normalize(chosen)
            entry["normalize"] = _json_value(chosen)
            entry["auto"] = {name: acc for name, (_, acc) in tried.items()}
            own = tried[best_name][1]
        else:
            entry["normalize"] = _json_value(teacher.normalize)
            tried = None
            if teacher.set_normalize is not None and teacher.candidates:
                # An explicit choice is kept, but a clearly better alternative is reported: a wrong
                # normalisation otherwise only shows as a lower accuracy nobody compares.
                own = _clean_accuracy(teacher.model, val_loader, precision_ctx)
                others = {}
                for value in teacher.candidates:
                    if value != teacher.normalize:
                        teacher.set_normalize(value)
                        others[describe_normalize(value)] = _clean_accuracy(teacher.model, val_loader, precision_ctx)
                teacher.set_normalize(teacher.normalize)
                entry["alternatives"] = others
                better = {k: v for k, v in others.items() if v > own + BETTER_MARGIN}
                if better:
                    name = max(better, key=better.get)
                    log(f"[{teacher.kind} teacher] WARNING: configured input {describe_normalize(teacher.normalize)} "
                        f"gives {own:.2f}% clean validation accuracy, {name} gives {better[name]:.2f}%; "
                        f"set {teacher.kind}_teacher_normalize: auto (or the better value) if the checkpoint "
                        f"was trained that way")
        if teacher.kind == "robust":
            counts = correct_clean_and_pgd(teacher.model, val_loader, eps=eps, alpha=alpha, steps=pgd_steps,
                                           precision_ctx=precision_ctx, seed=seed)
            clean, adv, total = (float(v) for v in counts)
            if total == 0:
                raise ValueError("the validation split is empty; teachers cannot be checked (use val_size > 0)")
            entry["val_clean"], entry["val_pgd"] = 100.0 * clean / total, 100.0 * adv / total
        else:
            entry["val_clean"] = own if own is not None else _clean_accuracy(teacher.model, val_loader, precision_ctx)
        weak = entry["val_clean"] < WEAK_FACTOR * chance
        entry["weak"] = weak
        report[teacher.kind] = entry
        log(_report_line(teacher, entry))
        if weak and not (allow_weak or not teacher.given_as_file):
            if out_dir is not None:
                _write(out_dir, report)
            measured = (", ".join(f"{name}: {acc:.2f}%" for name, acc in entry["auto"].items())
                        if tried else f"{describe_normalize(teacher.normalize)}: {entry['val_clean']:.2f}%")
            raise WeakTeacherError(
                f"the {teacher.kind} teacher ({teacher.model_name}, {teacher.path or 'trained by this run'}) has "
                f"{entry['val_clean']:.2f}% clean accuracy on the validation split, under {WEAK_FACTOR}x chance "
                f"({WEAK_FACTOR * chance:.2f}% for {num_classes} classes); normalisations tried: {measured}. "
                f"Check the checkpoint and {teacher.kind}_teacher_model / {teacher.kind}_teacher_normalize, or set "
                f"allow_weak_teacher: true to distil from it anyway")
    if out_dir is not None:
        _write(out_dir, report)
    return report


def _report_line(teacher, entry):
    parts = [f"[{teacher.kind} teacher] {teacher.model_name} ({teacher.path or 'trained by this run'}), "
             f"input: {describe_normalize(entry['normalize'])}"]
    if "auto" in entry:
        parts.append("(auto: " + ", ".join(f"{k} {v:.2f}%" for k, v in entry["auto"].items()) + ")")
    parts.append(f"val clean {entry['val_clean']:.2f}%")
    if "val_pgd" in entry:
        parts.append(f"val PGD {entry['val_pgd']:.2f}%")
    if "robustbench" in entry:
        zoo = entry["robustbench"]
        parts.append(f"(RobustBench lists {zoo['listed_clean_acc']:.2f}% clean / {zoo['listed_autoattack_acc']:.2f}% "
                     f"AutoAttack on the {zoo['dataset']} test set at eps {zoo['listed_eps']})")
    if entry["weak"]:
        parts.append(f"WARNING: weak, under {WEAK_FACTOR}x chance")
    return " ".join(parts)


def _write(out_dir, report):
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, TEACHERS_JSON), json.dumps(report, indent=2) + "\n")


def read_teachers_json(out_dir):
    """The report a previous check wrote to `<out_dir>/teachers.json`, in percent, or None if there
    is none. A file without a "unit" key was written when accuracies were fractions in [0, 1]: they
    are converted to percent here, so resuming or reusing an older run reads the right numbers.
    Raises ValueError naming the file when it is not a JSON object of teacher entries."""
    path = os.path.join(out_dir, TEACHERS_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} could not be read ({type(exc).__name__}: {exc}); delete it to measure the "
                         "teachers again (a new run), or restore it from a copy") from None
    if not isinstance(report, dict) or not all(isinstance(v, dict) for k, v in report.items() if k != "unit"):
        raise ValueError(f"{path} must hold a JSON object of teacher entries keyed by 'robust' / 'clean'; got "
                         f"{type(report).__name__}. Delete it to measure the teachers again")
    unit = report.get("unit")
    if unit is None:  # written before the unit was recorded: fractions
        report = {kind: _fractions_to_percent(entry) for kind, entry in report.items()}
        report = {"unit": UNIT, **report}
    elif unit != UNIT:
        raise ValueError(f"{path} records accuracies in {unit!r}; this version reads {UNIT!r} (or a file without "
                         "a unit, in fractions)")
    return report


def teacher_entries(report):
    """{kind: entry} of a teachers.json report, without its "unit" key."""
    return {kind: entry for kind, entry in (report or {}).items() if kind != "unit"}


def _fractions_to_percent(entry):
    entry = dict(entry)
    for key in ("val_clean", "val_pgd"):
        if isinstance(entry.get(key), (int, float)) and not isinstance(entry.get(key), bool):
            entry[key] = 100.0 * entry[key]
    for key in ("auto", "alternatives"):
        if isinstance(entry.get(key), dict):
            entry[key] = {k: 100.0 * v if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                          for k, v in entry[key].items()}
    return entry


class _NoContext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _no_context():
    return _NoContext()
