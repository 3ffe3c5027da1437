"""`con2` entry point: builds the parser from each command module's register()."""
from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from .output import ReaderGone, names_on_stdout


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


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a job scheduler's stop, as Ctrl-C: files replaced whole or not at all, exit 130


def _run(args) -> int:
    import signal

    try:
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # training's step loop sets its own
    except ValueError:  # not the main thread (main() called from a worker thread): left as it is
        previous = None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
