"""`compare()`: train several methods on the same data and teachers, over seeds, and put them in one table.

    result = compare(["ciard", "rslad", "mtard"], preset="demo")
    result = compare("ciard,rslad", preset="demo", seeds="0,1,2", baseline="rslad")
    result = compare("ciard,ard,adaad", preset="cifar10-resnet18", per_method_presets=True,
                     robust_teacher="model_cifar_wrn.pt", clean_teacher="resnet56.pt", aa=True)
    print(result.table)

Layout of `out_dir` (default `runs/compare-<preset>`):
    teachers/robust/, teachers/clean/   the teacher runs (trained once, only those some method needs)
    teachers/robust.pt, clean.pt        their weights, handed to every method that needs them
    <method>/seed-<s>/                  each method's run per seed (checkpoints, logs, results.json)
    compare.json, compare.md,           the table: test accuracy (%) under every attack of the
    compare.csv                         config's `test_attacks` (+ AutoAttack with aa=True), the
                                        training wall-clock (s) and throughput (images/s); over
                                        several seeds mean ± std, the 95 % Student-t interval of
                                        the mean and the paired difference to the baseline
                                        (`stats.py`); the CSV in long form, one line per column
    comparison.png, per_attack.png      clean vs worst-case accuracy with error bars, and bars per
                                        attack (`ciard_fast/plots.py`; when the config's `plot`)

A run whose folder already holds a finished run with the very same config is not trained again
(its row is read back), so an interrupted comparison resumes where it stopped.
"""
import csv
import dataclasses
import io
import json
import numbers
import os
import sys
import time
import warnings

from ..config import FIELD_NAMES, build_config, list_presets
from ..methods import get_method
from ..atomic import save_torch_atomic, write_text_atomic
from ..tables import MISSING, column_label, format_accuracy, order_columns, render_table
from . import checkpoint as ckpt
from . import stats
from .teachers import (TEACHER_ARCHITECTURE_FIELDS, TEACHER_FIELDS, TEACHER_KINDS, ensure_teacher, needed_teachers,
                       teacher_spec)

ROW_FILE = "compare_row.json"
# the entries of a row that are not accuracy columns (see _run_method)
# ("weights": what the run's table measured when not the student's own weights, e.g. its SWA average)
_ROW_FIELDS = ("train_seconds", "images_per_s", "wall_seconds", "epochs", "student", "out_dir", "weights")
# What every method shares with the base config even when it starts from its own preset: the data,
# the seed, the evaluation, and the teachers' architecture (their weights are shared).
SHARED = ("dataset", "dataset_args", "data_root", "val_size", "seed", "device", "eps",
          "test_n") + TEACHER_ARCHITECTURE_FIELDS
# What compare sets on each method's run; every other field comes from the method's parent config
# (the base config, or its own preset with the same user fields and the SHARED ones).
METHOD_RUN_OVERRIDES = ("method", "method_args", "out_dir", "test_attacks", "compare_natural_student", "lr",
                        "seed", "split_seed") \
    + tuple(TEACHER_FIELDS[kind][key] for kind in TEACHER_KINDS for key in ("weights", "normalize"))


@dataclasses.dataclass
class CompareResult:
    """The comparison of `methods` over `seeds`.

    rows: method -> the mean over seeds of every numeric entry of its runs (attack accuracies in %,
        "worst", "train_seconds", "images_per_s", "wall_seconds", "epochs"), plus "student" and
        "seeds" (how many runs);
    runs: method -> one row per seed, in the order of `seeds` (each with its "seed" and "out_dir");
    summary: method -> column -> stats.summarize() over seeds (n, mean, std, 95 % Student-t
        interval ci_low/ci_high, the per-seed values), for every column of the table;
    differences: method -> accuracy column -> stats.paired_difference() of the method minus
        `baseline`, seed by seed (empty for the baseline itself);
    teachers: kind -> weights file; config: the base config (dict); table: Markdown."""

    out_dir: str
    methods: list
    rows: dict
    teachers: dict
    config: dict
    table: str = ""
    notes: list = dataclasses.field(default_factory=list)
    seeds: list = dataclasses.field(default_factory=list)
    baseline: str = ""
    runs: dict = dataclasses.field(default_factory=dict)
    summary: dict = dataclasses.field(default_factory=dict)
    differences: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**data)

    def save(self, path=None):
        """Write compare.json, compare.md and compare.csv into out_dir, atomically. Returns the JSON path."""
        path = path or os.path.join(self.out_dir, "compare.json")
        stem = os.path.splitext(path)[0]
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))
        write_text_atomic(stem + ".md", self.table)
        write_text_atomic(stem + ".csv", csv_table(self))
        return path

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def compare(methods, preset="demo", config_file=None, out_dir=None, aa=False, per_method_presets=False,
            reuse=True, seeds=None, baseline=None, **overrides):
    """Train every method in `methods` on the same data and teachers, once per seed; return a CompareResult.

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
        reuse: read back a run's row when it finished in <out_dir>/<method>/seed-<s>/ with the same
            config, instead of training it again.
        seeds: the seeds to run every method with (ints >= 0, a list or "0,1,2"); default: the
            config's `seed` alone. A seed sets the student's init, the data order and the attack
            noise (training and test); the teachers (trained once with the config's `seed`, or
            given) and the train/validation split (`split_seed`, default the config's `seed`) are
            the same for every seed.
        baseline: the method every other one is compared with, seed by seed (default: the first).
        **overrides: TrainConfig fields for every method, and method options (each goes to the
            methods that have it), e.g. epochs=5, T_push=3, tau=10.
    """
    names = _method_names(methods)
    if "method" in overrides:
        raise ValueError(f"give the methods to compare as methods=..., not method={overrides['method']!r}")
    if overrides.get("resume"):
        raise ValueError("compare cannot resume a single run; rerun compare with the same out_dir instead "
                         "(finished methods are reused)")
    baseline = names[0] if baseline is None else baseline
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the compared methods ({', '.join(names)}); "
                         f"pick one of them or leave it out (default: the first)")
    fields, options = _split_overrides(overrides, names)
    base = build_config(preset=preset, config_file=config_file, overrides=fields)
    seeds = parse_seeds(seeds, base.seed)
    out_dir = out_dir or os.path.join("runs", f"compare-{preset or base.dataset}")
    split_seed = base.seed if base.split_seed is None else base.split_seed
    base = base.replace(out_dir=out_dir, compare_natural_student=False, split_seed=split_seed)

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
    # kind -> (weights file, its normalisation), for the teachers some method needs
    teacher_inputs = {kind: _teacher_weights(base, kind, out_dir) for kind in TEACHER_KINDS
                      if any(kind in kinds for kinds in needed.values())}
    teachers = {kind: path for kind, (path, _) in teacher_inputs.items()}

    bar = run_bar(len(names) * len(seeds), enabled=base.progress)
    runs = {}
    for name in names:
        runs[name] = []
        for seed in seeds:
            config = method_config(base, name, preset_for(preset, name, per_method_presets), preset, config_file,
                                   fields, {k: v for k, v in options.items() if k in _option_names(name)},
                                   {kind: teacher_inputs[kind] for kind in needed[name]},
                                   os.path.join(out_dir, name, f"seed-{seed}"), attacks, seed, split_seed)
            # a teacher retrained under the same path makes the old rows stale: its file time counts
            used = {kind: os.path.getmtime(teachers[kind]) for kind in needed[name]
                    if getattr(config, TEACHER_FIELDS[kind]["weights"]) == teachers[kind]}
            bar.set_description(f"compare {name} seed {seed}")
            runs[name].append({**_run_method(config, reuse, used), "seed": seed})
            bar.update(1)
    bar.close()

    result = CompareResult(out_dir=out_dir, methods=names, rows={}, teachers=teachers, config=base.to_dict(),
                           notes=notes, seeds=list(seeds), baseline=baseline, runs=runs)
    aggregate(result)
    result.table = markdown_table(result)
    result.save()
    if base.plot:
        from ..plots import plot_comparison, plot_per_attack

        plot_comparison(result, os.path.join(out_dir, "comparison.png"))
        plot_per_attack(result, os.path.join(out_dir, "per_attack.png"))
    print(result.table)
    return result


def parse_seeds(seeds, default):
    """seeds: None (-> [default]), an int, a list of ints or a string "0,1,2" -> a list of distinct ints >= 0."""
    if seeds is None:
        return [default]
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.split(",") if p.strip()]
        try:
            seeds = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"seeds must be comma-separated integers such as '0,1,2', got {seeds!r}") from None
    elif isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds='0,1,2'")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"every seed must be an integer >= 0, got {seed!r} in {seeds!r}")
    seeds = [int(seed) for seed in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed is listed twice: {seeds}")
    return seeds


def run_bar(total, enabled=True):
    """A tqdm bar over the comparison's runs on a terminal (rate, ETA); inert otherwise (each run
    then announces itself on one line, see _run_method)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="run", disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True,
                position=0, leave=True)


def _columns(result):
    """The table's accuracy columns present in some run, in table order (`ciard_fast.tables`)."""
    return order_columns(c for runs in result.runs.values() for run in runs for c in run
                         if c not in _ROW_FIELDS + ("seed",))


TIME_COLUMNS = ("train_seconds", "images_per_s")


def aggregate(result):
    """Fill result.rows (means), result.summary and result.differences from result.runs."""
    columns = _columns(result)
    base_runs = result.runs[result.baseline]
    for name, runs in result.runs.items():
        numeric = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and not isinstance(runs[0][k], bool)
                   and k != "seed"]
        row = {k: sum(run[k] for run in runs) / len(runs) for k in numeric if all(k in run for run in runs)}
        row.update(student=runs[0].get("student", ""), seeds=len(runs))
        result.rows[name] = row
        result.summary[name] = {c: stats.summarize([run[c] for run in runs])
                                for c in columns + list(TIME_COLUMNS) if all(c in run for run in runs)}
        # paired by seed: the difference of the two runs that share a seed
        base_by_seed = {run.get("seed"): run for run in base_runs}
        pairs = [(run, base_by_seed[run.get("seed")]) for run in runs if run.get("seed") in base_by_seed]
        result.differences[name] = {} if name == result.baseline or not pairs else {
            c: stats.paired_difference([a[c] for a, _ in pairs], [b[c] for _, b in pairs])
            for c in columns if all(c in a and c in b for a, b in pairs)}
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


def method_config(base, name, method_preset, preset, config_file, fields, options, teachers, out_dir, attacks,
                  seed=None, split_seed=None):
    """The run config of method `name` with `seed` in `out_dir`: its parent (`base`, or
    `method_preset` built with the same user `fields` and `base`'s SHARED fields) with
    `METHOD_RUN_OVERRIDES` changed through `TrainConfig.replace` (which validates `options`
    against the method); every other field is inherited. `teachers`: kind -> (weights file,
    normalisation) of the teachers the method needs; `split_seed`: the validation split shared by
    every seed (None: each run's own seed)."""
    if method_preset == preset:
        parent = base
    else:
        parent = build_config(preset=method_preset, config_file=config_file,
                              overrides={**{k: getattr(base, k) for k in SHARED}, **fields})
    changes = dict(method=name, out_dir=out_dir, test_attacks=tuple(attacks), compare_natural_student=False,
                   seed=base.seed if seed is None else seed, split_seed=split_seed)
    if not teachers and "lr" not in fields:
        # natural/SAT/TRADES rows train with cross-entropy, like the teachers and like the
        # natural student of `train()`: at teacher_lr, not at the distillation lr.
        changes["lr"] = base.teacher_lr
    for kind, (path, normalize) in teachers.items():
        # the file and the normalisation it was trained with (a teacher compare trained itself is
        # not re-guessed by `auto`: its input statistics are known)
        changes.update({TEACHER_FIELDS[kind]["weights"]: path, TEACHER_FIELDS[kind]["normalize"]: normalize})
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
    """(weights file, normalisation) of the robust/clean teacher: the config's own path and
    normalisation setting, or the teacher trained once under <out_dir>/teachers/<kind>/ (reused
    when it finished with the same config) with the normalisation it was trained with."""
    spec = teacher_spec(base, kind)
    if spec.weights:
        return spec.weights, spec.normalize
    cached = ensure_teacher(spec, base)  # out_dir/teachers/<kind>/last.pt, as train() would make it
    # A plain state_dict: what `robust_teacher=`/`clean_teacher=` load (a training checkpoint
    # holds optimiser, RNG and config too).
    weights = os.path.join(out_dir, "teachers", f"{kind}.pt")
    state = ckpt.eval_weights(ckpt.load_checkpoint(cached))
    if not (os.path.isfile(weights) and os.path.getmtime(weights) >= os.path.getmtime(cached)):
        save_torch_atomic(state, weights)
    return weights, spec.normalize


def _reuse_key(entry):
    # a finished run is reused whatever its result-neutral fields were (e.g. a comparison rerun
    # with --progress false or --plot false): the one list, in engine/checkpoint.py
    config = {k: v for k, v in (entry.get("config") or {}).items() if k not in ckpt.RESULT_NEUTRAL}
    return {"config": config, "teachers": entry.get("teachers")}


def _say(message):
    """A line on stderr that does not break a tqdm bar being drawn there."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _run_method(config, reuse, teacher_times):
    """Train (or read back) one method; its row of the table."""
    from .api import train

    row_path = os.path.join(config.resolved_out_dir(), ROW_FILE)
    # tuples -> lists, as they read back from JSON
    wanted = json.loads(json.dumps({"config": config.to_dict(), "teachers": teacher_times}))
    if reuse and os.path.isfile(row_path):
        with open(row_path, encoding="utf-8") as f:
            saved = json.load(f)
        if _reuse_key(saved) == _reuse_key(wanted):
            _say(f"[compare] {config.method} seed {config.seed}: reusing the finished run in "
                 f"{config.resolved_out_dir()}")
            return saved["row"]
    _say(f"[compare] training {config.method} seed {config.seed} ({config.student}, {config.epochs} epochs)")
    start = time.perf_counter()
    result = train(config, overwrite=True)  # compare owns each method's folder: a rerun replaces it
    wall = time.perf_counter() - start
    seconds = sum(r.get("train_seconds", 0.0) for r in result.history)
    images = sum(r.get("train_seconds", 0.0) * r.get("train_images_per_s", 0.0) for r in result.history)
    row = dict(result.metrics)
    row.update(train_seconds=seconds, images_per_s=images / seconds if seconds > 0 else 0.0,
               wall_seconds=wall, epochs=len(result.history), student=config.student,
               out_dir=config.resolved_out_dir(), weights=result.evaluated_weights)
    write_text_atomic(row_path, json.dumps({**wanted, "row": row}, indent=2))
    return row


def _fmt(value, digits=2, sign=False):
    return MISSING if value is None else f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _seconds(value):
    return f"{value:.{1 if value >= 10 else 2}f}"


def markdown_table(result):
    """The comparison as Markdown: one row per method, attack columns in table order.

    One seed: the accuracies. Several: mean ± std over seeds, then the 95 % Student-t intervals of
    the means, then each method's paired difference to the baseline (mean and interval). Every
    table goes through `ciard_fast.tables.render_table`, headed by the registered column labels."""
    present = _columns(result)
    labels = [column_label(c) for c in present]
    config = result.config
    seeds = result.seeds or [config.get("seed", 0)]
    several = len(seeds) > 1
    header = (f"Test accuracy (%) at eps = {config['eps'] * 255:.3g}/255 on {config['dataset']}"
              + (f" ({config['test_n']} test images)" if config.get("test_n") else ""))
    header += f", mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if several else f", seed {seeds[0]}"
    shown = {"train_seconds": _seconds, "images_per_s": lambda v: f"{v:.0f}"}
    body = []
    for name in result.methods:
        summary, row = result.summary.get(name, {}), result.rows.get(name, {})
        if several:
            cells = [str(len(result.runs.get(name, [])))]
            cells += [f"{_fmt(summary[c]['mean'])} ± {_fmt(summary[c]['std'])}" if c in summary else MISSING
                      for c in present]
            cells += [f"{shown[k](summary[k]['mean'])} ± " + (MISSING if summary[k]["std"] is None
                                                               else shown[k](summary[k]["std"]))
                      if k in summary else MISSING for k in TIME_COLUMNS]
        else:
            cells = [format_accuracy(row.get(c)) for c in present]
            cells += [_seconds(row.get("train_seconds", 0.0)), f"{row.get('images_per_s', 0.0):.0f}"]
        body.append([name, row.get("student", "")] + cells)
    headers = ["method", "student"] + (["seeds"] if several else []) + labels + ["train time (s)", "img/s"]
    lines = [header, ""] + render_table(headers, body, align=["left", "left"] + ["right"] * (len(headers) - 2))
    if several:
        level = next(iter(next(iter(result.summary.values())).values()))["confidence"]
        pct = f"{100 * level:g} %"
        intervals = [[name] + [f"[{_fmt(summary[c]['ci_low'])}, {_fmt(summary[c]['ci_high'])}]"
                               if c in summary else MISSING for c in present]
                     for name, summary in ((n, result.summary.get(n, {})) for n in result.methods)]
        lines += ["", f"{pct} confidence interval of the mean (Student t, {len(seeds) - 1} degrees of freedom)", ""]
        lines += render_table(["method"] + labels, intervals)
        others = [n for n in result.methods if n != result.baseline]
        if others:
            differences = [[name] + [f"{_fmt(diff[c]['mean'], sign=True)} [{_fmt(diff[c]['ci_low'], sign=True)}, "
                                     f"{_fmt(diff[c]['ci_high'], sign=True)}]" if c in diff else MISSING
                                     for c in present]
                           for name, diff in ((n, result.differences.get(n, {})) for n in others)]
            lines += ["", f"Paired difference to {result.baseline} (points; seed by seed, mean [{pct} interval]; "
                      f"an interval that contains 0 is no evidence of a difference)", ""]
            lines += render_table(["method"] + labels, differences)
    if result.teachers:
        lines += ["", "Teachers: " + ", ".join(f"{k} = {v}" for k, v in result.teachers.items())]
    for name in result.methods:  # a row measured on other weights than the student's says which
        weights = sorted({run["weights"] for run in result.runs.get(name, []) if run.get("weights")})
        if weights:
            lines += ["", f"{name} reports {'; '.join(weights)}."]
    for note in result.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("method", "student", "column", "n", "mean", "std", "ci95_low", "ci95_high", "diff_mean", "diff_std",
              "diff_ci95_low", "diff_ci95_high", "baseline", "seeds", "values")


def csv_table(result):
    """The comparison in long form: one line per method and column (accuracies in %, train_seconds,
    images_per_s) with n, mean, std, the interval, the paired difference to the baseline, and the
    per-seed values (";"-separated, in the order of the seeds column)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for name in result.methods:
        diffs = result.differences.get(name, {})
        for column, s in result.summary.get(name, {}).items():
            d = diffs.get(column, {})
            writer.writerow({
                "method": name, "student": result.rows.get(name, {}).get("student", ""), "column": column,
                "n": s["n"], "mean": s["mean"], "std": s["std"], "ci95_low": s["ci_low"], "ci95_high": s["ci_high"],
                "diff_mean": d.get("mean"), "diff_std": d.get("std"), "diff_ci95_low": d.get("ci_low"),
                "diff_ci95_high": d.get("ci_high"), "baseline": result.baseline,
                "seeds": ";".join(map(str, result.seeds)), "values": ";".join(repr(v) for v in s["values"]),
            })
    return buffer.getvalue()


__all__ = ["compare", "CompareResult", "markdown_table", "csv_table", "aggregate", "parse_seeds", "preset_for"]
