"""Atomic file writes: the one place in the library that puts a file on disk.

Every file the library writes (checkpoints, logs, tables, JSON, caches, exports) goes through
:func:`atomic_write`: the bytes go to a temporary file in the destination folder (same
filesystem, so ``os.replace`` is atomic), are flushed and fsync'ed, then replace the destination.
A crash, a signal or a full disk leaves either the old file or the new one, never half of one, and
never a temporary file behind (it is removed on any exception). A full disk or another I/O error
becomes one :class:`AtomicWriteError` line naming the file and the space left.

Temporary files are named ``.tmp-<name>-<random>``; :func:`remove_stale_temporaries` deletes the
ones a killed process (SIGKILL cannot run cleanup) left in a folder.
"""
import contextlib
import errno
import os
import shutil
import tempfile

TEMP_PREFIX = ".tmp-"
FILE_MODE = 0o644  # what `open()` gives under the usual umask; mkstemp alone would give 0600


class AtomicWriteError(OSError):
    """Writing a file failed (disk full, permissions, I/O error); the previous file is intact."""


def _free_space(folder):
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _describe(path, error):
    folder = os.path.dirname(os.path.abspath(path))
    free = _free_space(folder)
    space = f"; {free / 2**20:.1f} MiB free in {folder}" if free is not None else ""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
    elif getattr(error, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "no permission to write there"
    else:
        what = f"{type(error).__name__}: {error}"
    return (f"could not write {path}: {what}{space}. The previous version of the file (if any) is intact; "
            "free some space or choose another folder, then run again")


@contextlib.contextmanager
def atomic_write(path, binary=True, mode=FILE_MODE):
    """``with atomic_write(path) as f: f.write(...)`` — the file appears whole or not at all.

    path: destination; its folder is created. binary: bytes (default) or UTF-8 text.
    mode: permission bits of the final file (default 0644).
    Raises AtomicWriteError (an OSError) naming the file and the free space on an I/O failure.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}-", dir=folder)
    except OSError as error:
        raise AtomicWriteError(_describe(path, error)) from error
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError) and not isinstance(error, AtomicWriteError):
            raise AtomicWriteError(_describe(path, error)) from error
        raise


def write_text_atomic(path, text):
    """Write a str as UTF-8, atomically. Returns the path."""
    with atomic_write(path, binary=False) as f:
        f.write(text)
    return os.fspath(path)


def write_bytes_atomic(path, data):
    """Write bytes atomically. Returns the path."""
    with atomic_write(path) as f:
        f.write(data)
    return os.fspath(path)


def save_torch_atomic(obj, path):
    """``torch.save(obj)`` to `path`, atomically. Returns the path."""
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)
    return os.fspath(path)


def save_npy_atomic(path, array):
    """``np.save(array)`` to `path`, atomically. Returns the path."""
    import numpy as np

    with atomic_write(path) as f:
        np.save(f, array)
    return os.fspath(path)


def create_exclusive(path, text, mode=FILE_MODE):
    """Create `path` holding `text` (UTF-8) only if no file is there (``O_CREAT | O_EXCL``): the
    primitive of lock files, where replacing an existing file would defeat the lock.

    Raises FileExistsError when `path` exists (the caller reads who holds it); AtomicWriteError on
    another I/O failure. A crash between the create and the write can leave an empty file, which
    the lock's owner treats as unreadable (engine/rundir.py).
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise
    except OSError as error:
        raise AtomicWriteError(_describe(path, error)) from error
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise AtomicWriteError(_describe(path, error)) from error
    return path


def remove_stale_temporaries(folder):
    """Delete the temporary files of interrupted writes in `folder` (not recursive).

    Only call this on a folder the caller owns (e.g. under the run's lock): a write in progress
    by another process would lose its temporary file. Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith(TEMP_PREFIX):
            full = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                os.remove(full)
                removed.append(full)
    return removed
