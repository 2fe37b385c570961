"""SIGTERM / SIGINT: finish the current step, write a resumable checkpoint, then stop.

A cluster scheduler sends SIGTERM before it preempts a job; Ctrl-C sends SIGINT. Inside
`graceful_stop()` both only set a flag (a Python attribute: reading it costs no device sync), which
the trainer checks after every optimiser step; it then writes a mid-epoch ``last.pt`` and raises
:class:`RunInterrupted`, which the CLI turns into the exact resume command and exit status
128 + signal (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C while the checkpoint is written
interrupts at once (the default handler is restored after the first).

A cluster job adds the scheduler's own warning signal (`graceful_stop(also=(signal.SIGUSR2,))`,
SLURM's signal before a time limit or a preemption, see `engine/cluster_job.py`): it takes the
same path, and the job requeues itself once the checkpoint is on disk.
"""
import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_STOP = {"signum": None, "signals": STOP_SIGNALS}


class RunInterrupted(Exception):
    """The run stopped on a signal after writing a resumable checkpoint (`checkpoint`)."""

    def __init__(self, signum, checkpoint, epoch, step, resume_hint=None):
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        self.resume_hint = resume_hint
        super().__init__(self.message())

    @property
    def exit_code(self):
        return 128 + int(self.signum)

    @property
    def signal_name(self):
        return signal.Signals(self.signum).name

    def __str__(self):  # the resume hint may be filled in by an outer run after construction
        return self.message()

    def message(self):
        where = f"epoch {self.epoch}, step {self.step}"
        hint = self.resume_hint or f"ciard-fast train --resume {self.checkpoint}"
        return f"{self.signal_name} received: stopped at {where} after writing {self.checkpoint}; resume with: {hint}"


@contextlib.contextmanager
def stop_at_once(checkpoint, epoch, step):
    """Within `graceful_stop()`, make a signal raise RunInterrupted immediately (for work that
    writes nothing until it ends, such as the final test evaluation: the checkpoints on disk are
    already complete). A signal that came just before the block is honoured on entry."""
    if not _STOP.get("installed"):
        yield
        return

    def handler(signum, frame):
        _STOP["signum"] = signum
        raise RunInterrupted(signum, checkpoint, epoch, step)

    if _STOP["signum"] is not None:
        raise RunInterrupted(_STOP["signum"], checkpoint, epoch, step)
    with _handling(handler, _STOP["signals"]):
        yield


@contextlib.contextmanager
def _handling(handler, signums=STOP_SIGNALS):
    """`handler` for `signums` (SIGTERM and SIGINT) within the block; the previous handlers after it."""
    previous = {s: signal.getsignal(s) for s in signums}
    try:
        for s in previous:
            signal.signal(s, handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_requested():
    """The signal number that asked the run to stop, or None."""
    return _STOP["signum"]


def _handler(signum, frame):
    _STOP["signum"] = signum
    if signum == signal.SIGINT:  # a second Ctrl-C: stop now
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def graceful_stop(also=()):
    """Within the block, SIGTERM and SIGINT (and the signals in `also`, e.g. a scheduler's
    SIGUSR2) request a stop instead of killing the process.

    Nested use is a no-op (a teacher run inside a student run, or a run inside a cluster job,
    shares the outer handlers). Only the main thread can install handlers; elsewhere the block
    changes nothing.
    """
    if threading.current_thread() is not threading.main_thread() or _STOP.get("installed"):
        yield
        return
    signums = STOP_SIGNALS + tuple(s for s in also if s not in STOP_SIGNALS)
    _STOP.update(signum=None, installed=True, signals=signums)
    try:
        with _handling(_handler, signums):
            yield
    finally:
        _STOP.update(signum=None, installed=False, signals=STOP_SIGNALS)
