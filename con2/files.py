"""Writing a run's files so that an interrupted write never leaves a half-written one, reading its
JSON files with an error that names a damaged one, and the digest that finds a damaged weights file."""
from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path


# What training and `con2 evaluate` write into a run folder (tests/test_cli.py checks a real one):
# an --out of another command must not replace them.
RUN_FILES = ("config.json", "model.json", "model.safetensors", "checkpoint.pt", "metrics.jsonl", "metrics.json",
             "scores.csv", "scores_views.npz", ".lock")


def nearest_folder(path: Path, option: str, out) -> Path:
    """The nearest of `path` and its parents that exists (where the missing ones will be made), checked
    to be a folder; else an error naming the option and its value `out`."""
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {out}: {folder} is a file, not a folder")
    return folder


@contextmanager
def replacing(path: str | Path, make_folder: bool = True):
    """Yield a temporary path beside `path` to write to; once the block succeeds it replaces
    `path` in one step (os.replace), and if the block fails it is removed and `path` is untouched.
    A link to a file is written through (its target replaced, the link kept). The temporary name
    is this writer's own, so two processes writing one file (two `con2 evaluate` of a run) never
    write into each other's; ones left by a killed writer are removed. `make_folder=False`: the
    folder must still exist (a run's, which a training must not silently make again elsewhere
    after the folder was moved or deleted)."""
    path = Path(path)
    if path.is_symlink() and path.resolve().is_file():
        path = path.resolve()
    if path.is_dir():  # found now, not by os.replace after the work, naming the .tmp file
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    if path.exists() and not path.is_file():  # /dev/stdout, a FIFO: written in place, never replaced
        yield path
        return
    if not make_folder and not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} is gone (moved or deleted while it was being written): "
                                f"{path.name} was not written")
    path.parent.mkdir(parents=True, exist_ok=True)  # an --out in a new folder (cli.output checked it)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # the mode a plain open() gives: the file's own if it exists, else 0666 & ~umask (read from a
        # file the kernel creates with it, as os.umask can only be read by changing it); set again
        # below because some writers make their own file (safetensors' save_file: 0600)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = (path if path.is_file() else tmp).stat().st_mode & 0o7777
        try:
            yield tmp
        except Exception as exc:  # a full disk, as each writer words it (torch: "unexpected pos 1523456 vs ...")
            if _out_of_space(exc, tmp.parent):
                raise _no_space(path) from exc
            raise
        os.chmod(tmp, mode)
        _sync(tmp)  # the new bytes reach the disk before the name moves: a crash keeps the old file or the new
        os.replace(tmp, path)
        _sync(path.parent)  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)


def _out_of_space(exc: Exception, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):  # safetensors' message
        return True
    try:  # torch's zip writer says only that a write came up short
        return shutil.disk_usage(folder).free < 2**16
    except OSError:
        return False


def _no_space(path: Path) -> OSError:
    exc = OSError(f"no space left on the device of {path.parent} (or the quota is used up): {path.name} was not "
                  "written" + (" and the previous one is kept" if path.exists() else "") + "; free some space")
    exc.errno = errno.ENOSPC
    return exc


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of `path` whose writer is no longer running (killed before its
    `finally`): NAME.PID-TOKEN.tmp, and the NAME.tmp of older con2 (one temporary name per file)."""
    for tmp in path.parent.glob(glob.escape(path.name) + ".*tmp"):
        pid = tmp.name[len(path.name) + 1:].partition("-")[0]
        if tmp.name == path.name + ".tmp" or (pid.isdigit() and not _running(int(pid))):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sync(path: Path) -> None:
    """fsync a file or folder (a read-only descriptor is enough on Linux); where a file system
    cannot (some network mounts refuse it on folders), the write stays as durable as it can be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def utf8_name(path: str | Path):
    """A name of the existing file `path` for readers that take only UTF-8 paths (safetensors'
    safe_open): the path itself, or where its name is not UTF-8 (bytes held as lone surrogates,
    PEP 383) the link to the opened file in /proc/self/fd (Linux)."""
    name = str(path)
    try:
        name.encode()
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name


def read_safetensors(path: str | Path) -> tuple[dict, dict]:
    """(metadata, tensors) of the safetensors file `path`, whatever its name's encoding; safetensors'
    own errors (a truncated or garbage file) are left to the caller to word."""
    from safetensors import safe_open

    with utf8_name(path) as name, safe_open(name, framework="pt") as fh:
        return fh.metadata() or {}, {k: fh.get_tensor(k) for k in fh.keys()}


def write_text(path: str | Path, text: str, make_folder: bool = True) -> None:
    """`text` into `path`; a file or class name that is not UTF-8 (its bytes held as lone surrogates,
    PEP 383) is written as those bytes, the name as the file system has it."""
    with replacing(path, make_folder) as tmp:
        tmp.write_text(text, errors="surrogateescape")


def write_json(path: str | Path, obj, make_folder: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2), make_folder)


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


@contextmanager
def folder_lock(folder: Path, holder: str):
    """Hold an exclusive lock on `folder` (a `.lock` file in it) or fail at once naming the folder:
    two trainings into one run folder would interleave their checkpoints and metrics lines."""
    import fcntl

    fd = os.open(Path(folder) / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{folder} is in use: another {holder} is writing it; wait for it to end, or pick "
                               "another --out") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def folder_in_use(folder: Path) -> bool:
    """Whether a folder_lock on `folder` is held now (by a training writing the run); the lock file
    is not made where there is none."""
    import fcntl

    try:
        fd = os.open(Path(folder) / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases a shared lock taken above


def check_writable_folder(folder: Path, why: str) -> None:
    """An error before the work, not after it, when `folder` cannot take the files `why` writes
    (a read-only mount, a folder of another user)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder} is not writable, and {why}; copy the run somewhere writable")


def tensor_digest(tensors: dict, meta: dict) -> str:
    """SHA-256 over the metadata (less the digest itself, "sha256") and every tensor's name, dtype,
    shape and bytes: what a safetensors file written by con2 records so that damage is found."""
    import hashlib

    import torch

    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
