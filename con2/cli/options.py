"""The command line's shared argument types and checks (argparse types name what they expected)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import MAX_VIEWS, is_seed


def checked(convert, ok, expected: str):
    """An argparse type: convert the text, then check it, naming what was expected."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v!r}")
        return v
    return parse


view_count = checked(int, lambda v: v == 0 or (v % 2 == 0 and 2 <= v <= MAX_VIEWS),
                     f"--views 0 (one deterministic view) or an even number 2..{MAX_VIEWS}")
unit_fraction = checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
positive_int = checked(int, lambda v: v >= 1, "a positive integer")
positive_fraction = checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
seed_int = checked(int, is_seed, "an integer in [0, 2**63), as con2 train's --seed")
# an empty path meant standard output, the default path or the current folder, unsaid
named_path = checked(str, lambda v: v.strip() != "", "a path, not an empty one")


def check_bundle_file(path: Path) -> None:
    """--detector PATH (predict, info): a regular file, else an error naming what it is."""
    if path.is_dir():
        raise IsADirectoryError(f"--detector {path} is a directory; give the file con2 export wrote")
    if path.exists() and not path.is_file():
        raise ValueError(f"--detector {path} is not a regular file (a device or a FIFO); give the file con2 export wrote")
    if not path.is_file():
        raise FileNotFoundError(f"--detector {path}: no such file (con2 export --out writes one)")
