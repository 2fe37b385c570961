"""`compare()`: train several methods on the same data, teachers and seed, and put them in one table.

    result = compare(["ciard", "rslad", "mtard"], preset="demo")
    result = compare("ciard,ard,adaad", preset="cifar10-resnet18", per_method_presets=True,
                     robust_teacher="model_cifar_wrn.pt", clean_teacher="resnet56.pt", aa=True)
    print(result.table)

Layout of `out_dir` (default `runs/compare-<preset>`):
    teachers/robust/, teachers/clean/   the teacher runs (trained once, only those some method needs)
    teachers/robust.pt, clean.pt        their weights, handed to every method that needs them
    <method>/                           each method's own run (checkpoints, logs, results.json)
    compare.json, compare.md            the table: test accuracy (%) under every attack of the
                                        config's `test_attacks` (+ AutoAttack with aa=True), the
                                        training wall-clock (s) and throughput (images/s)

A method whose run in `<method>/` already finished with the very same config is not trained again
(its row is read back), so an interrupted comparison resumes where it stopped.
"""
import dataclasses
import json
import os
import sys
import time
import warnings

from ..config import FIELD_NAMES, build_config, list_presets
from ..methods import get_method
from ..atomic import save_torch_atomic, write_text_atomic
from ..tables import column_label, format_accuracy, order_columns, render_table
from . import checkpoint as ckpt
from .teachers import (TEACHER_ARCHITECTURE_FIELDS, TEACHER_FIELDS, TEACHER_KINDS, ensure_teacher, needed_teachers,
                       teacher_spec)

ROW_FILE = "compare_row.json"
# the entries of a row that are not accuracy columns (see _run_method)
_ROW_FIELDS = ("train_seconds", "images_per_s", "wall_seconds", "epochs", "student", "out_dir")
# What every method shares with the base config even when it starts from its own preset: the data,
# the seed, the evaluation, and the teachers' architecture (their weights are shared).
SHARED = ("dataset", "dataset_args", "data_root", "val_size", "seed", "device", "eps",
          "test_n") + TEACHER_ARCHITECTURE_FIELDS
# What compare sets on each method's run; every other field comes from the method's parent config
# (the base config, or its own preset with the same user fields and the SHARED ones).
METHOD_RUN_OVERRIDES = ("method", "method_args", "out_dir", "test_attacks", "compare_natural_student", "lr") \
    + tuple(TEACHER_FIELDS[kind]["weights"] for kind in TEACHER_KINDS)


@dataclasses.dataclass
class CompareResult:
    """rows: method -> {attack: accuracy (%), "train_seconds", "images_per_s", "epochs", "student",
    "out_dir"}; teachers: kind -> weights file; config: the base config (dict); table: Markdown."""

    out_dir: str
    methods: list
    rows: dict
    teachers: dict
    config: dict
    table: str = ""
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**data)

    def save(self, path=None):
        """Write compare.json (and compare.md) into out_dir, atomically. Returns the JSON path."""
        path = path or os.path.join(self.out_dir, "compare.json")
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))
        write_text_atomic(os.path.splitext(path)[0] + ".md", self.table)
        return path

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def compare(methods, preset="demo", config_file=None, out_dir=None, aa=False, per_method_presets=False,
            reuse=True, **overrides):
    """Train every method in `methods` on the same data, teachers and seed; return a CompareResult.

    Args:
        methods: names (a list or a comma-separated string) from `ciard_fast.methods.list_methods()`,
            e.g. "ciard,rslad,mtard" (the teacher methods natural/sat/trades work too).
        preset: the preset every method starts from (default "demo"), or None for the defaults.
        config_file: a YAML file applied after the preset (as `train --config`).
        out_dir: where everything goes (default runs/compare-<preset>).
        aa: add AutoAttack to the test attacks (needs the optional package pyautoattack; without
            it the column is skipped with a warning).
        per_method_presets: start each method from "<preset>-<method>" when that preset exists
            (e.g. cifar10-resnet18-rslad: RSLAD's own epochs and weight decay), else from `preset`.
            The teachers, the data, the seed and the evaluation always come from `preset`.
        reuse: read back a method's row when its run in <out_dir>/<method>/ finished with the same
            config, instead of training it again.
        **overrides: TrainConfig fields for every method, and method options (each goes to the
            methods that have it), e.g. epochs=5, T_push=3, tau=10.
    """
    names = _method_names(methods)
    if "method" in overrides:
        raise ValueError(f"give the methods to compare as methods=..., not method={overrides['method']!r}")
    if overrides.get("resume"):
        raise ValueError("compare cannot resume a single run; rerun compare with the same out_dir instead "
                         "(finished methods are reused)")
    fields, options = _split_overrides(overrides, names)
    base = build_config(preset=preset, config_file=config_file, overrides=fields)
    out_dir = out_dir or os.path.join("runs", f"compare-{preset or base.dataset}")
    base = base.replace(out_dir=out_dir, compare_natural_student=False)

    notes = []
    attacks = list(base.test_attacks)
    if aa and "aa" not in attacks:
        if _autoattack_available():
            attacks.append("aa")
        else:
            notes.append("AutoAttack skipped: the optional package 'pyautoattack' is not installed "
                         "(pip install pyautoattack)")
            warnings.warn(notes[-1], stacklevel=2)

    needed = {name: needed_teachers(name) for name in names}
    teachers = {kind: _teacher_weights(base, kind, out_dir) for kind in TEACHER_KINDS
                if any(kind in kinds for kinds in needed.values())}

    rows = {}
    for name in names:
        config = method_config(base, name, preset_for(preset, name, per_method_presets), preset, config_file,
                               fields, {k: v for k, v in options.items() if k in _option_names(name)},
                               {kind: teachers[kind] for kind in needed[name]}, out_dir, attacks)
        # a teacher retrained under the same path makes the old rows stale: its file time counts
        used = {kind: os.path.getmtime(teachers[kind]) for kind in needed[name]
                if getattr(config, TEACHER_FIELDS[kind]["weights"]) == teachers[kind]}
        rows[name] = _run_method(config, reuse, used)

    result = CompareResult(out_dir=out_dir, methods=names, rows=rows, teachers=teachers, config=base.to_dict(),
                           notes=notes)
    result.table = markdown_table(result)
    result.save()
    print(result.table)
    return result


# ---- pieces -------------------------------------------------------------------------------------
def _method_names(methods):
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    names = list(methods)
    if not names:
        raise ValueError("compare needs at least one method, e.g. methods='ciard,rslad'")
    for name in names:
        get_method(name)  # ValueError naming the valid methods and close matches
    if len(set(names)) != len(names):
        raise ValueError(f"a method is listed twice: {names}")
    return names


def preset_for(preset, method, per_method_presets=True):
    """The preset `method` starts from: "<preset>-<method>" (its own recipe) when asked for and
    shipped, else `preset` (e.g. cifar10-resnet18 + rslad -> cifar10-resnet18-rslad; + ciard ->
    cifar10-resnet18, which is CIARD's)."""
    if per_method_presets and preset and f"{preset}-{method}" in list_presets():
        return f"{preset}-{method}"
    return preset


def method_config(base, name, method_preset, preset, config_file, fields, options, teachers, out_dir, attacks):
    """The run config of method `name`: its parent (`base`, or `method_preset` built with the
    same user `fields` and `base`'s SHARED fields) with `METHOD_RUN_OVERRIDES` changed through
    `TrainConfig.replace` (which validates `options` against the method); every other field is
    inherited. `teachers`: kind -> weights file of the teachers the method needs."""
    if method_preset == preset:
        parent = base
    else:
        parent = build_config(preset=method_preset, config_file=config_file,
                              overrides={**{k: getattr(base, k) for k in SHARED}, **fields})
    changes = dict(method=name, out_dir=os.path.join(out_dir, name), test_attacks=tuple(attacks),
                   compare_natural_student=False)
    if not teachers and "lr" not in fields:
        # natural/SAT/TRADES rows train with cross-entropy, like the teachers and like the
        # natural student of `train()`: at teacher_lr, not at the distillation lr.
        changes["lr"] = base.teacher_lr
    changes.update({TEACHER_FIELDS[kind]["weights"]: path for kind, path in teachers.items()})
    assert set(changes) <= set(METHOD_RUN_OVERRIDES), sorted(set(changes) - set(METHOD_RUN_OVERRIDES))
    return parent.replace(**changes, **options)  # method_args: the parent's, updated with `options`


def _option_names(method):
    return {f.name for f in dataclasses.fields(get_method(method).Options)}


def _split_overrides(overrides, names):
    """TrainConfig fields (for every method) and method options (for the methods that have them)."""
    fields, options = {}, {}
    known = set().union(*(_option_names(n) for n in names))
    for key, value in overrides.items():
        if key in FIELD_NAMES:
            fields[key] = value
        elif key in known:
            options[key] = value
        else:
            raise ValueError(f"unknown config key {key!r}: neither a TrainConfig field nor an option of any "
                             f"compared method ({', '.join(names)}); options: {', '.join(sorted(known)) or 'none'}")
    return fields, options


def _autoattack_available():
    from ..attacks.autoattack import import_autoattack

    try:
        import_autoattack()
    except ImportError:
        return False
    return True


def _teacher_weights(base, kind, out_dir):
    """The weights file of the robust/clean teacher: the config's own path, or the teacher trained
    once under <out_dir>/teachers/<kind>/ (reused when it finished with the same config)."""
    spec = teacher_spec(base, kind)
    if spec.weights:
        return spec.weights
    cached = ensure_teacher(spec, base)  # out_dir/teachers/<kind>/last.pt, as train() would make it
    # A plain state_dict: what `robust_teacher=`/`clean_teacher=` load (a training checkpoint
    # holds optimiser, RNG and config too).
    weights = os.path.join(out_dir, "teachers", f"{kind}.pt")
    state = ckpt.load_checkpoint(cached)["student"]
    if not (os.path.isfile(weights) and os.path.getmtime(weights) >= os.path.getmtime(cached)):
        save_torch_atomic(state, weights)
    return weights


def _run_method(config, reuse, teacher_times):
    """Train (or read back) one method; its row of the table."""
    from .api import train

    row_path = os.path.join(config.resolved_out_dir(), ROW_FILE)
    # tuples -> lists, as they read back from JSON
    wanted = json.loads(json.dumps({"config": config.to_dict(), "teachers": teacher_times}))
    if reuse and os.path.isfile(row_path):
        with open(row_path, encoding="utf-8") as f:
            saved = json.load(f)
        if {k: saved.get(k) for k in wanted} == wanted:
            print(f"[compare] {config.method}: reusing the finished run in {config.resolved_out_dir()}",
                  file=sys.stderr)
            return saved["row"]
    print(f"[compare] training {config.method} ({config.student}, {config.epochs} epochs)", file=sys.stderr)
    start = time.perf_counter()
    result = train(config, overwrite=True)  # compare owns each method's folder: a rerun replaces it
    wall = time.perf_counter() - start
    seconds = sum(r.get("train_seconds", 0.0) for r in result.history)
    images = sum(r.get("train_seconds", 0.0) * r.get("train_images_per_s", 0.0) for r in result.history)
    row = dict(result.metrics)
    row.update(train_seconds=seconds, images_per_s=images / seconds if seconds > 0 else 0.0,
               wall_seconds=wall, epochs=len(result.history), student=config.student,
               out_dir=config.resolved_out_dir())
    write_text_atomic(row_path, json.dumps({**wanted, "row": row}, indent=2))
    return row


def markdown_table(result):
    """The comparison as Markdown: one row per method, attack columns in docs/evaluation.md's order."""
    present = order_columns(c for row in result.rows.values() for c in row if c not in _ROW_FIELDS)
    config = result.config
    lines = [f"Test accuracy (%) at eps = {config['eps'] * 255:.3g}/255 on {config['dataset']}"
             + (f" ({config['test_n']} test images)" if config.get("test_n") else ""),
             ""]
    body = []
    for name, row in result.rows.items():
        seconds = row.get("train_seconds", 0.0)
        body.append([name, row.get("student", "")] + [format_accuracy(row.get(c)) for c in present]
                    + [f"{seconds:.{1 if seconds >= 10 else 2}f}", f"{row.get('images_per_s', 0.0):.0f}"])
    lines += render_table(["method", "student"] + [column_label(c) for c in present] + ["train time (s)", "img/s"],
                          body, align=["left", "left"] + ["right"] * (len(present) + 2))
    if result.teachers:
        lines += ["", "Teachers: " + ", ".join(f"{k} = {v}" for k, v in result.teachers.items())]
    for note in result.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


__all__ = ["compare", "CompareResult", "markdown_table", "preset_for"]
