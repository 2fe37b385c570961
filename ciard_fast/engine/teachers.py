"""Teachers as data: what a distillation run's robust and clean teachers are, and where their
weights come from.

    spec = teacher_spec(config, "robust")     # from the config's robust_teacher* fields
    path = ensure_teacher(spec, config)       # the given file, a cached finished run, or trained now

A teacher the config does not point to is trained first with the same engine (`train()`, the
public entry point) as a run of one of the teacher methods (natural / SAT / TRADES), which need no
teachers themselves, so teacher training never recurses. Its run lives in
`<out_dir>/teachers/<kind>/` and is reused while its config is unchanged.

The teacher's run config is derived from the distillation config with `dataclasses.replace`: every
field is inherited (data, batch, optimiser, attack, precision, devices ...) except the ones named in
`TEACHER_RUN_OVERRIDES`, so a field added to `TrainConfig` later reaches the teacher by default.
"""
import dataclasses
import os
import sys
from typing import Optional, Union

from ..config import TrainConfig, derive_config
from ..models.normalization import AUTO
from . import checkpoint as ckpt

TEACHER_KINDS = ("robust", "clean")
# methods a teacher can be trained with: they need no teachers of their own
TEACHER_METHODS = ("natural", "sat", "trades")

# The TrainConfig fields of each teacher slot (user-facing names, kept for presets, the CLI and
# users). The clean teacher is always trained naturally, so it has no method field.
TEACHER_FIELDS = {
    "robust": {"weights": "robust_teacher", "model": "robust_teacher_model", "model_args": "robust_teacher_args",
               "normalize": "robust_teacher_normalize", "method": "robust_teacher_method"},
    "clean": {"weights": "clean_teacher", "model": "clean_teacher_model", "model_args": "clean_teacher_args",
              "normalize": "clean_teacher_normalize"},
}
# What `auto` normalisation means for a teacher this run trains itself: raw pixels for the robust
# one (as the public TRADES WRN-34-10 takes), the dataset's statistics for the clean one. For a
# teacher given as a file, `auto` is chosen on the validation split (engine/teacher_checks.py).
TEACHER_TRAINING_NORMALIZE = {"robust": False, "clean": True}
# how a missing teacher of either kind is trained
TEACHER_TRAINING_FIELDS = ("teacher_epochs", "teacher_lr")
# the fields that fix a teacher's architecture and input (not its weights)
TEACHER_ARCHITECTURE_FIELDS = tuple(names[key] for names in TEACHER_FIELDS.values()
                                    for key in ("model", "model_args", "normalize"))

# -- the teacher run's config: what it does not inherit from the distillation config -----------
# set from the TeacherSpec: the teacher is that run's "student"
FROM_SPEC = ("method", "method_args", "student", "student_args", "student_normalize", "epochs", "lr")
# A cached teacher run is validated once, at its end, and not tested (nobody reads that table),
# and it always runs to its end; `ciard-fast teacher` keeps the given config's values instead.
CACHED_TEACHER_OVERRIDES = ("eval_every", "test_attacks", "test_n", "plot", "compare_natural_student",
                            "resume", "stop_after")
# Fields that only describe the distillation run: back to their defaults in the teacher's run, so
# that changing them neither changes a teacher nor invalidates a cached one.
# (`swa_start` too: a teacher trained by the run is never weight-averaged, and a distillation
# run's SWA setting neither changes its teachers nor invalidates a cached one.)
DISTILLATION_ONLY = tuple(name for names in TEACHER_FIELDS.values() for name in names.values()) \
    + TEACHER_TRAINING_FIELDS + ("swa_start",)
TEACHER_RUN_OVERRIDES = FROM_SPEC + ("out_dir",) + CACHED_TEACHER_OVERRIDES + DISTILLATION_ONLY


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """One teacher of a distillation run.

    Attributes:
        kind: "robust" or "clean".
        model: a registered model name (`ciard_fast.models.list_models()`).
        model_args: the model's keyword arguments (e.g. {"width": 16}).
        weights: the weights file, or None to train the teacher first.
        normalize: its input normalisation, any value `resolve_normalization` takes (True: the
            dataset's statistics, False: raw [0, 1] pixels, a `DATASET_STATS` name, a pair), or
            "auto" for a teacher given as a file (chosen by `check_run_teachers`; a teacher
            trained by the run gets `TEACHER_TRAINING_NORMALIZE` instead).
        method: how it is trained when `weights` is None: natural, sat or trades.
        method_args: options of that method (e.g. TRADES' beta); {} for its defaults.
        epochs, lr: its training epochs (>= 1) and learning rate (> 0).
    """

    kind: str
    model: str
    model_args: dict = dataclasses.field(default_factory=dict)
    weights: Optional[str] = None
    normalize: Union[bool, str, tuple, None] = True
    method: str = "natural"
    method_args: dict = dataclasses.field(default_factory=dict)
    epochs: int = TrainConfig.teacher_epochs
    lr: float = TrainConfig.teacher_lr

    def __post_init__(self):
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"teacher kind must be one of {', '.join(TEACHER_KINDS)}; got {self.kind!r}")
        if not isinstance(self.model, str) or not self.model:
            raise TypeError(f"the {self.kind} teacher's model must be a registered model name; got {self.model!r}")
        if self.method not in TEACHER_METHODS:
            field = TEACHER_FIELDS[self.kind].get("method", "method")
            raise ValueError(f"{field}={self.method!r}: a teacher is trained with one of "
                             f"{', '.join(TEACHER_METHODS)} (methods that need no teachers themselves)")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"teacher_epochs must be an integer >= 1, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"teacher_lr must be > 0, got {self.lr!r}")

    @property
    def method_keyword(self):
        """The role under which the built-in methods take this slot's teacher (a method may
        declare another role for it: `teacher_roles`)."""
        return {"robust": "robust_teacher", "clean": "clean_teacher"}[self.kind]


def teacher_spec(config, kind):
    """The TeacherSpec of slot `kind` ("robust" or "clean") of a TrainConfig: the one place that
    reads the `<kind>_teacher*` fields."""
    if kind not in TEACHER_FIELDS:
        raise ValueError(f"teacher kind must be one of {', '.join(TEACHER_KINDS)}; got {kind!r}")
    names = TEACHER_FIELDS[kind]
    weights = getattr(config, names["weights"]) or None
    normalize = getattr(config, names["normalize"])
    if normalize == AUTO and weights is None:
        normalize = TEACHER_TRAINING_NORMALIZE[kind]
    return TeacherSpec(kind=kind, model=getattr(config, names["model"]),
                       model_args=dict(getattr(config, names["model_args"]) or {}),
                       weights=weights, normalize=normalize,
                       method=getattr(config, names["method"]) if "method" in names else "natural",
                       epochs=config.teacher_epochs, lr=config.teacher_lr)


def teacher_roles(method, method_args=None):
    """{kind: role} of the teacher slots ("robust", "clean", in that order) that the method named
    `method` declares (`Network.teacher`) for these options (default: its defaults)."""
    from ..methods import get_method, make_options

    cls = get_method(method)
    options = make_options(method, method_args or {})
    declared = {}
    for network in cls.variant_for(options).declare_networks(options):
        if network.source != "teacher":
            continue
        if network.slot not in TEACHER_FIELDS:
            raise ValueError(f"method {method!r}: network {network.role!r} names teacher slot {network.slot!r}; the "
                             f"slots are {', '.join(TEACHER_KINDS)}")
        declared[network.slot] = network.role
    return {kind: declared[kind] for kind in TEACHER_KINDS if kind in declared}


def needed_teachers(method, method_args=None):
    """The kinds of teacher ("robust", "clean") the method named `method` needs, in that order."""
    return tuple(teacher_roles(method, method_args))


def teacher_specs(config):
    """{kind: TeacherSpec} of the teachers `config.method` needs (none for the teacher methods)."""
    return {kind: teacher_spec(config, kind) for kind in needed_teachers(config.method, config.method_args)}


def teacher_run_config(spec, base_config, out_dir=None, tested=False):
    """The TrainConfig of the run that trains `spec`'s teacher, derived from `base_config`.

    Every field is inherited from `base_config` except `TEACHER_RUN_OVERRIDES`: the spec's
    model/normalisation/method/epochs/lr, `out_dir` (default `<base out_dir>/teachers/<kind>`),
    the distillation-only fields (reset to their defaults) and, unless `tested`, a run that is
    validated once at its end and not tested (`CACHED_TEACHER_OVERRIDES`).
    """
    _check_method_args(spec)
    defaults = TrainConfig()
    changes = {name: getattr(defaults, name) for name in DISTILLATION_ONLY}
    changes.update(method=spec.method, method_args=dict(spec.method_args), student=spec.model,
                   student_args=dict(spec.model_args), student_normalize=spec.normalize, epochs=spec.epochs,
                   lr=spec.lr, out_dir=out_dir or os.path.join(base_config.resolved_out_dir(), "teachers", spec.kind))
    if not tested:
        changes.update(eval_every=spec.epochs, test_attacks=(), test_n=None, plot=False,
                       compare_natural_student=False, resume=None, stop_after=None)
    return derive_config(base_config, TEACHER_RUN_OVERRIDES, **changes)


def ensure_teacher(spec, base_config, out_dir=None, tested=False, reuse=True, numbered=False):
    """The weights file of `spec`'s teacher: `spec.weights` when given (it must exist and not be
    empty); else the `last.pt` of its run in `out_dir` (default `<base out_dir>/teachers/<kind>/`),
    reused when that run finished with the very same config (`teacher_run_config`), continued
    exactly when it was interrupted (a kill, SIGTERM), else trained now with `train()`.

    `tested=True` (the `ciard-fast teacher` command) keeps `base_config`'s evaluation, so the run
    prints its test table, and its folder rules: a used folder is refused unless `overwrite`, or
    with `numbered=True` (a default folder) the run moves to the next free numbered folder.
    Otherwise the folder is the engine's own and is retrained into. Returns the weights path;
    load it with `ciard_fast.models.load_weights`.
    """
    if spec.weights:
        _check_weights_file(spec)
        return spec.weights
    from .api import train  # the engine's public entry point (api imports this module)

    config = teacher_run_config(spec, base_config, out_dir=out_dir, tested=tested)
    path = os.path.join(config.resolved_out_dir(), "last.pt")
    prefix = "" if tested else f"[{spec.kind} teacher] "
    if reuse and ckpt.is_finished_run(path, config):
        if config.progress:
            print(f"{prefix or '[teacher] '}reusing the finished run in {config.resolved_out_dir()}", file=sys.stderr)
        return path
    if reuse and ckpt.is_interrupted_run(path, config):
        print(f"{prefix or '[teacher] '}continuing the interrupted run from {path}", file=sys.stderr)
        return train(resume=path, progress_prefix=prefix).last_checkpoint
    if numbered:
        config = config.with_default_out_dir(config.resolved_out_dir())
    elif not tested:
        config = derive_config(config, ("overwrite",), overwrite=True)  # the engine owns this folder
    return train(config, progress_prefix=prefix).last_checkpoint


def _check_weights_file(spec):
    field = TEACHER_FIELDS[spec.kind]["weights"]
    if not os.path.isfile(spec.weights):
        raise ValueError(f"{field}={spec.weights!r}: no such file; give the {spec.kind} teacher's weights file, "
                         f"or leave {field} unset to train the teacher first")
    if os.path.getsize(spec.weights) == 0:
        raise ValueError(f"{field}={spec.weights!r} is an empty file (0 bytes; an interrupted copy?); "
                         "give a complete weights file")


def ensure_teachers(config):
    """{kind: weights file} of every teacher `config.method` needs, trained first where missing."""
    return {kind: ensure_teacher(spec, config) for kind, spec in teacher_specs(config).items()}


def build_teachers(config, splits, device, teacher_paths, state=None):
    """{role: model} of the teachers `config.method` needs, each built with its
    normalisation and loaded from `teacher_paths[kind]` (when resuming from `state`, the weights
    come with the method state instead).

    A teacher whose normalisation is "auto" is built on raw pixels until `check_run_teachers`
    chooses; on resume it is built with the choice recorded in `<out_dir>/teachers.json`."""
    from ..models import load_weights
    from .builders import build_model

    teachers = {}
    roles = teacher_roles(config.method, config.method_args)
    for kind, spec in teacher_specs(config).items():
        normalize = spec.normalize
        if normalize == AUTO:
            normalize = False if state is None else _recorded_normalize(config, kind)
        model = build_model(spec.model, splits["train"], normalize, device, config, spec.model_args)
        if state is None:
            try:
                load_weights(model, teacher_paths[kind])
            except (ValueError, TypeError) as exc:  # under the config's own field names
                names = TEACHER_FIELDS[kind]
                raise type(exc)(f"{names['weights']}={teacher_paths[kind]!r} (for {names['model']}={spec.model!r}): "
                                f"{exc}") from None
        teachers[roles[kind]] = model
    return teachers


def _recorded_normalize(config, kind):
    from .teacher_checks import read_teachers_json

    recorded = read_teachers_json(config.resolved_out_dir()) or {}
    if kind not in recorded or "normalize" not in recorded[kind]:
        field = TEACHER_FIELDS[kind]["normalize"]
        raise ValueError(f"cannot resume with {field}='auto': the choice made at the start is recorded in "
                         f"{os.path.join(config.resolved_out_dir(), 'teachers.json')}, which is missing; "
                         f"give {field} explicitly (true, false or a statistics name)")
    return recorded[kind]["normalize"]


def check_run_teachers(config, teachers, teacher_paths, splits, device, precision_ctx, dist):
    """Every teacher on the validation split before distillation (clean accuracy; the robust one
    also PGD), "auto" resolved, a weak teacher stopped (unless `allow_weak_teacher`); printed and
    written to `<out_dir>/teachers.json` (engine/teacher_checks.py). Returns the report or None."""
    from ..models.normalization import resolve_normalization
    from .builders import build_loader
    from .distributed import unwrap
    from .teacher_checks import TeacherToCheck, check_teachers, normalization_candidates

    train_set = splits["train"]
    to_check = []
    roles = teacher_roles(config.method, config.method_args)
    for kind, spec in teacher_specs(config).items():
        model = teachers[roles[kind]]

        def set_normalize(value, model=model):
            unwrap(model).set_normalization(resolve_normalization(value, train_set))

        to_check.append(TeacherToCheck(
            kind=kind, model=model, path=teacher_paths.get(kind), model_name=spec.model, normalize=spec.normalize,
            candidates=tuple(normalization_candidates(config.dataset, train_set.mean, train_set.std)),
            set_normalize=set_normalize, given_as_file=bool(spec.weights)))
    if not to_check:
        return None
    if splits.get("val") is None:
        if any(t.normalize == AUTO for t in to_check):
            raise ValueError("teacher normalisation 'auto' is chosen on the validation split, but val_size=0; use "
                             "val_size > 0 or give robust_teacher_normalize / clean_teacher_normalize explicitly")
        if dist.is_main:
            print("[teachers] not checked: no validation split (val_size=0)")
        return None
    val_loader = build_loader(config, splits["val"], device, train=False, limit=config.eval_n)
    return check_teachers(
        to_check, val_loader, num_classes=train_set.num_classes, eps=config.eps, alpha=2 / 255,
        pgd_steps=config.eval_pgd_steps, precision_ctx=precision_ctx,
        out_dir=config.resolved_out_dir() if dist.is_main else None, allow_weak=config.allow_weak_teacher,
        seed=config.seed, log=print if dist.is_main else (lambda *_: None))


def _check_method_args(spec):
    from ..methods import get_method

    valid = {f.name for f in dataclasses.fields(get_method(spec.method).Options)}
    unknown = sorted(set(spec.method_args) - valid)
    if unknown:
        raise ValueError(f"the {spec.kind} teacher's method {spec.method!r} has no option(s) {unknown}; "
                         f"its options: {', '.join(sorted(valid)) or 'none'}")


__all__ = ["TeacherSpec", "TEACHER_FIELDS", "TEACHER_KINDS", "TEACHER_METHODS", "TEACHER_RUN_OVERRIDES",
           "TEACHER_TRAINING_NORMALIZE", "build_teachers", "check_run_teachers", "ensure_teacher", "ensure_teachers", "needed_teachers", "teacher_roles", "teacher_run_config", "teacher_spec", "teacher_specs"]
