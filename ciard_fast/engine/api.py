"""`ciard_fast.train()`: build a run from a config and execute it.

    result = ciard_fast.train()                                   # the embedded digits demo
    result = ciard_fast.train("cifar10-resnet18", robust_teacher="model_cifar_wrn.pt",
                              clean_teacher="resnet56.pt", data_root="data/")
    result = ciard_fast.train(resume="runs/ciard-cifar10-resnet18/last.pt")

Teachers a method needs but the config does not point to are trained first with the same engine
(natural for the clean teacher, TRADES by default for the robust one) and cached under
`<out_dir>/teachers/`, so the whole pipeline runs from scratch, offline.
"""
import dataclasses
import json
import os
from typing import Optional

import torch

from ..config import TrainConfig, build_config
from ..methods import AttackSettings, get_method
from . import checkpoint as ckpt
from .builders import build_loader, build_model, load_splits
from .distributed import get_context
from ..atomic import write_text_atomic
from ..plots import plot_curves
from .precision import autocast, resolve_device, resolve_precision
from .trainer import Trainer


@dataclasses.dataclass
class TrainResult:
    """What a run produced. `metrics`: the final test-set accuracies (%) of the best checkpoint,
    by attack name; `table`: the Markdown table printed at the end; `teachers`: checkpoint paths."""

    out_dir: str
    last_checkpoint: str
    best_checkpoint: Optional[str]
    metrics: dict
    history: list
    config: TrainConfig
    teachers: dict = dataclasses.field(default_factory=dict)
    table: str = ""
    comparison: dict = dataclasses.field(default_factory=dict)


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
    saved = dict(state["config"])
    saved.pop("resume", None)
    saved.pop("stop_after", None)  # a stop point belongs to the run that stopped, not to its continuation
    fixed = ("method", "dataset", "student", "robust_teacher_model", "clean_teacher_model", "batch_size", "seed")
    for key in fixed:
        if key in overrides and overrides[key] != saved.get(key):
            raise ValueError(
                f"cannot change {key!r} when resuming ({saved.get(key)!r} in {path!r}, {overrides[key]!r} given); "
                "start a new run instead"
            )
    merged = build_config(overrides={**saved, **overrides, "resume": path})
    return merged, state


def train(config=None, **overrides):
    """Train a student (or a teacher, with method natural/sat/trades) and return a TrainResult.

    `config` is None (the `demo` preset), a preset name, a YAML file, a dict or a TrainConfig;
    keyword overrides win over it (TrainConfig fields or the method's options, e.g. T_push=3).
    With `resume=PATH` the run continues exactly from that checkpoint: its saved config is reused,
    and whatever is given here must agree with it on the method, data, models, batch and seed.
    """
    resume = overrides.get("resume") or (config.resume if isinstance(config, TrainConfig) else None)
    if not resume:
        return _run(make_config(config, **overrides))
    given = make_config(config, **overrides).to_dict() if config is not None else dict(overrides)
    config, state = _config_for_resume(resume, given)
    return _run(config, state)


def _run(config, state=None, progress_prefix=""):
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

    teachers, teacher_paths = {}, {}
    if method_cls.needs_robust_teacher:
        teachers["robust_teacher"], teacher_paths["robust"] = _teacher(config, "robust", splits, device, state)
    if method_cls.needs_clean_teacher:
        teachers["clean_teacher"], teacher_paths["clean"] = _teacher(config, "clean", splits, device, state)

    student = build_model(config.student, splits["train"], config.student_normalize, device, config,
                          config.student_args)
    student = dist.wrap(student, device, config.sync_batchnorm)
    options = method_cls.Options(**config.method_args)
    method = method_cls(student, num_classes=num_classes, epochs=config.epochs, base_lr=config.lr,
                        options=options, attack=AttackSettings(config.eps, config.alpha, config.attack_steps,
                                                                   config.attack_random_start),
                        device=device, **teachers)
    _distribute_method(method, dist, device, config)
    train_loader = build_loader(config, splits["train"], device, train=True, dist=dist)
    val_loader = (build_loader(config, splits["val"], device, train=False, limit=config.eval_n, dist=dist)
                  if splits.get("val") else None)
    precision_ctx = lambda: autocast(precision, device)  # noqa: E731  (a fresh context per use)

    trainer = Trainer(config, method, student, train_loader, val_loader, out_dir, precision_ctx,
                      dist=dist, progress_prefix=progress_prefix)
    if state is not None:
        trainer.load_checkpoint_state(state)
        if dist.rank > 0:  # the checkpoint holds rank 0's RNG; other ranks draw their own
            torch.manual_seed(config.seed + 7919 * dist.rank + 104729 * trainer.state.epoch)
    if dist.is_main:
        os.makedirs(out_dir, exist_ok=True)
    run_state = trainer.fit()

    best = trainer.best_path if os.path.isfile(trainer.best_path) else None
    result = TrainResult(out_dir=out_dir, last_checkpoint=trainer.last_path, best_checkpoint=best, metrics={},
                         history=run_state.history, config=config, teachers=teacher_paths)
    finished = run_state.epoch >= config.epochs
    if finished and config.test_attacks and dist.is_main:
        result.metrics = _test_metrics(config, student, best, splits["test"], device)
        rows = {f"{config.method} student ({config.student})": result.metrics}
        if config.compare_natural_student:
            natural = _natural_student(config, splits, device)
            rows[f"natural student ({config.student})"] = natural
        result.comparison = rows
        result.table = _markdown_table(rows, config)
        _write_results(out_dir, result)
        print(result.table)
    if config.plot and run_state.history and dist.is_main:
        plot_curves(run_state.history, os.path.join(out_dir, "curves.png"))
    dist.barrier()
    return result


def _distribute_method(method, dist, device, config):
    """Under torch.distributed: method state from global statistics, DDP for the modules the
    method trains besides the student (CIARD's robust teacher during ITT)."""
    if not dist.enabled:
        return
    method.reduce_mean = dist.all_reduce_mean
    method.world_size = dist.world_size
    for name, module in method.trainable_modules().items():
        flags = [p.requires_grad for p in module.parameters()]
        module.requires_grad_(True)  # DDP registers its gradient hooks for the parameters that train
        wrapped = dist.wrap(module, device, config.sync_batchnorm)
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        setattr(method, name, wrapped)


# ---- teachers ----------------------------------------------------------------------------------
def _teacher(config, kind, splits, device, state):
    """(model, path) of the robust or clean teacher: loaded from the config's path, restored from
    a resumed checkpoint, or trained first and cached under <out_dir>/teachers/<kind>/."""
    from ..models import load_weights

    model_name = getattr(config, f"{kind}_teacher_model")
    normalize = getattr(config, f"{kind}_teacher_normalize")
    model = build_model(model_name, splits["train"], normalize, device, config,
                        getattr(config, f"{kind}_teacher_args"))
    path = getattr(config, f"{kind}_teacher")
    if state is not None:
        return model, path or "(restored from checkpoint)"  # weights come with the method state
    if path:
        load_weights(model, path)
        return model, path
    sub = _teacher_config(config, kind)
    cached = os.path.join(sub.resolved_out_dir(), "last.pt")
    if not _is_finished(cached, sub):
        # Training the teacher here draws from the global RNG; forked, so that the student's init
        # (built next) is the same whether the teacher was trained now or read from the cache
        # (a rerun, or compare, which hands every method the teachers' files).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _run(sub, progress_prefix=f"[{kind} teacher] ")
    load_weights(model, ckpt.load_checkpoint(cached)["student"])
    return model, cached


def _teacher_config(config, kind):
    method = config.robust_teacher_method if kind == "robust" else "natural"
    return build_config(overrides=dict(
        method=method, dataset=config.dataset, dataset_args=config.dataset_args, data_root=config.data_root,
        val_size=config.val_size, loader=config.loader, crop_padding=config.crop_padding, flip=config.flip,
        student=getattr(config, f"{kind}_teacher_model"),
        student_args=getattr(config, f"{kind}_teacher_args"),
        student_normalize=getattr(config, f"{kind}_teacher_normalize"), epochs=config.teacher_epochs,
        lr=config.teacher_lr, batch_size=config.batch_size, momentum=config.momentum,
        weight_decay=config.weight_decay, eps=config.eps, alpha=config.alpha, attack_steps=config.attack_steps,
        attack_random_start=config.attack_random_start,
        eval_every=config.teacher_epochs, eval_pgd_steps=config.eval_pgd_steps, eval_n=config.eval_n,
        test_attacks=(), out_dir=os.path.join(config.resolved_out_dir(), "teachers", kind), seed=config.seed,
        split_seed=config.split_seed,
        device=config.device, progress=config.progress, log_every=config.log_every, plot=False,
        precision=config.precision, channels_last=config.channels_last, cuda_graphs=config.cuda_graphs,
        compile=config.compile,
    ))


def _is_finished(path, config):
    """A cached teacher is reused only if its run finished with the very same config."""
    if not os.path.isfile(path):
        return False
    try:
        state = ckpt.load_checkpoint(path)
    except ValueError:
        return False
    saved = dict(state["config"])
    wanted = config.to_dict()
    return state["epoch"] >= config.epochs and all(saved.get(k) == v for k, v in wanted.items() if k != "progress")


def _natural_student(config, splits, device):
    """Train the same architecture naturally (the demo's point of comparison) and test it."""
    sub = build_config(overrides={
        **{k: v for k, v in config.to_dict().items() if k not in ("method_args", "resume", "stop_after")},
        # Trained like the clean teacher (cross-entropy at teacher_lr): `lr` is tuned for the
        # distillation losses, whose elementwise-mean KL is C times smaller than a CE.
        "method": "natural", "lr": config.teacher_lr, "compare_natural_student": False, "plot": False,
        "out_dir": os.path.join(config.resolved_out_dir(), "natural_student"),
    })
    cached = os.path.join(sub.resolved_out_dir(), "last.pt")
    if not _is_finished(cached, sub):
        _run(sub.replace(test_attacks=()), progress_prefix="[natural student] ")
    model = build_model(sub.student, splits["train"], sub.student_normalize, device, sub, sub.student_args)
    best = os.path.join(sub.resolved_out_dir(), "best.pt")
    return _test_metrics(sub, model, best if os.path.isfile(best) else cached, splits["test"], device)


# ---- final evaluation --------------------------------------------------------------------------
def _test_metrics(config, model, checkpoint_path, test_set, device):
    """Accuracies (%) on the test split under the config's attacks, for the best checkpoint."""
    from ..attacks.evaluate import evaluate

    if checkpoint_path:
        model.load_state_dict(ckpt.load_checkpoint(checkpoint_path)["student"])
    model.eval()
    report = evaluate(model, test_set, attacks=tuple(config.test_attacks), eps=config.eps, n=config.test_n,
                      device=device, progress=config.progress, seed=config.seed)
    return {name: 100.0 * value for name, value in report.accuracy.items()}  # fractions -> %


def _markdown_table(rows, config):
    columns = []
    for metrics in rows.values():
        columns.extend(k for k in metrics if k not in columns)
    lines = [f"Test accuracy (%) at eps = {config.eps * 255:.3g}/255 on {config.dataset}",
             "",
             "| model | " + " | ".join(columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.2f}" if c in metrics else "—" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_results(out_dir, result):
    write_text_atomic(os.path.join(out_dir, "results.md"), result.table)
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(
        {"config": result.config.to_dict(), "test": result.comparison, "teachers": result.teachers,
         "best_checkpoint": result.best_checkpoint, "last_checkpoint": result.last_checkpoint}, indent=2))
