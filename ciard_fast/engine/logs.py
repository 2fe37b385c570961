"""Run logs: per-epoch rows as CSV and JSONL and a progress line (the curves: ciard_fast/plots.py).

Rows are rewritten whole (atomically) from the run's history at each epoch, so a resumed run's
files hold exactly the epochs of its checkpoint followed by the new ones.
"""
import csv
import io
import json
import os
import sys
import time

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
    """One status line per epoch, refreshed every `log_every` steps (each refresh reads a few
    device scalars: that host sync happens between steps, never inside one)."""

    def __init__(self, enabled=True, stream=None, prefix=""):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.interactive = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_line_len = 0

    def update(self, epoch, epochs, step, steps, values, images_per_s):
        if not self.enabled:
            return
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        line = f"{self.prefix}epoch {epoch}/{epochs} step {step}/{steps} {shown} {images_per_s:.0f} img/s"
        if self.interactive:
            pad = max(0, self._last_line_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._last_line_len = len(line)
        elif step == steps:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end_epoch(self, summary):
        if not self.enabled:
            return
        if self.interactive:
            self.stream.write("\n")
            self._last_line_len = 0
        self.stream.write(f"{self.prefix}{summary}\n")
        self.stream.flush()


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start
