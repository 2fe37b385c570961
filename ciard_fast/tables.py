"""The one Markdown table renderer and the one column-label map of the library.

Every table the library prints (a training run's results.md, compare.md, an EvalReport) is
rendered here, and every accuracy column is headed by the label its evaluation column registered
(`ciard_fast.attacks.columns.register_attack`): "pgd_sat" -> "PGD-SAT", "worst" -> "Worst". A
newly registered column therefore shows up with its label and in its place in every table.
"""

__all__ = ["column_label", "order_columns", "render_table", "format_accuracy", "MISSING"]

MISSING = "—"  # a cell with no value (a column one row of a table did not run)


def _registry():
    # imported lazily: `ciard_fast.tables` must stay importable without torch-heavy modules
    from .attacks import columns

    return columns


def column_label(key):
    """The table heading of accuracy column `key`: its registered label, "Worst" for the
    per-example AND, the key itself for anything else (e.g. a column of an older results file)."""
    columns = _registry()
    if key == columns.WORST:
        return columns.WORST_LABEL
    if key in columns.ATTACK_REGISTRY:
        return columns.ATTACK_REGISTRY.get(key).label
    return key


def order_columns(keys):
    """Accuracy column keys in table order: registered columns by their order, then "worst", then
    unregistered keys in the order given. Duplicates are dropped."""
    columns = _registry()
    keys = list(dict.fromkeys(keys))
    known = [k for k in keys if k in columns.ATTACK_REGISTRY]
    known.sort(key=lambda k: columns.ATTACK_REGISTRY.get(k).order)
    worst = [k for k in keys if k == columns.WORST]
    return known + worst + [k for k in keys if k not in known and k not in worst]


def format_accuracy(value):
    """An accuracy in percent as a cell: two decimals, or MISSING for None."""
    return MISSING if value is None else f"{value:.2f}"


def render_table(headers, rows, align=None):
    """A Markdown table as a list of lines (no trailing newline).

    headers: the header cells [n]; rows: sequences of n cells (converted with str);
    align: one of "left"/"right" per column (default: the first left, the rest right).
    Raises ValueError if a row does not have one cell per header.
    """
    headers = [str(h) for h in headers]
    if align is None:
        align = ["left"] + ["right"] * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align needs one entry per column ({len(headers)}), got {len(align)}")
    marks = {"left": "---", "right": "---:"}
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(headers):
            raise ValueError(f"a table row has {len(cells)} cells for {len(headers)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
