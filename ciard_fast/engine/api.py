"""`ciard_fast.train()`: build a run from a config and execute it.

    result = ciard_fast.train()                                   # the embedded digits demo
    result = ciard_fast.train("cifar10-resnet18", robust_teacher="model_cifar_wrn.pt",
                              clean_teacher="resnet56.pt", data_root="data/")
    result = ciard_fast.train(resume="runs/ciard-cifar10-resnet18/last.pt")

Teachers a method needs but the config does not point to are trained first with the same engine
(natural for the clean teacher, TRADES by default for the robust one) and cached under
`<out_dir>/teachers/` (`ciard_fast.engine.teachers`), so the whole pipeline runs from scratch,
offline.
"""
import contextlib
import dataclasses
import json
import os
from typing import Optional

import torch

from ..config import TrainConfig, build_config, derive_config
from ..methods import AttackSettings, get_method, make_options
from ..tables import column_label, format_accuracy, order_columns, render_table
from . import checkpoint as ckpt
from .builders import build_fresh_networks, build_loader, build_model, load_splits
from .callbacks import build_callbacks
from .distributed import get_context
from ..atomic import write_text_atomic
from ..plots import plot_curves
from .model_card import write_run_card
from .precision import RunPrecision, resolve_device, resolve_precision
from .preflight import check_before_training
from .rundir import claim_run_folder
from .signals import RunInterrupted, graceful_stop, stop_at_once
from .surrogate import (check_surrogate_record, describe as describe_surrogate, load_surrogate, record_surrogate,
                        transfer_columns)
from .teachers import build_teachers, check_run_teachers, ensure_teachers, teacher_specs
from .trainer import Trainer

# The fields the natural comparison student's run changes; it inherits every other one.
NATURAL_STUDENT_OVERRIDES = ("method", "method_args", "lr", "compare_natural_student", "plot", "out_dir",
                             "test_attacks", "resume", "stop_after", "swa_start")


@dataclasses.dataclass
class TrainResult:
    """What a run produced. `metrics`: the final test-set accuracies (%) of the best checkpoint,
    by attack name; `table`: the Markdown table printed at the end; `teachers`: checkpoint paths;
    `evaluated`: which checkpoint the table comes from, e.g. "best.pt (epoch 4)";
    `evaluated_weights`: what those weights are when they are not the student's own (an engine
    callback's, e.g. "SWA of the student: mean of the weights at the ends of epochs 95–200 ..."),
    None for the student's; `surrogate`: what the transfer columns were crafted on (the record of
    `engine/surrogate.py`; {} when none ran)."""

    out_dir: str
    last_checkpoint: str
    best_checkpoint: Optional[str]
    metrics: dict
    history: list
    config: TrainConfig
    teachers: dict = dataclasses.field(default_factory=dict)
    table: str = ""
    comparison: dict = dataclasses.field(default_factory=dict)
    evaluated: str = ""
    surrogate: dict = dataclasses.field(default_factory=dict)
    evaluated_weights: Optional[str] = None


def make_config(config=None, **overrides):
    """config: None (the demo preset), a preset name, a YAML path, a dict or a TrainConfig."""
    if isinstance(config, TrainConfig):
        return config.replace(**overrides) if overrides else config
    if config is None:
        return build_config(preset="demo", overrides=overrides)
    if isinstance(config, dict):
        return build_config(overrides={**config, **overrides})
    if isinstance(config, str):
        if config.endswith((".yaml", ".yml")) or os.path.isfile(config):
            return build_config(config_file=config, overrides=overrides)
        return build_config(preset=config, overrides=overrides)
    raise TypeError(f"config must be None, a preset name, a YAML path, a dict or a TrainConfig; got {type(config).__name__}")


def _config_for_resume(path, overrides):
    """The checkpoint's own config, with the user's explicit overrides that are safe to change."""
    state = ckpt.load_checkpoint(path)  # raises a clear error before anything is written
    ckpt.check_resumable(state, path)
    saved = dict(state["config"])
    saved.pop("resume", None)
    saved.pop("stop_after", None)  # a stop point belongs to the run that stopped, not to its continuation
    # (swa_start too: the checkpoint's average covers the epochs the run's own start gave it)
    fixed = ("method", "dataset", "student", "robust_teacher_model", "clean_teacher_model", "batch_size", "seed",
             "swa_start")
    for key in fixed:
        if key in overrides and overrides[key] != saved.get(key):
            raise ValueError(
                f"cannot change {key!r} when resuming ({saved.get(key)!r} in {path!r}, {overrides[key]!r} given); "
                "start a new run instead"
            )
    # The run continues in the folder that holds the checkpoint (it may have been moved since).
    folder = os.path.dirname(os.path.abspath(path))
    merged = build_config(overrides={**saved, **overrides, "resume": path, "out_dir": folder, "overwrite": False})
    _check_best_checkpoint(folder, state)
    return merged, state


def _check_best_checkpoint(folder, last_state):
    """Resume check of the on-disk invariant: `best.pt` is the epoch `last.pt` names, or one epoch
    ahead of `last.pt` (a kill between the two writes; that epoch is trained again and rewrites
    it). Anything else (a best.pt of another run, a missing one) would put a wrong row in the
    final table, so it is an error naming both epochs."""
    best_epoch, last_epoch = int(last_state.get("best_epoch", 0)), int(last_state["epoch"])
    best_path = os.path.join(folder, "best.pt")
    if best_epoch == 0:
        return
    if not os.path.isfile(best_path):
        raise ValueError(f"{os.path.join(folder, 'last.pt')} names best epoch {best_epoch} but {best_path} is "
                         "missing; restore it, or start a new run")
    found = int(ckpt.load_checkpoint(best_path).get("epoch", -1))
    if found not in (best_epoch, last_epoch + 1):
        raise ValueError(f"{best_path} holds epoch {found} but {os.path.join(folder, 'last.pt')} (epoch {last_epoch}) "
                         f"names best epoch {best_epoch}: the folder mixes two runs; start a new run")


def train(config=None, *, progress_prefix="", **overrides):
    """Train a student (or a teacher, with method natural/sat/trades) and return a TrainResult.

    `config` is None (the `demo` preset), a preset name, a YAML file, a dict or a TrainConfig;
    keyword overrides win over it (TrainConfig fields or the method's options, e.g. T_push=3).
    With `resume=PATH` the run continues exactly from that checkpoint (an epoch's end or, after a
    signal or `checkpoint_every_steps`, inside an epoch) in the folder that holds PATH: its saved
    config is reused, and whatever is given here must agree with it on the method, data, models,
    batch and seed.

    Teachers the method needs are resolved first (`ensure_teachers`: the given files, cached
    finished teacher runs, or teacher runs trained now); a resumed run restores its own. So is
    the natural comparison student (`compare_natural_student`): every run is started here, none
    inside another. `progress_prefix` starts every progress line (e.g. "[robust teacher] ").

    The run folder (`engine/rundir.py`): locked while the run writes it; an `out_dir` you give
    that already holds a run is refused unless `overwrite=True`; the default or a preset's folder
    moves to the next free numbered one (`runs/demo-2`).

    Raises: ValueError/TypeError for bad input (before any data is loaded), RunFolderError (a
    ValueError) for a locked or used folder, DivergenceError (a RuntimeError) when a loss or the
    weights become non-finite, RunInterrupted after SIGTERM/SIGINT (a resumable last.pt is written
    first), AtomicWriteError (an OSError) when a file cannot be written (e.g. a full disk).
    """
    resume = overrides.get("resume") or (config.resume if isinstance(config, TrainConfig) else None)
    if not resume:
        config = make_config(config, **overrides)
        check_before_training(config)  # device, out_dir, data, teacher files: before anything trains
        with _resume_hint_for_sub_runs():
            teacher_paths = ensure_teachers(config)
            _ensure_natural_student(config)
        return _run(config, teacher_paths, progress_prefix=progress_prefix)
    given = make_config(config, **overrides).to_dict() if config is not None else dict(overrides)
    _check_resume_folder(resume, overrides.get("out_dir") or (
        config.out_dir if isinstance(config, TrainConfig) and config.out_dir_given else None))
    config, state = _config_for_resume(resume, given)
    check_before_training(config, resuming=True)
    # the teachers' weights come with the method state of the checkpoint
    restored = {kind: spec.weights or "(restored from checkpoint)" for kind, spec in teacher_specs(config).items()}
    with _resume_hint_for_sub_runs():
        _ensure_natural_student(config)
    return _run(config, restored, state, progress_prefix=progress_prefix)


def _check_resume_folder(resume, out_dir):
    """A resumed run continues in the folder that holds its checkpoint: an out_dir given beside
    resume that names another folder would be ignored, so it is an error."""
    folder = os.path.dirname(os.path.abspath(os.fspath(resume)))
    if out_dir and os.path.normpath(os.path.abspath(out_dir)) != os.path.normpath(folder):
        raise ValueError(f"out_dir {out_dir!r} given with resume {os.fspath(resume)!r}: a resumed run continues in the "
                         f"folder that holds its checkpoint ({folder}). Leave out_dir out, or move the run folder "
                         f"to {out_dir!r} and resume from {os.path.join(out_dir, 'last.pt')}")


@contextlib.contextmanager
def _resume_hint_for_sub_runs():
    """A teacher or natural-student run interrupted before the main run started: the way back is
    the same command (finished parts are reused, the interrupted run continues exactly)."""
    try:
        yield
    except RunInterrupted as stop:
        if stop.resume_hint is None:
            stop.resume_hint = (f"the same command again (the finished parts are reused and the interrupted "
                                f"run continues from {stop.checkpoint})")
        raise


def _run(config, teacher_paths, state=None, progress_prefix="", managed=False):
    """Claim the run folder (lock, numbered folder; see `engine/rundir.py`), then train a run whose
    teachers are already resolved: `teacher_paths` maps each teacher the method needs
    ("robust"/"clean") to its weights file (unused when resuming from `state`).

    managed: a folder the engine retrains into (the natural comparison student)."""
    dist = get_context(config.device)
    resolve_device(config.device)  # `--device cuda` without a GPU: one clear error before anything
    lock = None
    # Rank 0 claims the folder and tells the others. Under torch.distributed a default folder that
    # holds a run is refused like a user-given one (ranks must agree on the folder before any write).
    if dist.is_main:
        out_dir, lock = claim_run_folder(config.resolved_out_dir(), resuming=state is not None, managed=managed,
                                         user_given=config.out_dir_given or dist.enabled,
                                         overwrite=config.overwrite)
    else:
        out_dir = None
    out_dir = dist.broadcast_object(out_dir) if dist.enabled else out_dir
    if os.path.normpath(out_dir) != os.path.normpath(config.resolved_out_dir()):
        config = config.replace(out_dir=out_dir)
    try:
        with graceful_stop():
            return _train_in_folder(config, teacher_paths, state, progress_prefix)
    except RunInterrupted as stop:
        if stop.resume_hint is None and not progress_prefix:
            if os.path.normpath(os.path.dirname(stop.checkpoint)) == os.path.normpath(out_dir):
                stop.resume_hint = f"ciard-fast train --resume {stop.checkpoint}"
            else:  # a teacher (or comparison) run inside this one was interrupted
                stop.resume_hint = (f"the same command again (the finished parts are reused and the interrupted "
                                    f"run continues from {stop.checkpoint})")
        raise
    finally:
        if lock is not None:
            lock.release()


def _train_in_folder(config, teacher_paths, state, progress_prefix):
    dist = get_context(config.device)
    device = resolve_device(config.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if config.batch_size % dist.world_size:
        raise ValueError(f"batch_size={config.batch_size} is the global batch and must be divisible by the "
                         f"world size {dist.world_size}; use a multiple of {dist.world_size}")
    precision = resolve_precision(config.precision, device)
    # Each rank draws its own attack noise; rank 0's stream is the single-process one.
    torch.manual_seed(config.seed + 7919 * dist.rank)
    out_dir = config.resolved_out_dir()
    method_cls = get_method(config.method)
    splits = load_splits(config)
    num_classes = splits["train"].num_classes

    precision_ctx = RunPrecision(precision, device)  # a fresh autocast per use; falls back to fp32 if bf16 fails
    options = make_options(config.method, config.method_args)
    specs = method_cls.variant_for(options).declare_networks(options)
    teachers = build_teachers(config, splits, device, teacher_paths, state)
    if teachers and state is None:
        check_run_teachers(config, teachers, teacher_paths, splits, device, precision_ctx, dist)
        if dist.is_main:  # before any step: ITT may fine-tune the robust teacher the transfer columns need as loaded
            record_surrogate(config, teachers.get("robust_teacher"), teacher_paths.get("robust"), out_dir)
    elif state is not None and dist.is_main:
        check_surrogate_record(config, out_dir)

    student = build_model(config.student, splits["train"], config.student_normalize, device, config,
                          config.student_args)
    student = dist.wrap(student, device, config.sync_batchnorm)
    networks = {**teachers, **build_fresh_networks(specs, config, splits["train"], device)}
    method = method_cls(student, num_classes=num_classes, epochs=config.epochs, base_lr=config.lr,
                        options=options, attack=AttackSettings(config.eps, config.alpha, config.attack_steps,
                                                                   config.attack_random_start),
                        device=device, **networks)
    _distribute_method(method, dist, device, config)
    train_loader = build_loader(config, splits["train"], device, train=True, dist=dist)
    val_loader = (build_loader(config, splits["val"], device, train=False, limit=config.eval_n, dist=dist)
                  if splits.get("val") else None)
    trainer = Trainer(config, method, student, train_loader, val_loader, out_dir, precision_ctx,
                      dist=dist, progress_prefix=progress_prefix, callbacks=build_callbacks(config))
    if state is not None:
        trainer.load_checkpoint_state(state, config.resume or "the checkpoint")
        if dist.rank > 0:  # the checkpoint holds rank 0's RNG; other ranks draw their own
            torch.manual_seed(config.seed + 7919 * dist.rank + 104729 * trainer.state.epoch)
    if dist.is_main:
        os.makedirs(out_dir, exist_ok=True)
    run_state = trainer.fit()

    best = trainer.best_path if run_state.best_epoch > 0 else None
    result = TrainResult(out_dir=out_dir, last_checkpoint=trainer.last_path, best_checkpoint=best, metrics={},
                         history=run_state.history, config=config, teachers=teacher_paths)
    finished = run_state.epoch >= config.epochs
    if finished and config.test_attacks and dist.is_main:
        checkpoint, result.evaluated, result.evaluated_weights = _checkpoint_to_evaluate(trainer, run_state)
        with stop_at_once(trainer.last_path, run_state.epoch, run_state.step):  # nothing to save: stop at once
            surrogate, record = load_surrogate(config, num_classes, device, out_dir)
            result.surrogate = record or {}
            result.metrics = _test_metrics(config, student, checkpoint, splits["test"], device, surrogate, record)
            rows = {f"{config.method} student ({config.student})": result.metrics}
            if config.compare_natural_student:
                natural = _natural_student(config, splits, device, surrogate, record)
                rows[f"natural student ({config.student})"] = natural
        result.comparison = rows
        result.table = _markdown_table(rows, config, result.evaluated, record)
        _write_results(out_dir, result)
        print(result.table)
    if finished and dist.is_main:
        write_run_card(result, student, splits)  # model_card.json/.md: the run's card (engine/model_card.py)
    if config.plot and run_state.history and dist.is_main:
        plot_curves(run_state.history, os.path.join(out_dir, "curves.png"))
    trainer.close_tracker(result)  # W&B: the final table, then the run is finished
    dist.barrier()
    return result


def _distribute_method(method, dist, device, config):
    """Under torch.distributed: method state from global statistics, DDP for every network the
    method declares trainable besides the student (e.g. CIARD's robust teacher during ITT)."""
    if not dist.enabled:
        return
    method.reduce_mean = dist.all_reduce_mean
    method.reduce_max = dist.all_reduce_max
    method.world_size = dist.world_size
    networks = method.all_networks()
    for role in method.trainable_roles()[1:]:  # the student is wrapped before the method is built
        module = networks[role]
        flags = [p.requires_grad for p in module.parameters()]
        module.requires_grad_(True)  # DDP registers its gradient hooks for the parameters that train
        wrapped = dist.wrap(module, device, config.sync_batchnorm)
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        method.set_network(role, wrapped)


def natural_student_config(config):
    """The run of the natural comparison student: `config` with `NATURAL_STUDENT_OVERRIDES`
    changed, everything else (data, architecture, optimiser, attack, precision ...) inherited."""
    # Trained like the clean teacher (cross-entropy at teacher_lr): `lr` is tuned for the
    # distillation losses, whose elementwise-mean KL is C times smaller than a CE. Tested below
    # with the parent's attacks, not by its own run.
    # No SWA either: the point of comparison is the plain training recipe of the clean teacher.
    return derive_config(config, NATURAL_STUDENT_OVERRIDES, method="natural", method_args={}, lr=config.teacher_lr,
                         compare_natural_student=False, plot=False, test_attacks=(), resume=None, stop_after=None,
                         swa_start=None, out_dir=os.path.join(config.resolved_out_dir(), "natural_student"))


def _ensure_natural_student(config):
    """Train the natural comparison student's run unless it already finished with the same config:
    before the student's own run (which reseeds, so its results do not depend on this), on every
    rank, and only when the student's run will reach its test table."""
    stops_early = config.stop_after is not None and config.stop_after < config.epochs
    if not (config.compare_natural_student and config.test_attacks) or stops_early:
        return
    sub = natural_student_config(config)
    if not ckpt.is_finished_run(os.path.join(sub.resolved_out_dir(), "last.pt"), sub):
        _run(sub, {}, progress_prefix="[natural student] ", managed=True)  # needs no teachers


def _natural_student(config, splits, device, surrogate=None, record=None):
    """Test the natural student trained by `_ensure_natural_student` (the demo's point of comparison);
    its transfer columns are crafted on the same surrogate as the student's."""
    sub = natural_student_config(config)
    cached = os.path.join(sub.resolved_out_dir(), "last.pt")
    model = build_model(sub.student, splits["train"], sub.student_normalize, device, sub, sub.student_args)
    best = os.path.join(sub.resolved_out_dir(), "best.pt")
    return _test_metrics(config, model, best if os.path.isfile(best) else cached, splits["test"], device, surrogate,
                         record)


# ---- final evaluation --------------------------------------------------------------------------
def _checkpoint_to_evaluate(trainer, run_state):
    """(path, label, source) of the weights the final table reports: best.pt when it holds the
    run's best epoch, last.pt when the run had no validation; `source`: what the weights are when
    not the student's own (`checkpoint.eval_weights_source`), else None. A best.pt of another
    epoch is an error: the table must never come from weights other than the ones it names."""
    if run_state.best_epoch == 0:
        source = ckpt.eval_weights_source(ckpt.load_checkpoint(trainer.last_path))
        return trainer.last_path, (f"last.pt (epoch {run_state.epoch}{_weights_note(source)}; no validation, "
                                   "so no best.pt)"), source
    path = trainer.best_path
    state = ckpt.load_checkpoint(path) if os.path.isfile(path) else {}
    found = state.get("epoch")
    if found != run_state.best_epoch:
        raise RuntimeError(f"{path} holds epoch {found} but this run's best epoch is {run_state.best_epoch}; "
                           "refusing to report the wrong weights. Evaluate a checkpoint with ciard-fast eval")
    source = ckpt.eval_weights_source(state)
    return path, f"best.pt (epoch {found}{_weights_note(source)})", source


def _weights_note(source):
    """', <what the weights are>' when a checkpoint evaluates other weights than the student's."""
    return f", {source}" if source else ""


def _test_metrics(config, model, checkpoint_path, test_set, device, surrogate=None, record=None):
    """Accuracies (%) on the test split under the config's attacks, for the best checkpoint; the
    transfer columns crafted on `surrogate` (described by `record`)."""
    from ..attacks.evaluate import evaluate

    if checkpoint_path:
        model.load_state_dict(ckpt.eval_weights(ckpt.load_checkpoint(checkpoint_path)))
    model.eval()
    report = evaluate(model, test_set, attacks=tuple(config.test_attacks), eps=config.eps, n=config.test_n,
                      device=device, progress=config.progress, seed=config.seed, surrogate=surrogate,
                      surrogate_name=describe_surrogate(record) if record else None)
    return {name: 100.0 * value for name, value in report.accuracy.items()}  # fractions -> %


def _markdown_table(rows, config, evaluated="", surrogate=None):
    columns = order_columns(k for metrics in rows.values() for k in metrics)
    source = f" (student weights: {evaluated})" if evaluated else ""
    lines = [f"Test accuracy (%) at eps = {config.eps * 255:.3g}/255 on {config.dataset}{source}", ""]
    body = [[name] + [format_accuracy(metrics.get(c)) for c in columns] for name, metrics in rows.items()]
    lines += render_table(["model"] + [column_label(c) for c in columns], body)
    if surrogate:
        from ..attacks.columns import ATTACK_REGISTRY

        transfer = transfer_columns([c for c in columns if c in ATTACK_REGISTRY])
        lines += ["", f"{', '.join(column_label(c) for c in transfer)}: crafted on {describe_surrogate(surrogate)}."]
    return "\n".join(lines) + "\n"


def _write_results(out_dir, result):
    write_text_atomic(os.path.join(out_dir, "results.md"), result.table)
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(
        {"config": result.config.to_dict(), "unit": "percent", "test": result.comparison, "teachers": result.teachers,
         "best_checkpoint": result.best_checkpoint, "last_checkpoint": result.last_checkpoint,
         "evaluated": result.evaluated, "evaluated_weights": result.evaluated_weights,
         "surrogate": result.surrogate or None}, indent=2))
