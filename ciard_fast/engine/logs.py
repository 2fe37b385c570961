"""Run logs: per-epoch rows as CSV and JSONL, a progress line, and a PNG of the curves.

Rows are rewritten whole (atomically) from the run's history at each epoch, so a resumed run's
files hold exactly the epochs of its checkpoint followed by the new ones.
"""
import csv
import io
import json
import os
import sys

from ..atomic import atomic_write, write_text_atomic


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


def plot_history(out_dir, history, filename="curves.png"):
    """Loss and accuracy curves over epochs; silently skipped when matplotlib is not installed.
    Returns the path written or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not history:
        return None
    epochs = [row["epoch"] for row in history]
    loss_keys = [k for k in history[-1] if k.startswith("train_") and k != "train_images_per_s"]
    acc_keys = [k for k in history[-1] if k.startswith("val_")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in loss_keys:
        axes[0].plot(epochs, [row.get(key, float("nan")) for row in history], label=key[len("train_"):])
    axes[0].set_xlabel("epoch")
    axes[0].set_title("training losses")
    axes[0].legend(fontsize=7)
    for key in acc_keys:
        points = [(row["epoch"], row[key]) for row in history if key in row]
        axes[1].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key[len("val_"):])
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation accuracy (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, filename)
    with atomic_write(path) as f:  # like every run file: whole or absent, never a truncated PNG
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
