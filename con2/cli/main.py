"""`con2` entry point: builds the parser from each command module's register()."""
from __future__ import annotations

import argparse
import signal
import sys
import warnings

from .. import __version__
from ..progress import silenced
from ..stop import Stopped, stop_signals
from .output import ReaderGone, ReaderMayLeave, names_on_stdout

# Commands whose result is a table on standard output: a reader leaving early ends them (exit 141,
# write_output). The others' standard output carries progress and a summary after the work is saved,
# which must not stop the work when its reader leaves (`con2 sweep ... | head`).
TABLE_COMMANDS = ("score", "predict")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")  # "con2 evaluate: error: ...", as the commands' own


def build_parser() -> argparse.ArgumentParser:
    from . import detect, train_cmd

    parser = _Parser(prog="con2", description="Con2 self-supervised image anomaly detection")
    parser.add_argument("--version", action="version", version=f"con2 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train_cmd.register(sub)
    detect.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C before the command started: as quiet as during it
        return 130
    names_on_stdout()
    with warnings.catch_warnings():
        if not getattr(args, "debug", False):  # one line per warning, like the errors; --debug keeps the source line
            warnings.showwarning = lambda message, category, *rest, **kw: print(
                f"con2 {args.command}: warning: {message}", file=sys.stderr)
        return _run(args)


def _stop_on_signal(signum, frame):
    raise Stopped(signum)


def _run(args) -> int:
    previous = {}
    try:
        for sig in stop_signals():  # training's step loop sets its own while it runs
            previous[sig] = signal.signal(sig, _stop_on_signal)
    except ValueError:  # not the main thread (main() called from a worker thread): left as they are
        pass
    streams = sys.stdout, sys.stderr
    sys.stderr = ReaderMayLeave(sys.stderr)  # progress and warnings: `2>&1 | head` must not stop the work
    if args.command not in TABLE_COMMANDS:
        sys.stdout = ReaderMayLeave(sys.stdout)
    try:
        with silenced(getattr(args, "quiet", False)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # a line for the log of a job that was stopped
        print(f"con2 {args.command}: {f'stopped by {exc}' if isinstance(exc, Stopped) else 'interrupted'}",
              file=sys.stderr, flush=True)
        return 130
    except ReaderGone:  # `con2 score ... | head`: the reader left, nothing is wrong
        return 141
    except (ValueError, OSError, TypeError, RuntimeError, FloatingPointError, MemoryError) as exc:
        if getattr(args, "debug", False):
            raise
        what = str(exc)
        # torch's CPU allocator raises a RuntimeError ("DefaultCPUAllocator: can't allocate memory: ...")
        if isinstance(exc, MemoryError) or "can't allocate memory" in what:
            smaller = ("a smaller --batch-size, --width or --image-size" if args.command in ("train", "sweep", "demo")
                       else "fewer --views, a smaller --batch-size or a smaller data set")
            what = f"out of memory ({what.splitlines()[0] if what else 'MemoryError'}); use {smaller}"
        print(f"con2 {args.command}: error: {what}", file=sys.stderr)
        return 2
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, ReaderMayLeave):  # a table command's own stdout: write_output's
                stream.flush()
        sys.stdout, sys.stderr = streams
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
