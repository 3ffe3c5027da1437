"""A detector bundle as a file: one safetensors file of tensors, with JSON metadata (format, con2
version, the detector's params and state) and a SHA-256 over both. Writing replaces the file in
one step; reading never unpickles and refuses another format, another con2 version, or contents
that do not match the digest. The digest detects corruption and edits by tools that do not know to
recompute it; it is not a signature. What the tensors and the state mean is con2.detector's job."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from . import __version__
from .files import read_safetensors, replacing, tensor_digest, utf8_name

BUNDLE_FORMAT = "con2-detector/1"
# Paths that name a process's standard streams: a bundle written "to" one would replace the link
STREAMS = re.compile(r"/dev/(fd/|stdin$|stdout$|stderr$)|/proc/(self|thread-self|\d+)/fd/")


class BundleError(ValueError):
    """A detector bundle cannot be loaded: wrong format or version, or tampered with."""


def _as_path(path, verb: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{verb} takes the bundle's path (a str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def bundle_path(path: str | Path) -> Path:
    """The file a bundle is written to at `path` (a link's target file, the link kept), checked to be
    one that can be replaced in one step; else an error naming it, before any work."""
    path = _as_path(path, "save")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name such as {path / 'detector.safetensors'}")
    link = os.readlink(path) if path.is_symlink() else ""
    if STREAMS.match(os.path.abspath(path)) or STREAMS.match(link):
        raise ValueError(f"{path} is a standard stream; a bundle is a binary file written in one step: "
                         "give a file path")
    if path.is_symlink() and path.resolve().is_file():
        path = path.resolve()
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path} is not a regular file (a device, a FIFO or a dangling link); give a file path")
    return path


def write_bundle(path: str | Path, tensors: dict, params: dict, state: dict) -> Path:
    """Write `tensors` with the params and state as the header's JSON (see the module docstring)."""
    from safetensors.torch import save_file

    path = bundle_path(path)
    meta = {"format": BUNDLE_FORMAT, "con2_version": __version__,
            "params": json.dumps(params, sort_keys=True, default=_numpy_scalar),
            "state": json.dumps(state, sort_keys=True)}
    meta["sha256"] = tensor_digest(tensors, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_bundle(path: str | Path) -> tuple[dict, dict, dict]:
    """(params, state, tensors) of a bundle written by write_bundle, checked; BundleError otherwise."""
    path = _as_path(path, "load")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a detector bundle: a training run's folder is read by "
                                "Con2Detector.from_run(folder), or made a bundle with con2 export")
    if not path.is_file():
        raise FileNotFoundError(f"no detector bundle at {path}")
    try:
        meta, tensors = read_safetensors(path)
    except Exception as exc:
        raise BundleError(f"{path} is not a readable safetensors bundle ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        run = (" (a run's weights: commands that take a run take its folder with --run; make a bundle of it with con2 export)"
               if str(meta.get("format", "")).startswith("con2-model") else "")
        raise BundleError(f"{path} is not a con2 detector bundle (format {meta.get('format')!r}, "
                          f"expected {BUNDLE_FORMAT!r}){run}")
    if meta.get("con2_version") != __version__:
        raise BundleError(f"{path} was written by con2 {meta.get('con2_version')}, this is con2 {__version__}; "
                          f"{_remake_advice(meta)}")
    if meta.get("sha256") != tensor_digest(tensors, meta):
        raise BundleError(f"{path} has been modified since it was saved: its SHA-256 does not match its contents")
    try:
        return json.loads(meta["params"]), json.loads(meta["state"]), tensors
    except (KeyError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is an inconsistent con2 bundle: {type(exc).__name__}: {exc}") from exc


def is_bundle(path: Path) -> bool:
    """Whether `path` is a con2 detector bundle (its header says so; contents not checked)."""
    from safetensors import safe_open

    try:
        with utf8_name(path) as name, safe_open(name, framework="pt") as fh:
            return (fh.metadata() or {}).get("format") == BUNDLE_FORMAT
    except Exception:  # not a safetensors file at all
        return False


def _remake_advice(meta: dict) -> str:
    """How to get a bundle of this con2 version: export its run again, or refit."""
    try:
        run = (json.loads(meta.get("state", "{}")).get("source_run") or {}).get("run")
    except (ValueError, AttributeError):
        run = None
    return (f"export its run ({run}) again with this version: con2 export --run RUN --out FILE" if run else
            "refit the detector with this version")


def _numpy_scalar(value):
    """json.dumps default: numpy scalars (np.int64(4) views, ...) as Python numbers, paths (out) as str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
