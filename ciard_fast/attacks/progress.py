"""A minimal progress line on stderr (no tqdm dependency)."""
import sys
import time

__all__ = ["Progress"]


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


class Progress:
    """``done/total [status] elapsed, ~left`` on one line of `stream` (default stderr).

    On a terminal the line is redrawn in place (at most every `min_interval` seconds); on a file
    or pipe a line is written at most every `log_interval` seconds so logs stay readable.
    `total` may be None (unknown length). Disabled instances do nothing.
    """

    def __init__(self, total=None, desc="evaluate", enabled=True, stream=None, min_interval=0.2, log_interval=10.0):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = float("-inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = min_interval if self._tty else log_interval
        self._width = 0

    def update(self, n=1, status=""):
        self.done += n
        self._render(status, force=False)

    def _render(self, status, force):
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        elapsed = now - self.start
        if self.total:
            left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
            line = f"{self.desc} {self.done}/{self.total}"
            if left == left:  # not NaN
                line += f" {_clock(elapsed)} elapsed, ~{_clock(left)} left"
        else:
            line = f"{self.desc} {self.done} {_clock(elapsed)} elapsed"
        if status:
            line += f" [{status}]"
        if self._tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, status="done"):
        if not self.enabled:
            return
        self._render(status, force=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
