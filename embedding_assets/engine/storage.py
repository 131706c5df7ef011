"""Atomic writes and plain reads of local paths and fsspec URLs (s3://...)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import fsspec


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def temp_file(path: Path, directory: Path | None = None) -> tuple[int, str]:
    """A new temporary file for writing `path`: hidden, and named after its writer (host and pid).

    It lives beside the target (same filesystem, so the final rename is atomic) unless
    `directory` says otherwise; the name lets a later writer remove the leftovers of a killed one.
    Beside the target it has the mode the umask gives a new file, which the output keeps.
    """
    owner = f"{socket.gethostname()}-{os.getpid()}"
    fd, name = tempfile.mkstemp(dir=directory or path.parent, prefix=f".{path.name}.{owner}.", suffix=".tmp")
    if directory is None:
        # mkstemp makes the file owner-only; the output it becomes gets the mode any new file would.
        os.fchmod(fd, 0o666 & ~process_umask())
    return fd, name


def process_umask() -> int:
    """The process's file-mode creation mask, read without changing it (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def remove_orphaned_temps(path: Path) -> list[Path]:
    """Remove the temporary files of `path` left by writers on this host that are no longer running."""
    removed = []
    host = socket.gethostname()
    prefix = f".{path.name}."
    for candidate in path.parent.glob(".*.tmp") if path.parent.is_dir() else []:
        if not candidate.name.startswith(prefix):
            continue
        owner = candidate.name[len(prefix) :].rsplit(".", 2)[0]
        writer_host, _, pid = owner.rpartition("-")
        if writer_host == host and pid.isdigit() and not _running(int(pid)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes_atomic(path: str | os.PathLike, data: bytes, **storage_options) -> None:
    """Write `data` so that readers see the old content or the new, never a part.

    Locally: a temporary file in the same directory, fsynced, then renamed over the target.
    Object stores: `pipe_file`, one PUT (or on s3fs, for large data, a multipart upload that
    is aborted on failure). Not a writable file object: closing one after an error commits
    whatever was buffered.
    """
    if is_url(path):
        fs, target = fsspec.core.url_to_fs(str(path), **storage_options)
        fs.pipe_file(target, data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(path)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_bytes(path: str | os.PathLike, **storage_options) -> bytes:
    if is_url(path):
        fs, target = fsspec.core.url_to_fs(str(path), **storage_options)
        return fs.cat_file(target)
    return Path(path).read_bytes()
