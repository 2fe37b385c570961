"""The progress of an evaluation on stderr, through tqdm.

On a terminal: a tqdm bar (done/total, rate, elapsed, ETA, the current column). On a file or pipe
a bar's carriage returns would make an unreadable log, so a plain line with the same fields
(tqdm's own formatting) is written at most every `log_interval` seconds and once at the end.
"""
import sys
import time

from tqdm.auto import tqdm

__all__ = ["Progress"]


class Progress:
    """``desc done/total [elapsed<left, rate] status`` for `total` units (None: unknown length).

    Args:
        total: number of updates expected, or None.
        desc: the label in front (default "evaluate").
        enabled: False makes every call a no-op.
        stream: where to write (default stderr).
        min_interval: seconds between redraws of a terminal bar (default 0.2).
        log_interval: seconds between lines when `stream` is not a terminal (default 10).
    """

    def __init__(self, total=None, desc="evaluate", enabled=True, stream=None, min_interval=0.2, log_interval=10.0):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._status = ""
        self._last = float("-inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = log_interval
        self._bar = None
        if enabled and self._tty:
            self._bar = tqdm(total=total, desc=desc, file=self.stream, mininterval=min_interval, leave=True,
                             dynamic_ncols=True, unit="batch")

    def update(self, n=1, status=""):
        self.done += n
        self._status = status
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(status, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self._interval:
            self._last = now
            self._line(now)

    def _line(self, now):
        line = tqdm.format_meter(self.done, self.total, now - self.start, prefix=self.desc, unit="batch",
                                 postfix=self._status or None, ncols=0)
        self.stream.write(line.strip() + "\n")
        self.stream.flush()

    def close(self, status="done"):
        if not self.enabled:
            return
        self._status = status
        if self._bar is not None:
            self._bar.set_postfix_str(status, refresh=False)
            self._bar.refresh()  # the final count, rate and time stay on screen
            self._bar.close()
            self._bar = None
            return
        self._line(time.perf_counter())
