"""Paths the user names for the library to write: never a run's own file, never a file being read.

Every output path a user gives (``export --out`` and the model cards beside it, ``eval --json``,
``doctor --json``, the ``out_dir`` of ``train`` / ``teacher`` / ``compare``) is checked here before
any work starts. A path is refused, with an :class:`OutputPathError` (a ``ValueError``: exit
status 2 on the command line) naming both paths, when writing it would replace

- a file the same command reads (the checkpoint being exported, the weights being evaluated, a
  teacher file, the checkpoint being resumed), under any spelling of its path (links included);
- a file a run owns in its folder: ``last.pt``, ``best.pt``, ``results.*``, ``metrics.*``,
  ``model_card.*``, ``teachers.json``, ``compare*``, ``curves.png``, ``run.lock``, or anything
  under its ``teachers/``, ``natural_student/`` or ``tensorboard/`` folders;
- a training checkpoint of ciard-fast anywhere (a copied ``best.pt`` is still a run's result).

A run folder is a folder holding one of :data:`RUN_MARKERS`. Writing a new file inside a run folder
(``runs/demo/student.onnx``, the default of ``export``) is allowed. This module only reads; the
writes themselves go through :mod:`ciard_fast.atomic`.
"""
import fnmatch
import os

__all__ = ["OutputPathError", "RUN_MARKERS", "RUN_OWNED", "RUN_SUBFOLDERS", "check_output_file", "run_folder_of",
           "same_path", "is_training_checkpoint"]

# a folder holding one of these is a run's (train, teacher, compare) folder
RUN_MARKERS = ("last.pt", "best.pt", "run.lock", "results.json", "results.md", "metrics.csv", "metrics.jsonl",
               "teachers.json", "compare.json", "compare_row.json")
# the files a run owns in its folder (names or patterns)
RUN_OWNED = ("last.pt", "best.pt", "results.*", "metrics.*", "model_card.*", "teachers.json", "compare.*",
             "compare_row.json", "curves.png", "comparison.png", "per_attack.png", "run.lock")
# folders of a run folder that belong to the run (cached teacher runs, the natural student, logs)
RUN_SUBFOLDERS = ("teachers", "natural_student", "tensorboard")


class OutputPathError(ValueError):
    """An output path would replace a file being read or a run's own file; nothing was written."""


def same_path(a, b):
    """True when `a` and `b` name the same file (both existing: the same inode; else the same
    absolute, link-resolved path)."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _is_run_folder(folder):
    return os.path.isdir(folder) and any(os.path.exists(os.path.join(folder, m)) for m in RUN_MARKERS)


def run_folder_of(path):
    """(run folder, what of it `path` would replace) when `path` is a file a run owns, else None.

    `what` is e.g. "its best.pt" or "its teachers/ folder"."""
    full = os.path.realpath(os.fspath(path))
    folder, name = os.path.dirname(full), os.path.basename(full)
    if _is_run_folder(folder) and any(fnmatch.fnmatch(name, pattern) for pattern in RUN_OWNED):
        return folder, f"its {name}"
    # under <run folder>/teachers/..., /natural_student/..., /tensorboard/...
    parts = full.split(os.sep)
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] in RUN_SUBFOLDERS:
            root = os.sep.join(parts[:i]) or os.sep
            if _is_run_folder(root):
                return root, f"its {parts[i]}/ folder"
    return None


def is_training_checkpoint(path):
    """True when `path` is a readable ciard-fast training checkpoint (a run's last.pt / best.pt,
    wherever it was copied to). Reads the file (``weights_only``); False for anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    try:
        import zipfile

        if not zipfile.is_zipfile(path):  # torch.save's format: a zip archive
            return False
        import torch

        from .engine.checkpoint import FORMAT

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (not a checkpoint we can read: not ours either)
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def check_output_file(path, *, option, reads=()):
    """Refuse to write the file `path` (named `option` to the user, e.g. "--out") when it would
    replace one of `reads` (the files this command reads), a run's own file or a training
    checkpoint; also when it is a folder. Returns `path` unchanged.

    Raises OutputPathError naming `path`, the file or run folder it would replace, and the fix.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputPathError(f"{option} {path!r} is a folder; give the path of the file to write")
    for read in reads:
        if read is not None and same_path(path, read):
            raise OutputPathError(f"{option} {path!r} is {os.fspath(read)!r}, the file this command reads; "
                                  "writing it would replace it. Give another path")
    owner = run_folder_of(path)
    if owner is not None:
        folder, what = owner
        raise OutputPathError(f"{option} {path!r} would replace {what} in the run folder {folder!r}; a run's own "
                              "files are never overwritten. Give a path outside it or a new file name "
                              f"(e.g. {os.path.join(os.path.dirname(path) or '.', 'exported-' + os.path.basename(path))})")
    if is_training_checkpoint(path):
        raise OutputPathError(f"{option} {path!r} is a ciard-fast training checkpoint; writing it would replace "
                              "it. Give another path")
    return path
