"""Run logs: per-epoch rows as CSV and JSONL and a progress line (the curves: ciard_fast/plots.py),
and the optional scalar logs that get the same rows: TensorBoard (`TensorBoardLog`) and Weights &
Biases (`WandbLog`).

Rows are rewritten whole (atomically) from the run's history at each epoch, so a resumed run's
files hold exactly the epochs of its checkpoint followed by the new ones.
"""
import csv
import io
import json
import os
import secrets
import string
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


def logged_scalars(row):
    """The entries of an epoch's row that the scalar logs record: its numbers (not booleans)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


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
        for key, value in logged_scalars(row).items():
            if key != "epoch":
                self._writer.add_scalar(key, value, epoch)
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


WANDB_RUN_FILE = "wandb_run.json"  # the run folder's W&B run id: a resumed run continues the same W&B run


def _wandb_module():
    """The `wandb` package, or an ImportError that says how to get it."""
    try:
        import wandb
    except ImportError as err:
        raise ImportError(
            f"wandb=true needs the 'wandb' package, which is not installed ({err}); install it with "
            "pip install 'ciard-fast[wandb]' or run with --wandb false"
        ) from err
    return wandb


class WandbLog:
    """The run on Weights & Biases: every scalar of each epoch's row (what metrics.jsonl holds,
    `epoch` included) at step = epoch, the config, and at the end the test table (`write_results`).

    Project `config.wandb_project`, group `config.wandb_group`, name "<method>/seed-<seed>"; the
    files go to `<out_dir>/wandb/` (with `WANDB_MODE=offline`, only there). The W&B run id is kept
    in `<out_dir>/wandb_run.json`, so a resumed run (`--resume`, a requeued cluster job) continues
    the same W&B run; an overwritten folder loses the file with the other run files and starts a
    new one. The package is checked when this is built (before any training); the W&B run opens at
    the first row."""

    def __init__(self, config, out_dir):
        self._wandb = _wandb_module()
        self.config = config
        self.out_dir = out_dir
        self._run = None

    def _open(self):
        if self._run is None:
            path = os.path.join(self.out_dir, WANDB_RUN_FILE)
            run_id = None
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    run_id = json.load(f).get("id")
            if not run_id:
                alphabet = string.ascii_lowercase + string.digits
                run_id = "".join(secrets.choice(alphabet) for _ in range(12))
                write_text_atomic(path, json.dumps({"id": run_id, "project": self.config.wandb_project,
                                                    "group": self.config.wandb_group}, indent=2))
            config = self.config
            self._run = self._wandb.init(
                project=config.wandb_project, group=config.wandb_group, name=f"{config.method}/seed-{config.seed}",
                id=run_id, resume="allow", dir=self.out_dir, config=config.to_dict(),
                tags=[config.method, config.dataset, config.student],
                settings=self._wandb.Settings(console="off"))  # the run's own log already holds its output
        return self._run

    def write(self, row):
        self._open().log(logged_scalars(row), step=int(row["epoch"]))

    def write_results(self, rows, table, evaluated=""):
        """The final test table: `rows` = {row name: {attack: accuracy %}} as a W&B table, the
        first row's accuracies as summary values test/<attack>, the Markdown as test_table_md."""
        from ..tables import order_columns

        run = self._open()
        columns = order_columns(k for metrics in rows.values() for k in metrics)
        run.summary["test_table"] = self._wandb.Table(
            columns=["model"] + columns, data=[[name] + [metrics.get(c) for c in columns]
                                              for name, metrics in rows.items()])
        first = next(iter(rows.values()), {})
        run.summary.update({f"test/{c}": v for c, v in first.items()})
        run.summary.update({"test_table_md": table, "evaluated": evaluated})

    def close(self, failed=False):
        if self._run is not None:
            self._run.finish(exit_code=1 if failed else 0)
            self._run = None


def log_comparison_to_wandb(result, csv_text, base_config):
    """A comparison's table (`result`: a CompareResult, `csv_text`: its compare.csv) as a W&B run
    of its own in the group (job_type "compare", name "comparison"): compare.csv as a W&B table,
    the mean of each column as summary values <method>/<column>, and the Markdown as table_md."""
    wandb = _wandb_module()
    run = wandb.init(project=base_config.wandb_project, group=base_config.wandb_group, name="comparison",
                     job_type="compare", dir=result.out_dir,
                     config={**result.config, "methods": result.methods, "seeds": result.seeds,
                             "baseline": result.baseline},
                     settings=wandb.Settings(console="off"))
    try:
        lines = list(csv.reader(io.StringIO(csv_text)))
        run.summary["comparison"] = wandb.Table(columns=lines[0], data=lines[1:])
        run.summary.update({f"{name}/{column}": s["mean"] for name, summary in result.summary.items()
                            for column, s in summary.items()})
        run.summary["table_md"] = result.table
    finally:
        run.finish()
