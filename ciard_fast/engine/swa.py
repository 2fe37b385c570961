"""Stochastic weight averaging (SWA) of the student: one engine callback, switched on by the
config field `swa_start` (None: off, the default).

    swa_start: 95        # the student's weights averaged from the end of epoch 95 on
    swa_start: 0.7167    # a fraction of `epochs`: epoch round(0.7167·epochs) (215 of 300)

What it does, in the engine's hooks (`engine/callbacks.py`), through `torch.optim.swa_utils`:

* `on_fit_start`: an `AveragedModel` of the (unwrapped, under DDP) student: an equal-weight
  running mean of its parameters, buffers not averaged (`use_buffers=False`).
* `on_epoch_end(e)` for every e >= the start epoch: ``update_parameters(student)`` — the first
  call copies the student, call n+1 gives ``avg + (w − avg)/(n + 1)``, so after epochs s..e the
  average is the plain mean of the end-of-epoch weights of s..e — then ``update_bn``: the
  BatchNorm running statistics of the average recomputed by one pass over the training data.
* `eval_model` / `eval_weights`: from the first average on, validation, `best.pt` selection
  (which restarts among the averaged validations, see `engine/trainer.py`), the final table,
  the model card, export and `ciard-fast eval` all use the averaged weights, named as such
  ("SWA of the student: mean of the weights at the ends of epochs 95–200 ...").
* `state_dict`: the `AveragedModel` (its weights, BN statistics and `n_averaged`) and the epochs
  it spans, in every checkpoint (mid-epoch ones included), so a resume continues the same mean.

Why per epoch: both public codes that use SWA for adversarial distillation average once per epoch,
at its end, with no SWALR (the learning rate keeps its step schedule): SAAD
(`HongsinLee/saad`, `saad.py`: `AveragedModel`, `update_parameters` and `update_bn` after every
epoch from 95 of 200) and PeerAiD (`jaewonalive/PeerAiD`, `utils/SWA.py`: the same running mean
from the first learning-rate milestone, epoch 215 of 300 counted from 1, with its BN pass after
every average). Both recompute BN after every average, as here, so the averaged model's
statistics always belong to its weights; its last recomputation follows the last average.

The BN pass reads the training loader's batches of the epoch just trained (the same order, crops
and flips, a pure function of (seed, epoch): it draws no random number), under the run's
precision, and the global RNG state is put back afterwards: the training stream is the same with
and without SWA, and a resume (at an epoch's end or inside one) is bit-exact. Under
torch.distributed each rank passes over its own shard and the running means and variances are
then averaged over ranks, so every rank holds the same averaged model. With `drop_last` (the
training loader's setting) `update_bn`'s per-batch average equals PeerAiD's per-sample one.
"""
import numbers
from typing import Any, Dict, Optional

from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from ..schedules import scaled_epoch
from . import checkpoint as ckpt
from .callbacks import Callback, register_callback
from .distributed import unwrap

__all__ = ["SWA", "swa_start_epoch", "check_swa_start"]


def check_swa_start(swa_start, epochs: int) -> None:
    """ValueError/TypeError unless `swa_start` is None, an integer epoch in [1, epochs] or a
    fraction in (0, 1) of `epochs`."""
    if swa_start is None:
        return
    if isinstance(swa_start, bool) or not isinstance(swa_start, numbers.Real):
        raise TypeError(f"swa_start must be an epoch (an integer >= 1), a fraction of epochs in (0, 1) or None; "
                        f"got {swa_start!r} ({type(swa_start).__name__})")
    if isinstance(swa_start, numbers.Integral):
        if not 1 <= swa_start <= epochs:
            raise ValueError(f"swa_start={swa_start} is not an epoch of this run (1..epochs={epochs}): give an epoch "
                             f"in 1..{epochs}, a fraction of epochs in (0, 1) (e.g. 0.75), or None for no SWA")
        return
    if not 0.0 < float(swa_start) < 1.0:
        raise ValueError(f"swa_start={swa_start!r}: a float is a fraction of epochs and must be in (0, 1); give an "
                         "epoch as an integer (e.g. 95), or None for no SWA")


def swa_start_epoch(swa_start, epochs: int) -> Optional[int]:
    """The first averaged epoch (counted from 1) of a run of `epochs` epochs: `swa_start` itself
    when it is an epoch, round(swa_start·epochs) (at least 1) when it is a fraction — scaled as
    the schedules scale a milestone — or None (SWA off)."""
    check_swa_start(swa_start, epochs)
    if swa_start is None:
        return None
    if isinstance(swa_start, numbers.Integral):
        return int(swa_start)
    return scaled_epoch(float(swa_start), epochs, 1)


class SWA(Callback):
    """The SWA callback (module docstring). `start`: the first epoch whose end-of-epoch weights
    enter the average (counted from 1)."""

    def __init__(self, start: int) -> None:
        self.start = int(start)
        self.averaged: Optional[AveragedModel] = None
        self.first: Optional[int] = None  # the epochs the average spans
        self.last: Optional[int] = None
        self.count = 0                    # snapshots averaged (= averaged.n_averaged, kept on the host)
        self._pending: Optional[Dict[str, Any]] = None  # a checkpoint's state, loaded before on_fit_start

    # ---- the hooks -----------------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        self.averaged = AveragedModel(unwrap(trainer.student), use_buffers=False)
        self.averaged.eval()
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    def on_epoch_end(self, trainer, epoch: int) -> None:
        if epoch < self.start:
            return
        self.averaged.update_parameters(unwrap(trainer.student))
        self.count += 1
        self.first = epoch if self.first is None else self.first
        self.last = epoch
        self.recompute_batchnorm(trainer, epoch)

    def recompute_batchnorm(self, trainer, epoch: int) -> None:
        """`update_bn` over the training loader's batches of `epoch`, without touching the global
        RNG or the loader's next epoch; averaged over ranks under torch.distributed."""
        loader = trainer.train_loader
        rng = ckpt.rng_state()
        following = getattr(loader, "epoch", None)
        try:
            loader.set_epoch(epoch)
            with trainer.precision_ctx():
                update_bn(loader, self.averaged)
        finally:
            ckpt.set_rng_state(rng)
            if following is not None:
                loader.set_epoch(following)
            self.averaged.eval()
        if trainer.dist.enabled:
            for module in self.averaged.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                    module.running_mean.copy_(trainer.dist.all_reduce_mean(module.running_mean))
                    module.running_var.copy_(trainer.dist.all_reduce_mean(module.running_var))

    # ---- what is evaluated -----------------------------------------------------------------------
    def describe(self) -> str:
        """What the averaged weights are, for tables, results.json and the model card."""
        return (f"SWA of the student: mean of the weights at the ends of epochs {self.first}–{self.last} "
                f"({self.count} snapshot{'s' if self.count != 1 else ''}), BatchNorm statistics recomputed on "
                "the training split")

    def eval_model(self, trainer) -> Optional[nn.Module]:
        return self.averaged.module if self.count else None

    def eval_weights(self, trainer):
        return (self.describe(), self.averaged.module.state_dict()) if self.count else None

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        # The averaged weights share their storage with the checkpoint's eval_weights: saved once.
        averaged = self.averaged.state_dict() if self.averaged is not None and self.count else None
        return {"start": self.start, "first": self.first, "last": self.last, "count": self.count,
                "averaged": averaged}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if state is None:  # a checkpoint of a run without SWA: the average starts from here
            state = {"first": None, "last": None, "count": 0, "averaged": None}
        if self.averaged is None:  # a resume: the averaged model is built at on_fit_start
            self._pending = state
        else:
            self._restore(state)

    def _restore(self, state: Dict[str, Any]) -> None:
        self.first, self.last, self.count = state["first"], state["last"], int(state["count"])
        if state["averaged"] is not None:
            self.averaged.load_state_dict(state["averaged"])
        else:
            self.averaged.n_averaged.zero_()


@register_callback("swa")
def _swa(config):
    start = swa_start_epoch(config.swa_start, config.epochs)
    return None if start is None else SWA(start)
