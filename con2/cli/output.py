"""Where a command's table goes: a file written atomically, or standard output, which a reader
may leave early (`con2 score ... | head`)."""
from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path
from typing import IO, Callable, Iterable

from ..files import RUN_FILES, nearest_folder, replacing


class ReaderGone(Exception):
    """The reader of standard output left; the command ends quietly (exit status 141, as SIGPIPE)."""


def to_stdout(out: str | Path | None) -> bool:
    """No --out, or `--out -` (the usual spelling of standard output): the table goes to standard output."""
    return not out or str(out) == "-"


def check_output(out: str | Path | None, option: str = "--out", example: str = "scores.csv",
                 run: Path | None = None, inputs: Iterable[str | Path] = ()) -> None:
    """Fail now, not after the work, on an --out that cannot be written, would replace one of a
    run's own files (the --run folder's, or any folder holding a con2 run) or one of the command's
    `inputs` (its images, bundle, the run's data file). Its missing folders are made when it is
    written, so a command that fails first leaves none behind."""
    if to_stdout(out):
        return
    path = Path(out)
    target = path.resolve()
    for given in inputs:
        if given and Path(given).resolve() == target:
            raise ValueError(f"{option} {out} is one of this command's inputs ({given}); writing it would destroy "
                             f"it: give another file name such as {path.parent / example}")
    if path.name in RUN_FILES and (path.parent / "config.json").is_file() and any(
            (path.parent / name).exists() for name in ("model.json", "checkpoint.pt")):
        run = path.parent  # a run, if not the command's own
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a directory; give a file name such as {path / example}")
    if str(out).endswith(("/", os.sep)):  # Path drops the slash: the file would take the folder's name
        raise IsADirectoryError(f"{option} {out} names a folder (it ends in /); give a file name such as "
                                f"{path / example}")
    if path.exists() and not path.is_file():  # /dev/stdout, a FIFO: written in place (files.replacing)
        return
    if run is not None and path.name in RUN_FILES and path.parent.resolve() == Path(run).resolve():
        raise ValueError(f"{option} {out} would replace the run's own {path.name}; give another file name "
                         f"(e.g. {Path(run) / example})")
    folder = nearest_folder(path.parent, option, path)
    # the temporary file is made beside it, and any missing folders inside `folder`
    if not os.access(folder, os.W_OK | os.X_OK):
        made = "" if folder == path.parent else f" (to make {path.parent} in)"
        raise PermissionError(f"{option} {path}: the folder {folder}{made} is not writable")


def names_on_stdout() -> None:
    """Let standard output carry names that are not UTF-8, as their bytes (see write_output): under a
    UTF-8 locale its stream is strict and printing one would fail after all the work. Set once by
    the CLI's main for every command."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")


def write_output(write: Callable[[IO[str]], None], out: str | Path | None) -> None:
    """write(stream) into the file `out` (replaced in one step once complete), or to standard output
    (no `out`, or "-").
    File and class names that are not UTF-8 (their bytes held as lone surrogates, PEP 383) are
    written as those bytes, as the file system has them: a reader decoding with surrogateescape
    gets the very path back, which no escaped form could promise (a name may hold a backslash)."""
    if not to_stdout(out):
        with replacing(Path(out)) as tmp, open(tmp, "w", newline="", errors="surrogateescape") as fh:
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


class ReaderMayLeave:
    """Standard output or error for a command's progress lines (`con2 train 2>&1 | head`): when the
    reader leaves (a closed pipe; a closed terminal, EIO), the lines go nowhere and the work goes on
    (a BrokenPipeError would have ended training, before its model was saved)."""

    def __init__(self, stream: IO[str]):
        self._stream, self._gone = stream, False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._leave(exc)
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._leave(exc)

    def _leave(self, exc: OSError) -> None:
        if exc.errno not in (errno.EPIPE, errno.EIO):  # a full disk under a redirected log is an error
            raise exc
        self._gone = True
        try:  # so the interpreter's own flush at exit does not fail on the closed pipe again
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    def __getattr__(self, name):  # isatty, encoding, fileno...: the stream's
        return getattr(self._stream, name)

