"""Run logs: per-epoch rows as CSV and JSONL and a progress line (the curves: ciard_fast/plots.py).

Rows are rewritten whole (atomically) from the run's history at each epoch, so a resumed run's
files hold exactly the epochs of its checkpoint followed by the new ones.
"""
import csv
import io
import json
import os
import sys

from ..atomic import write_text_atomic


def write_history(out_dir, history):
    """history: list of flat dicts (one per epoch) -> metrics.csv and metrics.jsonl."""
    columns = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(os.path.join(out_dir, "metrics.csv"), buffer.getvalue())
    write_text_atomic(os.path.join(out_dir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))


class Progress:
    """Training progress on stderr. On a terminal: a tqdm bar per epoch over its steps (rate, ETA,
    the running means as postfix); on a file or pipe: one line per epoch at its last step (a bar's
    carriage returns would make an unreadable log), then the epoch's summary line either way.

    `update` is called every `log_every` steps: each call reads a few device scalars, a host sync
    that happens between steps, never inside one."""

    def __init__(self, enabled=True, stream=None, prefix=""):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.interactive = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None
        self._epoch = None

    def update(self, epoch, epochs, step, steps, values, images_per_s):
        if not self.enabled:
            return
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self.interactive:
            from tqdm.auto import tqdm

            if self._bar is None or self._epoch != epoch:
                self._close_bar()
                self._bar = tqdm(total=steps, desc=f"{self.prefix}epoch {epoch}/{epochs}", unit="step",
                                 file=self.stream, leave=False, dynamic_ncols=True)
                self._epoch = epoch
            self._bar.set_postfix_str(f"{shown} {images_per_s:.0f} img/s", refresh=False)
            self._bar.update(step - self._bar.n)
            if step == steps:
                self._bar.refresh()  # the epoch's final count and rate, whatever tqdm's redraw interval
        elif step == steps:
            self.stream.write(f"{self.prefix}epoch {epoch}/{epochs} step {step}/{steps} {shown} "
                              f"{images_per_s:.0f} img/s\n")
            self.stream.flush()

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def end_epoch(self, summary):
        if not self.enabled:
            return
        self._close_bar()
        self.stream.write(f"{self.prefix}{summary}\n")
        self.stream.flush()


def _summary_writer_class():
    """torch's SummaryWriter, or an ImportError that says how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            f"tensorboard=true needs the 'tensorboard' package, which is not installed ({err}); "
            "install it with pip install 'ciard-fast[tensorboard]' or run with --tensorboard false"
        ) from err
    return SummaryWriter


class TensorBoardLog:
    """Every scalar of each epoch's row (losses, lr, method values, validation accuracy, seconds) as a
    TensorBoard scalar at step = epoch, under `log_dir` (the run's `tensorboard/`).

    The package is checked when this is built, so a missing `tensorboard` stops the run before any
    training; the writer itself opens at the first row with purge_step = that epoch, so a resumed
    run replaces the events of the epochs it redoes instead of doubling them."""

    def __init__(self, log_dir):
        self._writer_class = _summary_writer_class()
        self.log_dir = log_dir
        self._writer = None

    def write(self, row):
        epoch = int(row["epoch"])
        if self._writer is None:
            self._writer = self._writer_class(log_dir=self.log_dir, purge_step=epoch)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, epoch)
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
