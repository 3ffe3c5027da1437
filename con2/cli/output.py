"""Where a command's table goes: a file written atomically, or standard output, which a reader
may leave early (`con2 score ... | head`)."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import IO, Callable

from ..files import replacing


class ReaderGone(Exception):
    """The reader of standard output left; the command ends quietly (exit status 141, as SIGPIPE)."""


def write_output(write: Callable[[IO[str]], None], out: str | Path | None) -> None:
    """write(stream) into the file `out` (replaced in one step once complete), or to standard output."""
    if out:
        with replacing(Path(out)) as tmp, open(tmp, "w", newline="") as fh:
            write(fh)
        return
    try:
        write(sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        try:  # so the interpreter's own flush at exit does not fail on the closed pipe again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        raise ReaderGone from None
