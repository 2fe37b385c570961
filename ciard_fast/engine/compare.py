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
(its row is read back), and a run that was interrupted continues exactly from its `last.pt`, so an
interrupted comparison resumes where it stopped.

Where the runs execute (`launcher`, `engine/launchers.py`): "inline" (default) one after the
other in this process; "local" each (method, seed) run as its own process through submitit,
`max_parallel` at a time; "slurm" one SLURM job array (`engine/slurm.py`), after a job that trains
the teachers. Their jobs' files and logs go to `<out_dir>/jobs/`; the table is collated from the
runs' rows exactly as inline.
"""
import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import json
import numbers
import os
import sys
import time
import warnings

from ..config import FIELD_NAMES, TrainConfig, build_config, list_presets
from ..methods import get_method
from ..atomic import save_torch_atomic, write_text_atomic
from ..tables import MISSING, column_label, format_accuracy, order_columns, render_table
from . import checkpoint as ckpt
from . import launchers, stats
from .distributed import get_context
from ..models import robustbench
from .signals import RunInterrupted
from .teachers import (TEACHER_ARCHITECTURE_FIELDS, TEACHER_FIELDS, TEACHER_KINDS, TEACHER_METHODS, ensure_teacher,
                       mark_trained_here, needed_teachers, teacher_run_config, teacher_spec, weights_file)

ROW_FILE = "compare_row.json"
# the entries of a row that are not accuracy columns (see _run_method)
# ("weights": what the run's table measured when not the student's own weights, e.g. its SWA average)
_ROW_FIELDS = ("train_seconds", "images_per_s", "wall_seconds", "epochs", "student", "out_dir", "weights")
# What every method shares with the base config even when it starts from its own preset: the data,
# the seed, the evaluation, and the teachers' architecture (their weights are shared).
SHARED = ("dataset", "dataset_args", "data_root", "val_size", "seed", "device", "eps",
          "test_n", "wandb_group") + TEACHER_ARCHITECTURE_FIELDS
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
    teachers: kind -> weights file; config: the base config (dict); table: Markdown; unit: "percent",
        the unit of every accuracy (compare.json states it; compare.csv has a unit column)."""

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
    unit: str = "percent"  # of every accuracy above (train_seconds in seconds, images_per_s in images/s)

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
        """Read compare.json back; a ValueError naming the file when it is not one."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return cls.from_dict(data)
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path} is not a compare.json of ciard-fast ({type(exc).__name__}: {exc}); rerun the "
                             "compare command to write it again") from None


def compare(methods, preset="demo", config_file=None, out_dir=None, aa=False, per_method_presets=False,
            reuse=True, seeds=None, baseline=None, launcher="inline", max_parallel=None, slurm=None, wait=True,
            **overrides):
    """Train every method in `methods` on the same data and teachers, once per seed; return a CompareResult
    (with `wait=False` and runs still queued or running: None).

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
        launcher: where the runs execute (`engine/launchers.py`): "inline" (default: one after the
            other in this process), "local" (each run its own process through submitit, at most
            `max_parallel` at a time; the teachers first, in this process) or "slurm" (one SLURM job
            array through submitit, after one job that trains the teachers). Job files and logs:
            <out_dir>/jobs/. local and slurm need the optional package submitit ([cluster]).
        max_parallel: local: runs at a time (default: one per GPU, or 1 without a GPU).
        slurm: slurm: a `SlurmOptions` or a dict of its fields (time is required), e.g.
            dict(partition="gpu", gpus_per_job=1, time="24:00:00", options={"constraint": "a100"}).
        wait: slurm: wait for the jobs and collate (default); False: submit and return None; the
            same call later collates what finished and resubmits only what is missing or failed.
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
    launch = launchers.make_launcher(launcher, max_parallel=max_parallel, slurm=slurm, wait=wait)  # before any work
    base = build_config(preset=preset, config_file=config_file, overrides=fields)
    seeds = parse_seeds(seeds, base.seed)
    out_dir = out_dir or os.path.join("runs", f"compare-{preset or base.dataset}")
    split_seed = base.seed if base.split_seed is None else base.split_seed
    base = base.replace(out_dir=out_dir, compare_natural_student=False, split_seed=split_seed)
    if base.wandb and base.wandb_group is None:  # every run of the comparison in one W&B group
        base = base.replace(wandb_group=os.path.basename(os.path.abspath(out_dir)))

    notes = []
    attacks = list(base.test_attacks)
    if aa and "aa" not in attacks:
        if _autoattack_available():
            attacks.append("aa")
        else:
            notes.append("AutoAttack skipped: the optional package 'pyautoattack' is not installed "
                         "(pip install pyautoattack)")
            warnings.warn(notes[-1], stacklevel=2)
    if not attacks:
        raise ValueError("compare needs at least one test attack for its table, but test_attacks is empty; give "
                         "e.g. test_attacks=clean,pgd_sat (--test_attacks clean,pgd_sat)")

    needed = {name: needed_teachers(name) for name in names}
    kinds = tuple(kind for kind in TEACHER_KINDS if any(kind in k for k in needed.values()))
    # kind -> (weights file, its normalisation), for the teachers some method needs: the given
    # file, or the one trained once under <out_dir>/teachers/ (by prepare_teachers, below)
    teacher_inputs = {kind: teacher_file(base, kind, out_dir) for kind in kinds}
    teachers = {kind: path for kind, (path, _) in teacher_inputs.items()}

    # Every run's config is built (and so checked) here, before the first teacher or method trains;
    # then the device, the folders, the data and the given teacher files (`_check_before_comparing`).
    plan = []
    for name in names:
        for seed in seeds:
            config = method_config(base, name, preset_for(preset, name, per_method_presets), preset, config_file,
                                   fields, {k: v for k, v in options.items() if k in _option_names(name)},
                                   {kind: teacher_inputs[kind] for kind in needed[name]},
                                   os.path.join(out_dir, name, f"seed-{seed}"), attacks, seed, split_seed)
            # a teacher retrained under the same path makes the old rows stale: its file time counts
            used = {kind: weights_file(teachers[kind], base) for kind in needed[name]
                    if getattr(config, TEACHER_FIELDS[kind]["weights"]) == teachers[kind]}
            plan.append(PlannedRun(method=name, seed=seed, config=config, teachers=used, reuse=reuse))
    _check_before_comparing(base, out_dir, kinds)

    if launch is None:  # inline: the teachers, then every run, one after the other in this process
        with _compare_resume_hint():
            prepare_teachers(base, kinds, out_dir)
            rows = _run_inline(plan, base.progress)
    else:
        rows = launch.run(plan, execute=run_planned, finished=finished_row, out_dir=out_dir,
                          prepare_teachers=functools.partial(prepare_teachers, base, kinds, out_dir),
                          teachers_ready=functools.partial(teachers_ready, base, kinds, out_dir))
        if rows is None:  # wait=False and runs still queued or running
            return None
    runs = {name: [{**rows[run.key], "seed": run.seed} for run in plan if run.method == name] for name in names}

    result = CompareResult(out_dir=out_dir, methods=names, rows={}, teachers=teachers, config=base.to_dict(),
                           notes=notes, seeds=list(seeds), baseline=baseline, runs=runs)
    aggregate(result)
    result.table = markdown_table(result)
    result.save()
    if base.plot:
        from ..plots import plot_comparison, plot_per_attack

        plot_comparison(result, os.path.join(out_dir, "comparison.png"))
        plot_per_attack(result, os.path.join(out_dir, "per_attack.png"))
    if base.wandb:
        from .logs import log_comparison_to_wandb

        log_comparison_to_wandb(result, csv_table(result), base)
    print(result.table)
    return result


@dataclasses.dataclass
class PlannedRun:
    """One (method, seed) run of a comparison: its config (out_dir <out_dir>/<method>/seed-<s>),
    `teachers` (kind -> weights file compare trained or was given: their file times stamp the
    row, so a retrained teacher makes it stale) and whether a finished run may be reused.
    Picklable: a cluster job gets it (`engine/cluster_job.py`)."""

    method: str
    seed: int
    config: TrainConfig
    teachers: dict
    reuse: bool = True

    @property
    def key(self):
        return f"{self.method}/seed-{self.seed}"

    @property
    def digest(self):
        """A short hash of everything that makes the run's numbers (not its teachers' file times)."""
        wanted = json.loads(json.dumps({"config": self.config.to_dict(), "teachers": None}))
        return hashlib.sha256(json.dumps(_reuse_key(wanted), sort_keys=True).encode()).hexdigest()[:16]


def _teacher_times(run):
    return {kind: os.path.getmtime(path) for kind, path in run.teachers.items()}


def run_planned(run):
    """Train (or read back, or continue) one planned run; its row. What every launcher executes,
    in this process (inline) or in the run's job."""
    return _run_method(run.config, run.reuse, _teacher_times(run))


def finished_row(run):
    """The row of `run` when its folder holds it for the very same config and teachers, else None
    (whatever `run.reuse` says: launchers read back the rows their jobs wrote)."""
    if not all(os.path.isfile(path) for path in run.teachers.values()):
        return None
    return _saved_row(run.config, _teacher_times(run))


def _run_inline(plan, progress):
    bar = run_bar(len(plan), enabled=progress)
    rows = {}
    for run in plan:
        bar.set_description(f"compare {run.method} seed {run.seed}")
        rows[run.key] = run_planned(run)
        bar.update(1)
    bar.close()
    return rows


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
    if name in TEACHER_METHODS and "lr" not in fields:
        # natural/SAT/TRADES rows train with cross-entropy, like the teachers and like the
        # natural student of `train()`: at teacher_lr, not at the distillation lr. A method without
        # a teacher is not one of them for that alone: PeerAiD's student learns by distillation
        # (from its peer) and trains at the distillation lr, as `train()` runs it.
        changes["lr"] = base.teacher_lr
    for kind, (path, normalize) in teachers.items():
        # the file and the normalisation it was trained with (a teacher compare trained itself is
        # not re-guessed by `auto`: its input statistics are known)
        changes.update({TEACHER_FIELDS[kind]["weights"]: path, TEACHER_FIELDS[kind]["normalize"]: normalize})
    for kind in set(TEACHER_KINDS) - set(teachers):
        # a teacher file this method does not use is not recorded in its run as if it were
        if getattr(parent, TEACHER_FIELDS[kind]["weights"]) is not None:
            changes[TEACHER_FIELDS[kind]["weights"]] = None
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


def teacher_file(base, kind, out_dir):
    """(weights file, normalisation) of the robust/clean teacher, without training anything: the
    config's own path and normalisation setting, or <out_dir>/teachers/<kind>.pt, where
    `prepare_teachers` puts the teacher it trains once, with the normalisation it is trained with."""
    spec = teacher_spec(base, kind)
    if spec.weights:
        # a robustbench:<name> teacher brings its own normalisation: the config's setting is passed on as it is
        own = getattr(base, TEACHER_FIELDS[kind]["normalize"]) if robustbench.is_reference(spec.weights) else None
        return spec.weights, spec.normalize if own is None else own
    return os.path.join(out_dir, "teachers", f"{kind}.pt"), spec.normalize


def prepare_teachers(base, kinds, out_dir):
    """Make the teachers of `kinds` ready for the runs: each given file is checked, each other one
    trained under <out_dir>/teachers/<kind>/ (reused when it finished with the same config,
    continued when it was interrupted) and its weights written to `teacher_file`. What the
    teachers' job of `--launcher slurm` executes."""
    return {kind: _teacher_weights(base, kind, out_dir) for kind in kinds}


def teachers_ready(base, kinds, out_dir):
    """True when `prepare_teachers` has nothing left to train: every teacher is a given file or a
    finished run of the same config whose weights file is up to date."""
    for kind in kinds:
        spec = teacher_spec(base, kind)
        if spec.weights:
            continue
        config = teacher_run_config(spec, base)
        cached = os.path.join(config.resolved_out_dir(), "last.pt")
        weights = teacher_file(base, kind, out_dir)[0]
        if not (ckpt.is_finished_run(cached, config) and os.path.isfile(weights)
                and os.path.getmtime(weights) >= os.path.getmtime(cached)):
            return False
    return True


def _teacher_weights(base, kind, out_dir):
    """`teacher_file`, trained first when compare trains that teacher (reused when it finished
    with the same config)."""
    weights, normalize = teacher_file(base, kind, out_dir)
    spec = teacher_spec(base, kind)
    if spec.weights:
        return weights, normalize
    cached = ensure_teacher(spec, base)  # out_dir/teachers/<kind>/last.pt, as train() would make it
    # A plain state_dict: what `robust_teacher=`/`clean_teacher=` load (a training checkpoint
    # holds optimiser, RNG and config too).
    if not (os.path.isfile(weights) and os.path.getmtime(weights) >= os.path.getmtime(cached)):
        save_torch_atomic(ckpt.eval_weights(ckpt.load_checkpoint(cached)), weights)
    # trained by this comparison: a weak one is reported with a warning, as `train` does for the
    # teachers it trains itself, not stopped as a weak file brought by the user
    mark_trained_here(weights)
    return weights, normalize


def _check_before_comparing(base, out_dir, kinds):
    """The comparison's checks before it trains anything: the device, its folder (a file there,
    or the folder of a training run, is refused: compare would write its teachers/ and method
    folders among that run's files), the data, and the teacher files given (read and matched to
    their architecture, `engine/preflight.py`)."""
    from ..outputs import OutputPathError
    from .preflight import check_data, check_teacher_files
    from .precision import resolve_device
    from .rundir import RUN_FILES

    resolve_device(base.device)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputPathError(f"out_dir {out_dir!r} is a file, not a folder; give a folder for the comparison")
    foreign = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))
               and name not in ("compare_row.json",)]
    if foreign:
        raise OutputPathError(f"out_dir {out_dir!r} holds a training run ({', '.join(foreign[:4])}), not a "
                              "comparison; the comparison would write its teachers/ and method folders among that "
                              "run's files. Choose another out_dir")
    for kind in kinds:
        given = teacher_spec(base, kind).weights
        inside = given and os.path.realpath(given).startswith(os.path.realpath(out_dir) + os.sep)
        if inside and os.path.relpath(os.path.realpath(given), os.path.realpath(out_dir)).split(os.sep)[0] != "teachers":
            raise OutputPathError(f"{TEACHER_FIELDS[kind]['weights']}={given!r} lies in a method folder of the "
                                  f"comparison {out_dir!r}, which compare retrains; copy the file elsewhere first")
    check_data(base)
    check_teacher_files(base, kinds)


@contextlib.contextmanager
def _compare_resume_hint():
    """A run stopped by SIGINT / SIGTERM inside a comparison is continued by the same compare
    command (finished runs are read back, the interrupted one continues from its last.pt), not by
    `train --resume`, which would not put it back in the table."""
    try:
        yield
    except RunInterrupted as stop:
        stop.resume_hint = (f"the same compare command again (finished runs are reused and the interrupted run "
                            f"continues from {stop.checkpoint})")
        raise


def _reuse_key(entry):
    # a finished run is reused whatever its result-neutral fields were (e.g. a comparison rerun
    # with --progress false or --plot false): the one list, in engine/checkpoint.py
    config = {k: v for k, v in (entry.get("config") or {}).items() if k not in ckpt.RESULT_NEUTRAL}
    return {"config": config, "teachers": entry.get("teachers")}


def _say(message):
    """A line on stderr that does not break a tqdm bar being drawn there."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _read_row(path):
    """A finished run's compare_row.json, or None when there is none or it cannot be read (a file
    damaged by hand or by a crash of an earlier version: said once, and the run is trained again)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if isinstance(saved, dict) and isinstance(saved.get("row"), dict):
            return saved
        problem = "it holds no row"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    _say(f"[compare] {path} could not be read ({problem}); training that run again")
    return None


def _wanted(config, teacher_times):
    # tuples -> lists, as they read back from JSON
    return json.loads(json.dumps({"config": config.to_dict(), "teachers": teacher_times}))


def _saved_row(config, teacher_times):
    """The row saved in the run's folder for this very config and these teachers, else None."""
    saved = _read_row(os.path.join(config.resolved_out_dir(), ROW_FILE))
    if saved is None:
        return None
    return saved["row"] if _reuse_key(saved) == _reuse_key(_wanted(config, teacher_times)) else None


def _continuable(config, teacher_times):
    """The run's last.pt when it can be continued exactly: a checkpoint of this very config (an
    interrupted run, or a finished one whose row was never written), newer than the teachers'
    files it was trained from; else None."""
    path = os.path.join(config.resolved_out_dir(), "last.pt")
    if not (ckpt.is_interrupted_run(path, config) or ckpt.is_finished_run(path, config)):
        return None
    return path if all(os.path.getmtime(path) >= t for t in teacher_times.values()) else None


def _run_method(config, reuse, teacher_times):
    """Train (or read back, or continue from its last.pt) one method; its row of the table."""
    from .api import train

    row_path = os.path.join(config.resolved_out_dir(), ROW_FILE)
    wanted = _wanted(config, teacher_times)
    if reuse:
        row = _saved_row(config, teacher_times)
        if row is not None:
            _say(f"[compare] {config.method} seed {config.seed}: reusing the finished run in "
                 f"{config.resolved_out_dir()}")
            return row
    last = _continuable(config, teacher_times) if reuse else None
    start = time.perf_counter()
    if last is not None:
        _say(f"[compare] {config.method} seed {config.seed}: continuing the interrupted run from {last}")
        # the run's own saved config, with this comparison's result-neutral settings (progress, logs)
        result = train(resume=last, **{k: getattr(config, k) for k in ckpt.RESULT_NEUTRAL if k != "overwrite"})
    else:
        _say(f"[compare] training {config.method} seed {config.seed} ({config.student}, {config.epochs} epochs)")
        result = train(config, overwrite=True)  # compare owns each method's folder: a rerun replaces it
    wall = time.perf_counter() - start
    seconds = sum(r.get("train_seconds", 0.0) for r in result.history)
    images = sum(r.get("train_seconds", 0.0) * r.get("train_images_per_s", 0.0) for r in result.history)
    row = dict(result.metrics)
    row.update(train_seconds=seconds, images_per_s=images / seconds if seconds > 0 else 0.0,
               wall_seconds=wall, epochs=len(result.history), student=config.student,
               out_dir=config.resolved_out_dir(), weights=result.evaluated_weights)
    # Under DDP (a job with several GPUs) every rank runs this, but only rank 0 evaluated the test
    # split: another rank's row has no accuracies and, written last, would empty the table.
    if get_context().is_main:
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


CSV_FIELDS = ("method", "student", "column", "unit", "n", "mean", "std", "ci95_low", "ci95_high", "diff_mean",
              "diff_std", "diff_ci95_low", "diff_ci95_high", "baseline", "seeds", "values")
_UNITS = {"train_seconds": "seconds", "images_per_s": "images/s"}  # every other column: an accuracy


def csv_table(result):
    """The comparison in long form: one line per method and column (accuracies in percent,
    train_seconds, images_per_s; the unit column says which) with n, mean, std, the interval, the paired difference to the baseline, and the
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
                "unit": _UNITS.get(column, result.unit),
                "n": s["n"], "mean": s["mean"], "std": s["std"], "ci95_low": s["ci_low"], "ci95_high": s["ci_high"],
                "diff_mean": d.get("mean"), "diff_std": d.get("std"), "diff_ci95_low": d.get("ci_low"),
                "diff_ci95_high": d.get("ci_high"), "baseline": result.baseline,
                "seeds": ";".join(map(str, result.seeds)), "values": ";".join(repr(v) for v in s["values"]),
            })
    return buffer.getvalue()


__all__ = ["compare", "CompareResult", "markdown_table", "csv_table", "aggregate", "parse_seeds", "preset_for"]
