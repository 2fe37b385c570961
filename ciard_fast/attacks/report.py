"""The result of :func:`ciard_fast.evaluate`: accuracies, hyperparameters, costs, findings."""
import dataclasses
import json

from ..atomic import write_text_atomic
from ..tables import column_label, order_columns, render_table

__all__ = ["EvalReport", "format_eps"]

_UNITS = {"accuracy": "fraction in [0, 1]", "accuracy_pct": "percent"}
_DERIVED = ("accuracy_pct", "units")  # written by to_dict, recomputed from `accuracy`


def format_eps(eps):
    """8/255 -> '8/255 (0.03137)'; radii that are not k/255 are printed as decimals."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) != 0:
        return f"{round(k)}/255 ({eps:.5f})"
    return f"{eps:.6g}"


# hyperparameters measured in pixel units, printed as k/255 when they are
PIXEL_KEYS = ("eps", "alpha")


def _format_value(value, key=None):
    if isinstance(value, float) and key is not None and key not in PIXEL_KEYS:
        return f"{value:.6g}"
    if isinstance(value, float):
        k = value * 255
        if abs(k - round(k)) < 1e-6 and 0 < round(k) < 255:
            return f"{round(k)}/255"
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


@dataclasses.dataclass
class EvalReport:
    """Robust accuracy of one model under the standard attacks.

    Attributes:
        accuracy: column -> accuracy as a fraction in [0, 1] (``report.accuracy["pgd_sat"]``).
            Columns: clean, fgsm, pgd_sat, pgd_trades, cw, aa (those run) and worst.
        correct: column -> number of correctly classified examples.
        n: number of evaluated examples.
        eps: the L∞ radius.
        hyperparameters: column -> the attack's settings.
        forwards: column -> model forward passes counted (in examples: a batch of B counts B),
            including the final forward that scores x_adv; divide by n for per-example cost.
        surrogate_forwards: transfer column -> forwards of the surrogate it crafted on (examples).
        protocol: the evaluation protocol ("standard", "ciard-paper").
        surrogate: the name of the surrogate the transfer columns were crafted on ("" if none).
        seconds: column -> wall-clock seconds spent on that column.
        total_seconds: wall-clock of the whole evaluation.
        skipped: column -> why it was not run (e.g. pyautoattack missing).
        warnings: sanity-check findings (docs/evaluation.md "Rules") that did not raise.
        notes: how the numbers were computed (e.g. how the worst column combines attacks).
        device, seed, strict, model, version, created: provenance.
    """

    accuracy: dict
    correct: dict
    n: int
    eps: float
    hyperparameters: dict
    forwards: dict
    seconds: dict
    total_seconds: float
    skipped: dict = dataclasses.field(default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    device: str = "cpu"
    seed: int = 0
    strict: bool = False
    model: str = ""
    version: str = ""
    created: str = ""
    protocol: str = "standard"
    surrogate: str = ""
    surrogate_forwards: dict = dataclasses.field(default_factory=dict)

    @property
    def columns(self):
        """Column keys in table order (those that were run)."""
        return order_columns(self.accuracy)

    def forwards_per_example(self, column):
        return self.forwards[column] / self.n if self.n else 0.0

    def to_markdown(self):
        """The accuracy table (percent), then one row per attack with its settings and cost."""
        cols = self.columns
        lines = [
            f"Robust accuracy (%), n = {self.n}, L∞ ε = {format_eps(self.eps)}, device {self.device}"
            + (f", model {self.model}" if self.model else "")
            + (f", protocol {self.protocol}" if self.protocol != "standard" else "")
            + (f", surrogate {self.surrogate}" if self.surrogate else ""),
            "",
        ]
        lines += render_table([column_label(c) for c in cols], [[f"{100 * self.accuracy[c]:.2f}" for c in cols]],
                              align=["right"] * len(cols))
        rows = []
        for c in cols:
            params = self.hyperparameters.get(c) or {}
            shown = ", ".join(f"{k}={_format_value(v, k)}" for k, v in params.items()) or "—"
            fwd = f"{self.forwards_per_example(c):.1f}" if c in self.forwards else "—"
            if c in self.surrogate_forwards and self.n:
                fwd += f" (+{self.surrogate_forwards[c] / self.n:.1f} surrogate)"
            sec = f"{self.seconds[c]:.2f}" if c in self.seconds else "—"
            rows.append([column_label(c), f"{100 * self.accuracy[c]:.2f}", f"{self.correct[c]} / {self.n}", shown, fwd,
                         sec])
        lines.append("")
        lines += render_table(["attack", "accuracy (%)", "correct / n", "hyperparameters", "forwards / example",
                               "time (s)"], rows, align=["left", "right", "right", "left", "right", "right"])
        lines.append("")
        lines.append(f"Total time {self.total_seconds:.2f} s.")
        for c, reason in self.skipped.items():
            lines.append(f"Skipped {column_label(c)}: {reason}")
        if self.notes:
            lines.append("")
            lines.extend(f"Note: {note}" for note in self.notes)
        if self.warnings:
            lines.append("")
            lines.append("Warnings:")
            lines.extend(f"- {w}" for w in self.warnings)
        return "\n".join(lines) + "\n"

    def __str__(self):
        return self.to_markdown()

    def to_dict(self):
        """The report as a JSON-ready dict: every attribute (``accuracy`` as fractions in [0, 1],
        the Python attribute), plus ``accuracy_pct`` (the same in percent, as every table and
        ``results.json`` show it) and ``units`` saying which is which."""
        data = dataclasses.asdict(self)
        data["accuracy_pct"] = {k: 100.0 * v for k, v in self.accuracy.items()}
        data["units"] = dict(_UNITS)
        return data

    @classmethod
    def from_dict(cls, data):
        data = {k: v for k, v in data.items() if k not in _DERIVED}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"not an EvalReport: unknown keys {sorted(unknown)}")
        return cls(**data)

    def save_json(self, path):
        """Write the report as JSON atomically (`ciard_fast.atomic`). A path that would replace a
        run's own file (results.json, a checkpoint ...) is refused (`ciard_fast.outputs`)."""
        from ..outputs import check_output_file

        check_output_file(path, option="the JSON report path")
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load_json(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
