"""Progress of long work: a bar on a terminal, plain lines in a log file.

A bar's carriage returns would make one ever-growing line in a log file (a batch job's), and the
next message would land on it; there a line says what starts, then at most one line a minute
says how far it got, so a log of a long scoring or decoding run is not silent for minutes.
"""
from __future__ import annotations

import contextlib
import sys
import time

PLAIN_EVERY_S = 60.0  # as training's plain progress lines (con2.train._StepLog)
_silenced = False  # `--quiet`: also the progress of work that takes no progress flag (decoding a folder)


@contextlib.contextmanager
def silenced(quiet: bool = True):
    """No progress (bars or lines) while the block runs, when `quiet`."""
    global _silenced
    before, _silenced = _silenced, _silenced or quiet
    try:
        yield
    finally:
        _silenced = before


class PlainProgress:
    """tqdm's update / close / context manager, as plain lines on standard error."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.t_start = self.t_said = time.perf_counter()
        print(f"{desc}: {total:,} {unit}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.t_said >= PLAIN_EVERY_S and self.n < self.total:
            self.t_said = now
            left = (self.total - self.n) * (now - self.t_start) / max(self.n, 1)
            print(f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%), "
                  f"{duration_text(left)} left", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, enabled: bool = True, unit: str = "image views"):
    """A tqdm bar on a terminal, PlainProgress into a log file, nothing when not `enabled`."""
    from tqdm.auto import tqdm

    enabled = enabled and not _silenced
    if enabled and not sys.stderr.isatty():
        return PlainProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def duration_text(seconds: float) -> str:
    """'1h02m' or '4m05s'."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
