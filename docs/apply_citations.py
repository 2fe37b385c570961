#!/usr/bin/env python3
"""Rewrite the spec-page citations listed in docs/.citations.tsv (integrator's tool, NOT shipped).

Every data row of the TSV is ``path<TAB>old line<TAB>new line``. Lines starting with ``#`` are
comments. For each row, every line of ``path`` whose text (without its line ending) equals
``old line`` exactly is replaced by ``new line``; the line ending and everything else in the
file are kept byte for byte. Rows whose old line is not found (the file changed in a merge, or
the row was already applied) are reported, never guessed at.

    python docs/apply_citations.py            # apply, from the repository root
    python docs/apply_citations.py --check    # report only, change nothing

Exit status: 0 when every row was applied (or is already applied), 1 when some row's old line
was found nowhere, 2 on a malformed TSV. Afterwards it lists any remaining spec-page citation
in the code, so the integrator sees what is left. Delete this file and the TSV once applied.
"""
import argparse
import os
import re
import sys
import tempfile
from collections import OrderedDict

SPEC_CITATION = re.compile(r"CIARD\.md|BASELINES\.md|EVALUATION\.md|PERFORMANCE\.md|PAPER_RESULTS\.md"
                           r"|shared/spec|\.\./shared")
# ARCHITECTURE.md is a real file of the repository now, so citing it is not a leftover.
SCAN = ("ciard_fast", "kernels", "benchmarks", "tests", "setup.py", "CMakeLists.txt", "README.md")


def read_rows(tsv_path):
    """[(lineno, path, old, new)] in file order; raises ValueError on a malformed row."""
    rows = []
    with open(tsv_path, encoding="utf-8", newline="") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise ValueError(f"{tsv_path}:{lineno}: expected 3 tab-separated fields, got {len(fields)}")
            path, old, new = fields
            if not path or not old:
                raise ValueError(f"{tsv_path}:{lineno}: empty path or old line")
            rows.append((lineno, path, old, new))
    return rows


def split_keepends(text):
    """[(body, ending)] per line; ending is '\\n', '\\r\\n' or '' (last line without newline)."""
    out = []
    for chunk in text.splitlines(keepends=True):
        body = chunk.rstrip("\r\n")
        out.append((body, chunk[len(body):]))
    return out


def write_atomic(path, text):
    """Replace `path` by `text` through a temporary file in the same folder, keeping its mode."""
    folder = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".apply_citations.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def apply(rows, root, check_only):
    """Apply rows grouped by file. Returns (applied, already, missing); the first two are lists of
    TSV line numbers, `missing` of (tsv line, path, old line, reason)."""
    by_file = OrderedDict()
    for row in rows:
        by_file.setdefault(row[1], []).append(row)
    applied, already, missing = [], [], []
    for path, file_rows in by_file.items():
        full = os.path.join(root, path)
        if not os.path.isfile(full):
            missing.extend((lineno, path, old, "file not found") for lineno, _, old, _ in file_rows)
            continue
        with open(full, encoding="utf-8", newline="") as f:
            lines = split_keepends(f.read())
        replacement = {}
        for lineno, _, old, new in file_rows:
            if replacement.setdefault(old, new) != new:
                raise ValueError(f"TSV line {lineno}: {path}: this line already has a different replacement")
        changed = False
        for lineno, _, old, new in file_rows:
            bodies = {body for body, _ in lines}
            if old in bodies:
                # Identical lines of one file get the same replacement (a repeated row then
                # finds its work done and counts as already applied).
                lines = [(new if body == old else body, end) for body, end in lines]
                applied.append(lineno)
                changed = True
            elif new in bodies:
                already.append(lineno)
            else:
                missing.append((lineno, path, old, "line not found"))
        if changed and not check_only:
            write_atomic(full, "".join(body + end for body, end in lines))
    return applied, already, missing


def leftovers(root):
    """'path:line: text' for every spec-page citation still in the scanned files."""
    found = []
    for entry in SCAN:
        top = os.path.join(root, entry)
        paths = [top] if os.path.isfile(top) else [os.path.join(d, n) for d, _, names in os.walk(top) for n in names]
        for p in sorted(paths):
            try:
                with open(p, encoding="utf-8") as f:
                    for i, line in enumerate(f, 1):
                        if SPEC_CITATION.search(line):
                            found.append(f"{os.path.relpath(p, root)}:{i}: {line.rstrip()}")
            except (UnicodeDecodeError, OSError):
                continue  # binaries (compiled objects, checkpoints) cannot cite anything
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tsv", default=os.path.join("docs", ".citations.tsv"))
    parser.add_argument("--root", default=".", help="repository root (default: current folder)")
    parser.add_argument("--check", action="store_true", help="report what would change; write nothing")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(os.path.join(args.root, args.tsv))
        applied, already, missing = apply(rows, args.root, args.check)
    except ValueError as exc:
        print(f"apply_citations: {exc}", file=sys.stderr)
        return 2
    verb = "would apply" if args.check else "applied"
    print(f"{len(rows)} rows: {verb} {len(applied)}, already applied {len(already)}, not found {len(missing)}")
    for lineno, path, old, why in missing:
        print(f"NOT FOUND (tsv line {lineno}, {why}): {path}: {old.strip()}")
    rest = leftovers(args.root)
    if rest:
        print(f"{len(rest)} spec-page citation(s) remain{' (before applying)' if args.check else ''}:")
        for line in rest:
            print("  " + line)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
