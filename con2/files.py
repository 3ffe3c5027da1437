"""Writing a run's files so that an interrupted write never leaves a half-written one, and reading
its JSON files with an error that names a damaged one."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path):
    """Yield a temporary path beside `path` to write to; once the block succeeds it replaces
    `path` in one step (os.replace), and if the block fails it is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2))


def read_json(path: str | Path) -> dict:
    """The JSON object in `path`; a damaged file (cut short, not JSON) is a ValueError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is corrupt (not valid JSON: {exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is corrupt (a JSON {type(data).__name__}, not an object)")
    return data
