"""The training loop. Runs any registered method; knows nothing of what the method computes.

The method declares its networks and optimisers (`methods/base.py`); the trainer holds all the
optimisers (`RunOptimizers`), names no role but the student's, and calls the method's hooks and
the run's engine callbacks (`engine/callbacks.py`).

Per epoch: every optimiser's learning rate from its schedule, `method.start_epoch(epoch)`; per
step: every optimiser zeroed, `out = method.training_step(x, y)` under the run's autocast,
backward of `out["loss"]`, every optimiser's step (the student's first),
`method.after_optimizer_step()`, the callbacks' `after_optimizer_step`; after the last step
`method.end_epoch(epoch)` and the callbacks' `on_epoch_end`. Logged values are summed on the
device and read on the host only every `log_every` steps and at the end of an epoch, so a step
itself never waits on the host. After each epoch: validation (clean + PGD-20 on the held-out
split, of the callbacks' evaluated model if one gives it) every `eval_every` epochs, `best.pt`
by (clean + PGD)/2, then `last.pt`, metrics CSV/JSONL.

`best.pt` compares like with like: the best of the validations of the same evaluated weights.
When a callback starts to give the weights to evaluate (SWA from its start epoch), the first
validation of those becomes `best.pt` whatever the student's earlier scores, so a run with
weight averaging reports an averaged model, never a plain student of an earlier epoch.

Reliability (the on-disk invariant, divergence, signals):
  * `best.pt` is written before `last.pt`, and each records its epoch, so at every instant the
    `best_epoch` that `last.pt` names is either the epoch of `best.pt` or (after a kill between
    the two writes) `best.pt` is one epoch ahead and is written again identically on resume.
  * a non-finite loss is flagged on the device each step and read at the existing host reads
    (`divergence.py`); NaN weights are never saved.
  * SIGTERM/SIGINT (`signals.py`) and `checkpoint_every_steps` write a mid-epoch `last.pt`
    (the epoch's running sums, steps and RNG included) from which a resume is bit-exact.
"""
import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from . import checkpoint as ckpt
from .callbacks import Callback
from .distributed import DistContext, unwrap
from .divergence import FiniteMonitor, check_finite_weights
from .signals import RunInterrupted, stop_requested
from ..attacks.graphs import GraphCache, cuda_graphs
from .logs import Progress, TensorBoardLog, write_history
from .optim import RunOptimizers
from .validation import correct_clean_and_pgd


def step_forward(method, optimizers, x: torch.Tensor, y: torch.Tensor, precision_ctx: Callable,
                 graphs: Optional[GraphCache]) -> Dict[str, torch.Tensor]:
    """First half of a training step: every optimiser zeroed, the method's forwards and losses
    (under autocast, with the PGD loop CUDA-graphed through `graphs`, the run's GraphCache, or
    eager when None). `optimizers`: the run's `RunOptimizers` (or one torch optimiser, for a
    method that trains only the student). Split from `step_update` so benchmarks time each half."""
    optimizers.zero_grad(set_to_none=True)
    with precision_ctx(), cuda_graphs(graphs):
        return method.training_step(x, y)


def step_update(method, optimizers, out: Dict[str, torch.Tensor], sums: Dict[str, torch.Tensor]) -> None:
    """Second half: backward, every optimiser's step (the student's first), the method's own
    update, and the on-device running sums of the logged values (read on the host only between
    steps)."""
    out["loss"].backward()
    optimizers.step()
    method.after_optimizer_step()
    for key, value in out.items():
        if key != "loss":
            value = value.detach().float()
            sums[key] = sums[key] + value if key in sums else value.clone()


def check_step_output(method, out) -> None:
    """The `training_step` return contract (`Method.training_step`), checked on the first step of
    every epoch: a dict with a 0-d "loss" and detached 0-d logged values. Shapes and flags only: no host
    sync. A TypeError/ValueError naming the method and the key otherwise."""
    if not isinstance(out, dict) or "loss" not in out:
        raise TypeError(f"method {method.name!r}: training_step must return a dict with a 'loss' entry, got "
                        f"{type(out).__name__}{'' if not isinstance(out, dict) else ' with keys ' + str(sorted(out))}")
    for key, value in out.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"method {method.name!r}: training_step returned {key!r} as {shape}; every entry must "
                             "be a 0-d tensor (reduce it, e.g. .mean())")
        if key != "loss" and value.requires_grad:
            raise ValueError(f"method {method.name!r}: the logged value {key!r} carries a gradient; log it detached")


@dataclasses.dataclass
class RunState:
    """What changes as a run advances (and is checkpointed besides the modules)."""

    epoch: int = 0          # last completed epoch
    step: int = 0           # optimiser steps taken
    best_score: float = float("-inf")
    best_epoch: int = 0
    best_of: Optional[str] = None  # whose weights best.pt evaluates: "student" or an engine callback's name
    history: list = dataclasses.field(default_factory=list)
    mid_epoch: Optional[dict] = None  # resuming inside an epoch: its steps done, running sums, images, seconds


class Trainer:
    """One run's loop over epochs: training steps, validation, checkpoints, logs (module docstring)."""

    def __init__(self, config, method, student: nn.Module, train_loader, val_loader, out_dir: str,
                 precision_ctx: Callable, dist: Optional[DistContext] = None, progress_prefix: str = "",
                 callbacks: Sequence[Callback] = ()) -> None:
        self.config = config
        self.method = method
        self.student = student
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.out_dir = out_dir
        self.precision_ctx = precision_ctx
        self.dist = dist if dist is not None else DistContext()
        self.optimizers = RunOptimizers(method, config.momentum, config.weight_decay, method.device, config.optimizer,
                                        student_params=unwrap(student).parameters())
        ckpt.check_entry_names(method, self.optimizers.names())
        self.callbacks: List[Callback] = list(callbacks)
        use_graphs = bool(config.cuda_graphs if config.cuda_graphs is not None else method.device.type == "cuda")
        # The run owns its graphs: never shared with another run's student, released by fit().
        self.graphs = GraphCache() if use_graphs else None
        self.state = RunState()
        self.monitor = FiniteMonitor()
        self.progress = Progress(config.progress and self.is_main, prefix=progress_prefix)
        self.tensorboard = (TensorBoardLog(os.path.join(out_dir, "tensorboard"))
                            if config.tensorboard and self.is_main else None)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The student's optimiser."""
        return self.optimizers[RunOptimizers.STUDENT]

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def last_path(self):
        return os.path.join(self.out_dir, "last.pt")

    @property
    def best_path(self):
        return os.path.join(self.out_dir, "best.pt")

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint_state(self) -> Dict[str, Any]:
        """Everything a resume needs (layout: `engine/checkpoint.py`)."""
        student = unwrap(self.student)
        optimizers = self.optimizers.state_dict()
        state = {
            "config": self.config.to_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "student": student.state_dict(),
            "optimizer": optimizers[RunOptimizers.STUDENT],
            "method": ckpt.method_entry(self.method, optimizers),
            "rng": ckpt.rng_state(),
            "history": list(self.state.history),
            "best_score": self.state.best_score,
            "best_epoch": self.state.best_epoch,
            "best_of": self.state.best_of,
        }
        if self.callbacks:
            state["callbacks"] = {cb.name: cb.state_dict() for cb in self.callbacks}
        evaluated = self._eval_weights()
        if evaluated is not None:
            state["eval_weights"] = {"source": evaluated[0], "weights": evaluated[1]}
        return state

    def load_checkpoint_state(self, state: Dict[str, Any], path: str = "the checkpoint") -> None:
        """Continue exactly where `state` (from load_checkpoint) stopped, at an epoch's end or inside one."""
        unwrap(self.student).load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_method_entry(self.method, self.optimizers, state["method"], path)
        saved = state.get("callbacks") or {}
        for callback in self.callbacks:
            callback.load_state_dict(saved.get(callback.name))
        ckpt.set_rng_state(state["rng"])
        mid = state.get("mid_epoch")
        if mid is not None:  # the method's and callbacks' state and the RNG are put back again after start_epoch
            mid = dict(mid, method=state["method"], rng=state["rng"], callbacks=saved)
        self.state = RunState(epoch=int(state["epoch"]), step=int(state["step"]),
                              best_score=float(state["best_score"]), best_epoch=int(state["best_epoch"]),
                              # checkpoints from before callbacks could evaluate: the student's
                              best_of=state.get("best_of", "student" if int(state["best_epoch"]) else None),
                              history=list(state["history"]), mid_epoch=mid)

    def last_good(self) -> str:
        """Where the newest checkpoint on disk stands, for messages."""
        if self.state.epoch == 0 and self.state.mid_epoch is None and not os.path.isfile(self.last_path):
            return "no checkpoint was written yet"
        return f"{self.last_path} (after epoch {self.state.epoch}) is untouched"

    # ---- what is evaluated ---------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The module validation measures: the last callback's `eval_model`, else the student."""
        return self._evaluated()[1]

    def _evaluated(self):
        """(whose: "student" or the callback's name, the module) of what validation measures."""
        for callback in reversed(self.callbacks):
            model = callback.eval_model(self)
            if model is not None:
                return callback.name, model
        return "student", unwrap(self.student)

    def _eval_weights(self):
        for callback in reversed(self.callbacks):
            evaluated = callback.eval_weights(self)
            if evaluated is not None:
                return evaluated
        return None

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> RunState:
        """Train from the current state to `config.epochs` (or `stop_after`); returns the RunState."""
        try:
            return self._fit()
        finally:
            if self.graphs is not None:
                self.graphs.release()  # graphs pin the student's tensors and a memory pool
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _fit(self):
        config = self.config
        last_epoch = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
        self._call("on_fit_start")
        for epoch in range(self.state.epoch + 1, last_epoch + 1):
            row = self.train_one_epoch(epoch)
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                self._call("before_validation", epoch)
                row.update(self.validate(epoch))
            self.state.epoch = epoch
            self.state.history.append(row)
            self.save(row)
            if stop_requested():  # the signal came during validation or the save: the epoch is on disk
                raise RunInterrupted(stop_requested(), self.last_path, epoch, self.state.step)
        if self.state.epoch >= config.epochs:
            self._call("on_fit_end")
        return self.state

    def train_one_epoch(self, epoch: int) -> Dict[str, Any]:
        """Every step of `epoch` (from a mid-epoch checkpoint's step when resuming inside it);
        returns the epoch's history row (means of the logged values, the method's log values)."""
        config, method, loader = self.config, self.method, self.train_loader
        loader.set_epoch(epoch)
        lr = self.optimizers.set_epoch(epoch)
        method.start_epoch(epoch)
        self.student.train()
        sums, steps, images, done_seconds = {}, 0, 0, 0.0
        mid, self.state.mid_epoch = self.state.mid_epoch, None
        if mid is not None and int(mid["epoch"]) == epoch:  # resume inside this epoch, exactly
            method.load_state_dict(mid["method"])  # undo what start_epoch reset (e.g. Fair-ARD's counts)
            for callback in self.callbacks:
                callback.load_state_dict(mid["callbacks"].get(callback.name))
            ckpt.set_rng_state(mid["rng"])
            sums = {k: v.clone() for k, v in mid["sums"].items()}
            steps, images, done_seconds = int(mid["steps"]), int(mid["images"]), float(mid["seconds"])
        skip = steps
        num_steps = len(loader)
        every = config.checkpoint_every_steps
        self.monitor.reset()
        start = time.perf_counter() - done_seconds
        first_batch_check = getattr(self.precision_ctx, "check_first_batch", None)  # engine.precision.RunPrecision
        for index, (x, y) in enumerate(loader):
            if index < skip:  # the epoch's order is a function of (seed, epoch): skip what was done
                continue
            if first_batch_check is not None:  # bf16 -> fp32 if bf16 gives non-finite logits (once per run)
                first_batch_check(list(method.all_networks().values()), x)
                first_batch_check = None
            out = step_forward(method, self.optimizers, x, y, self.precision_ctx, self.graphs)
            if steps == skip:
                check_step_output(method, out)
            step_update(method, self.optimizers, out, sums)
            self._call("after_optimizer_step")
            self.monitor.update(out)  # on the device: read below, at the existing host reads
            steps += 1
            images += y.shape[0]
            self.state.step += 1
            if steps % config.log_every == 0 or steps == num_steps:
                self.monitor.check(epoch, self.state.step, lr, sums, steps, self.last_good())
                self._show(epoch, steps, num_steps, sums, images, start)
            signum = stop_requested()
            if steps < num_steps and (signum or (every and self.state.step % every == 0)):
                self.save_mid_epoch(epoch, lr, steps, sums, images, time.perf_counter() - start)
                if signum:
                    raise RunInterrupted(signum, self.last_path, epoch, self.state.step)
        if steps == 0:
            raise ValueError(
                f"epoch {epoch} had no batches: the training split is smaller than batch_size={config.batch_size} "
                "with drop_last; lower batch_size"
            )
        method.end_epoch(epoch)
        self._call("on_epoch_end", epoch)
        seconds = time.perf_counter() - start
        self.monitor.check(epoch, self.state.step, lr, sums, steps, self.last_good())
        check_finite_weights(self._trained_modules(), epoch, self.state.step, lr, self.last_good())
        means = self._reduced_means(sums, steps)
        row = {"epoch": epoch, "lr": lr}
        row.update({f"train_{k}": v for k, v in means.items()})
        row.update({k: float(v.item()) for k, v in method.log_values().items()})
        row["train_seconds"] = seconds
        row["train_images_per_s"] = images * self.dist.world_size / max(seconds, 1e-9)
        return row

    def _trained_modules(self) -> List[nn.Module]:
        networks = self.method.all_networks()
        return [unwrap(networks[role]) for role in self.method.trainable_roles()]

    def save_mid_epoch(self, epoch: int, lr: float, steps: int, sums: Dict[str, torch.Tensor], images: int,
                       seconds: float) -> None:
        """A resumable `last.pt` inside `epoch` after `steps` of its steps (signals, checkpoint_every_steps).

        Its `epoch` stays the last completed one (best.pt and the history are unchanged); the
        `mid_epoch` entry holds what the rest of the epoch needs to continue bit-exactly."""
        self.monitor.check(epoch, self.state.step, lr, sums, steps, self.last_good())
        check_finite_weights(self._trained_modules(), epoch, self.state.step, lr, self.last_good())
        if self.is_main:
            state = self.checkpoint_state()
            state["mid_epoch"] = {"epoch": epoch, "steps": steps, "images": images, "seconds": seconds,
                                  "sums": {k: v.detach().clone() for k, v in sums.items()}}
            ckpt.save_checkpoint(self.last_path, state)
        self.dist.barrier()

    def _reduced_means(self, sums, steps):
        keys = sorted(sums)
        if not keys:
            return {}
        stacked = self.dist.all_reduce_mean(torch.stack([sums[k] for k in keys]) / steps)
        return dict(zip(keys, stacked.tolist()))

    def _show(self, epoch, step, num_steps, sums, images, start):
        if not self.progress.enabled:
            return
        hidden = set(self.method.progress_hidden)
        shown = {k: (v / step).item() for k, v in sums.items() if k not in hidden}
        shown.update({k: v.item() for k, v in self.method.log_values().items()})
        rate = images / max(time.perf_counter() - start, 1e-9)
        self.progress.update(epoch, self.config.epochs, step, num_steps, shown, rate)

    def validate(self, epoch: int) -> Dict[str, float]:
        """Clean and PGD accuracy (%) of `eval_model()` on the validation split ({} without one)."""
        config = self.config
        if self.val_loader is None:
            return {}
        counts = correct_clean_and_pgd(
            self.eval_model(), self.val_loader, eps=config.eps, alpha=2 / 255, steps=config.eval_pgd_steps,
            precision_ctx=self.precision_ctx, seed=config.seed * 1000003 + epoch * 1009 + self.dist.rank,
        )
        clean, robust, total = self.dist.all_reduce_sum(counts).tolist()  # shards -> the whole split
        if total == 0:
            raise ValueError("the validation split is empty; use val_size > 0 and eval_n > 0")
        return {"val_clean": 100.0 * clean / total, "val_pgd": 100.0 * robust / total}

    def save(self, row: Dict[str, Any]) -> None:
        """last.pt every epoch, best.pt when (clean + PGD)/2 improves; logs. Rank 0 only."""
        if "val_clean" in row:
            score = (row["val_clean"] + row["val_pgd"]) / 2
            whose = self._evaluated()[0]
            if score > self.state.best_score or whose != self.state.best_of:  # like with like (module docstring)
                self.state.best_score, self.state.best_epoch, self.state.best_of = score, row["epoch"], whose
        summary = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        self.progress.end_epoch(f"epoch {row['epoch']}: {summary}")
        if self.is_main:
            state = self.checkpoint_state()
            # best.pt first: a kill between the two writes leaves a last.pt that still names the
            # best.pt on disk (or best.pt one epoch ahead, rewritten identically on resume).
            if self.state.best_epoch == row["epoch"]:
                ckpt.save_checkpoint(self.best_path, state)
            ckpt.save_checkpoint(self.last_path, state)
            write_history(self.out_dir, self.state.history)
            if self.tensorboard is not None:
                self.tensorboard.write(row)
        self.dist.barrier()  # no rank reads a checkpoint before rank 0 has finished writing it
