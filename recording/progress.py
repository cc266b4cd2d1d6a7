"""Progress for long work (training, evaluation, export), one component for every command.

On a terminal: a tqdm bar. Without one (CI, `| tee`, a log file): one plain line every `interval_s`
seconds and a last one at the end — never a single line of thousands of carriage returns — through
`logging` (logger `recording.progress`), or to a stream the caller names. Lives in the lowest layer that
both `xr0/` and `app/` import.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

log = logging.getLogger(__name__)
LINE_INTERVAL_S = 30.0


class LineProgress:
    """tqdm's calls that our commands use (update, set_postfix[_str], close), as occasional plain lines."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        initial: int = 0,
        file: IO[str] | None = None,
        interval_s: float = LINE_INTERVAL_S,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start = initial
        self.file = file  # None: the lines go to logging
        self.interval_s = interval_s
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self._line(now)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self, now: float) -> None:
        done = self.n - self.start
        rate = done / max(now - self.t0, 1e-9)
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}s"]
        if self.total:
            parts.append(f"{100 * self.n / self.total:.0f} %")
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"about {_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        line = ", ".join(parts)
        if self.file is None:
            log.info("%s", line)
        else:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_bar(
    total: int | None, desc: str, unit: str, initial: int = 0, file: IO[str] | None = None
) -> Any:
    """A tqdm bar when `file` (default stderr) is a terminal; a LineProgress otherwise (same
    update/set_postfix_str/close), writing to `file` if one was given, else to logging."""
    if _isatty(file or sys.stderr):
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=file or sys.stderr
        )
    return LineProgress(total, desc, unit, initial=initial, file=file)


def progress_iter(iterable, total: int | None, desc: str, unit: str, file: IO[str] | None = None):
    """Iterate `iterable` with a progress bar (or occasional lines), closed at the end."""
    bar = progress_bar(total, desc, unit, file=file)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


def _isatty(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False
