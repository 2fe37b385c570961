"""One folder, one run: the run-folder lock and the choice of the folder a run writes.

A run holds ``<out_dir>/run.lock`` (JSON: pid, host, start time, command) from before its first
write until it returns, so a second run on the same folder stops at once with a message naming
the holder instead of interleaving its checkpoints with the first one's. The lock is created
with ``O_CREAT | O_EXCL`` (atomic on local filesystems); a lock left by a killed process on this
host (its pid no longer runs) is stale and taken over with a note.

Which folder (`claim_run_folder`):
  * resuming: the folder that holds the checkpoint (a moved run folder continues where it is);
  * a folder the engine manages (a teacher or comparison run it retrains): used as it is;
  * an ``out_dir`` the user gave (keyword, CLI, their YAML): refused when it already holds a run,
    unless ``overwrite=True`` (then the earlier run's files are removed first, so its best.pt can
    never be reported as this run's);
  * the default or a preset's folder (``runs/demo``): when it holds a run, the next free numbered
    folder (``runs/demo-2``, ``runs/demo-3`` ...), with a note saying so.
"""
import contextlib
import datetime
import json
import os
import shutil
import socket
import sys

from ..atomic import TEMP_PREFIX, create_exclusive, remove_stale_temporaries

LOCK_NAME = "run.lock"
# What a run writes in its folder (besides teachers/ and natural_student/ caches, which are only
# reused when their config matches exactly, so they do not make a folder "hold a run").
# Everything a run writes into its folder: an overwritten run leaves none of the earlier one's
# files behind (a crash of the new run must not leave the old model card or table beside it).
RUN_FILES = ("last.pt", "best.pt", "results.json", "results.md", "metrics.csv", "metrics.jsonl", "curves.png",
             "model_card.json", "model_card.md", "teachers.json", "compare_row.json", "wandb_run.json")
RUN_DIRS = ("tensorboard", "wandb")
CACHE_DIRS = ("teachers", "natural_student")


class RunFolderError(ValueError):
    """The run folder is locked by another run, or holds a run the user did not ask to replace."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe_holder(holder):
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f", command: {holder['command']}" if holder.get("command") else ""))


class RunLock:
    """``<folder>/run.lock`` held by this process. `acquire()` raises RunFolderError naming the
    holder when another live run holds it; `release()` removes it (only if it is still ours)."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.held = False

    def read_holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)}
        for attempt in range(2):
            try:
                create_exclusive(self.path, json.dumps(info))
            except FileExistsError:
                holder = self.read_holder()
                stale = (holder.get("host") == info["host"] and isinstance(holder.get("pid"), int)
                         and holder["pid"] != os.getpid() and not _pid_alive(holder["pid"]))
                if attempt == 0 and (stale or not holder and self._unreadable_and_old()):
                    print(f"note: {self.path} was left by a run that no longer runs "
                          f"({_describe_holder(holder) if holder else 'unreadable'}); taking it over", file=sys.stderr)
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    continue
                raise RunFolderError(
                    f"run folder {self.folder!r} is in use by another run ({_describe_holder(holder)}); wait for it "
                    f"to finish or choose another out_dir. If that run is gone, delete {self.path}") from None
            self.held = True
            return self
        raise RunFolderError(f"could not take the lock {self.path}")  # pragma: no cover (a race lost twice)

    def _unreadable_and_old(self):
        # A lock whose JSON never got written (killed between open and write) and is minutes old.
        try:
            import time

            return time.time() - os.path.getmtime(self.path) > 60
        except OSError:
            return False

    def release(self):
        if self.held:
            if self.read_holder().get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def run_files(folder):
    """The entries of `folder` that belong to a run (anything but the lock, temporaries and the
    engine's reusable caches)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder)
                  if n != LOCK_NAME and not n.startswith(TEMP_PREFIX) and n not in CACHE_DIRS)


def remove_run_files(folder):
    """Delete an earlier run's checkpoints, logs and results from `folder` (caches stay)."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    for name in RUN_DIRS:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def numbered(folder, index):
    """runs/demo, 2 -> runs/demo-2 (the detection tools' runs/train2 convention, with a dash)."""
    return folder if index == 1 else f"{folder.rstrip(os.sep)}-{index}"


def _holds_a_run(folder, existing):
    return RunFolderError(
        f"out_dir {folder!r} already holds a run ({', '.join(existing[:5])}"
        f"{', ...' if len(existing) > 5 else ''}); resume it with --resume {os.path.join(folder, 'last.pt')}, "
        f"choose another out_dir, or pass --overwrite true (overwrite=True) to replace it")


def _not_a_folder(folder):
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunFolderError(f"out_dir {folder!r} is a file, not a folder; give a folder for the run's files")
    if os.path.isfile(os.path.join(folder, "compare.json")):
        raise RunFolderError(f"out_dir {folder!r} holds a comparison (compare.json); a run there would mix its files "
                             "with the comparison's. Choose another out_dir")


def check_run_folder(folder, *, resuming=False, managed=False, user_given=True, overwrite=False):
    """What `claim_run_folder` would refuse, checked without taking the lock: called before any
    teacher trains, so that a used, locked or impossible out_dir stops the run at once (the claim
    itself comes later and checks again). Raises RunFolderError as `claim_run_folder` does."""
    folder = os.path.normpath(os.fspath(folder))
    _not_a_folder(folder)
    if not (resuming or managed or user_given):
        return  # a default folder that holds a run moves to the next numbered one
    lock = RunLock(folder)
    if os.path.exists(lock.path):
        holder = lock.read_holder()
        stale = (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
                 and not _pid_alive(holder["pid"]))
        if holder and not stale and holder.get("pid") != os.getpid():
            raise RunFolderError(
                f"run folder {folder!r} is in use by another run ({_describe_holder(holder)}); wait for it "
                f"to finish or choose another out_dir. If that run is gone, delete {lock.path}")
    existing = run_files(folder)
    if existing and not (resuming or managed or overwrite):
        raise _holds_a_run(folder, existing)


def claim_run_folder(folder, *, resuming=False, managed=False, user_given=True, overwrite=False):
    """Lock the folder this run will write and return ``(path, lock)``; see the module docstring.

    folder: the configured out_dir. resuming: continuing a checkpoint in `folder`. managed: a
    folder the engine itself retrains into (teachers, the natural comparison student).
    user_given: the user chose `folder`. overwrite: replace the run a user-given folder holds.
    Raises RunFolderError (a ValueError) naming the folder, the holder or the fix.
    """
    folder = os.path.normpath(os.fspath(folder))
    _not_a_folder(folder)
    if resuming or managed or user_given:
        lock = RunLock(folder).acquire()
        existing = run_files(folder)
        if existing and not (resuming or managed or overwrite):
            lock.release()
            raise _holds_a_run(folder, existing)
        if (managed or overwrite) and not resuming:
            remove_run_files(folder)
        remove_stale_temporaries(folder)
        return folder, lock
    for index in range(1, 10000):
        candidate = numbered(folder, index)
        if run_files(candidate):
            continue
        try:
            lock = RunLock(candidate).acquire()
        except RunFolderError:
            continue  # another run is starting there right now
        if run_files(candidate):  # it started and wrote between our two looks
            lock.release()
            continue
        if candidate != folder:
            print(f"note: {folder} already holds a run; this run writes to {candidate}", file=sys.stderr)
        remove_stale_temporaries(candidate)
        return candidate, lock
    raise RunFolderError(f"no free numbered folder next to {folder!r}")  # pragma: no cover
