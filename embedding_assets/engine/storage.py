"""Atomic writes and plain reads of local paths and fsspec URLs (s3://...)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import fsspec


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
