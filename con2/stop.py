"""`Stopped`: a command stopped by SIGTERM (a job scheduler's stop) or SIGHUP (the terminal closed),
taken as Ctrl-C but named in the command's last line. No con2 imports: the CLI's entry point and
training's step loop both raise it."""
from __future__ import annotations

import signal


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken as Ctrl-C: files are replaced whole or not at all, training
    checkpoints, exit 130; str() is the signal's name."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


def stop_signals() -> list:
    """The signals taken as Ctrl-C: SIGTERM, and SIGHUP unless it is ignored already (`nohup con2
    train ...` must go on when the terminal closes)."""
    hangup = getattr(signal, "SIGHUP", None)
    return [signal.SIGTERM] + ([hangup] if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN
                               else [])


def interruption(signum: int) -> KeyboardInterrupt:
    """What a stop asked by signal `signum` raises: Ctrl-C's own KeyboardInterrupt, else Stopped."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)
