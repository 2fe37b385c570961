"""The pictures: a run's training curves and a comparison's trade-off and per-attack figures.

    plot_curves(history, "runs/demo/curves.png")            # one panel per kind of logged value
    plot_comparison(result, "runs/compare-demo/comparison.png")
    plot_per_attack(result, "runs/compare-demo/per_attack.png")

Figures are drawn on matplotlib's Agg canvas without pyplot (no global figure state, no display
needed) and written through `ciard_fast.atomic`, so a crash never leaves a half-written PNG.
Each function returns the path it wrote.
"""
import io
import math

from .atomic import write_bytes_atomic

__all__ = ["plot_curves", "plot_comparison", "plot_per_attack", "curve_panels"]

# column key -> axis label, in the order of the evaluation table
_LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd_sat": "PGD-SAT", "pgd_trades": "PGD-TRADES", "cw": "CW∞",
           "aa": "AA", "worst": "Worst"}
# logged per epoch but not curves: wall-clock, throughput, and counts (e.g. CIARD's push mask size)
_NOT_PLOTTED = ("epoch", "train_seconds", "train_images_per_s")


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi=100):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _is_count(key):
    return "count" in key


def curve_panels(history):
    """The panels of curves.png for `history` (one dict per epoch, as metrics.jsonl): a list of
    (title, [keys]) with only keys some epoch logged. Losses (train_*), the learning rate,
    validation accuracy (val_*), temperatures (tau*), loss weights (w_*), the push weight (lambda),
    then any other value a method logs; never seconds, throughput or counts."""
    keys = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    keys = [k for k in keys if k not in _NOT_PLOTTED and not _is_count(k)
            and any(isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) for row in history)]
    groups = [
        ("training losses", [k for k in keys if k.startswith("train_")]),
        ("learning rate", [k for k in keys if k == "lr"]),
        ("validation accuracy (%)", [k for k in keys if k.startswith("val_")]),
        ("temperature τ", [k for k in keys if k.startswith("tau")]),
        ("loss weights w", [k for k in keys if k.startswith("w_")]),
        ("push weight λ", [k for k in keys if k == "lambda"]),
    ]
    used = {k for _, group in groups for k in group}
    groups.append(("other logged values", [k for k in keys if k not in used]))
    return [(title, group) for title, group in groups if group]


def plot_curves(history, path):
    """curves.png: each kind of logged value on its own panel, over epochs (see curve_panels).

    Args:
        history: list of per-epoch dicts with an "epoch" key (the run's metrics rows).
        path: the PNG to write.
    """
    if not history:
        raise ValueError("plot_curves needs at least one epoch of history; got an empty list")
    panels = curve_panels(history)
    if not panels:
        raise ValueError(f"nothing to plot in the history: keys {sorted(history[-1])}")
    from matplotlib.ticker import MaxNLocator
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(4.2 * cols, 3.2 * rows)
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if isinstance(row.get(key), (int, float))]
            label = key[len("train_"):] if key.startswith("train_") else key[len("val_"):] if key.startswith("val_") \
                else key
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 12 else None,
                    markersize=3, label=label)
        values = [row[k] for k in keys for row in history if isinstance(row.get(k), (int, float))]
        if values and min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_yscale("log")  # e.g. CIARD's λ, which spans orders of magnitude
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if len(keys) > 1 or title == "other logged values":
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _interval(summary, column):
    """(mean, lower error, upper error) of one column: the mean and its confidence interval (no
    error bar, zero lengths, with one seed)."""
    s = summary[column]
    if s["ci_low"] is None:
        return s["mean"], 0.0, 0.0
    return s["mean"], s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]


def _subtitle(result):
    seeds = result.seeds or [result.config.get("seed", 0)]
    if len(seeds) > 1:
        level = next(iter(next(iter(result.summary.values())).values()))["confidence"]
        return f"mean over {len(seeds)} seeds, bars: {100 * level:g} % Student-t interval of the mean"
    return f"one seed ({seeds[0]}): no error bars"


def plot_comparison(result, path, robust="worst"):
    """comparison.png: clean accuracy (x) against worst-case robust accuracy (y), one point per
    method with its interval on both axes (the robustness–accuracy trade-off figure).

    When some methods are far below the others in robustness (under half the best, e.g. a naturally
    trained model), a second panel zooms on the rest so their differences stay visible.

    Args:
        result: a CompareResult with `summary` filled (compare.aggregate).
        path: the PNG to write.
        robust: the column on the y axis (default "worst", the per-example worst case over attacks).
    """
    methods = [m for m in result.methods if "clean" in result.summary.get(m, {}) and robust in result.summary[m]]
    if not methods:
        raise ValueError(f"no method has both 'clean' and {robust!r} in its summary; nothing to plot")
    style = {m: (c, _MARKERS[i % len(_MARKERS)]) for i, (m, c) in enumerate(zip(methods, _colors(len(methods))))}
    best = max(result.summary[m][robust]["mean"] for m in methods)
    robust_ones = [m for m in methods if result.summary[m][robust]["mean"] >= best / 2]
    panels = [methods] + ([robust_ones] if len(robust_ones) < len(methods) and len(robust_ones) > 1 else [])
    fig = _figure(6.4 * len(panels), 4.8)
    eps = result.config.get("eps")
    title = f"{result.config.get('dataset', '')}" + (f", ε = {eps * 255:.3g}/255" if eps is not None else "")
    for i, shown in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        spans = {"x": [], "y": []}
        for method in shown:
            color, marker = style[method]
            x, x_lo, x_hi = _interval(result.summary[method], "clean")
            y, y_lo, y_hi = _interval(result.summary[method], robust)
            spans["x"] += [x - x_lo, x + x_hi]
            spans["y"] += [y - y_lo, y + y_hi]
            ax.errorbar([x], [y], xerr=[[x_lo], [x_hi]], yerr=[[y_lo], [y_hi]], fmt=marker, color=color, capsize=3,
                        markersize=9 if method == result.baseline else 6, label=method, elinewidth=1)
            if len(shown) <= 4:
                ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        # a t interval of few seeds can reach past 0 or 100 %; accuracy cannot, so the view stops there
        ax.set_xlim(*_limits(spans["x"]))
        ax.set_ylim(*_limits(spans["y"]))
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel(f"{_LABELS.get(robust, robust)} robust accuracy (%)")
        ax.set_title(f"{title}\n{_subtitle(result)}" if i == 0 else
                     f"zoom: the {len(shown)} methods within half of the best {_LABELS.get(robust, robust)}",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2 if len(shown) > 6 else 1)
    fig.tight_layout()
    return _save(fig, path)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def plot_per_attack(result, path):
    """per_attack.png: grouped bars, one group per attack column (clean, FGSM, PGD, CW∞, AA, worst),
    one bar per method, with the interval as error bars."""
    columns = [c for c in _LABELS if any(c in result.summary.get(m, {}) for m in result.methods)]
    if not columns:
        raise ValueError("the comparison has no accuracy columns to plot")
    methods = list(result.methods)
    fig = _figure(min(12.0, max(6.4, 0.25 * len(columns) * len(methods))), 4.4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(methods)
    for i, (method, color) in enumerate(zip(methods, _colors(len(methods)))):
        xs, means, lows, highs = [], [], [], []
        for j, column in enumerate(columns):
            if column not in result.summary.get(method, {}):
                continue
            mean, lo, hi = _interval(result.summary[method], column)
            xs.append(j - 0.4 + width * (i + 0.5))
            means.append(mean)
            lows.append(lo)
            highs.append(hi)
        ax.bar(xs, means, width=width, yerr=[lows, highs], capsize=2, color=color, label=method)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([_LABELS[c] for c in columns])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(_subtitle(result), fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=min(len(methods), 5), loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def _limits(values, pad=0.08):
    lo, hi = min(values), max(values)
    margin = max(hi - lo, 1.0) * pad
    return max(0.0, lo - margin), min(100.0, hi + margin)


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
