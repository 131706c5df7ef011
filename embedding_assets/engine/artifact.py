"""The model file: one safetensors file whose header carries the JSON config.

Only arrays and JSON are read, so a model file can never run code. The config records the
format version and a SHA-256 over the config and every tensor; loading recomputes it and
checks every shape, and says which part is wrong.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from embedding_assets.engine.errors import ArtifactError

FORMAT = "embedding_assets.lexical_embedder"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024


def content_hash(config: dict, tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    core = {k: v for k, v in config.items() if k != "sha256"}
    digest.update(json.dumps(core, sort_keys=True).encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8))  # the bytes of tobytes(), without a copy
    return digest.hexdigest()


def dump(config: dict, tensors: dict[str, np.ndarray], fmt: str = FORMAT) -> bytes:
    config = {**config, "format": fmt, "format_version": FORMAT_VERSION}
    config["sha256"] = content_hash(config, tensors)
    return save_tensors(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        metadata={"config": json.dumps(config, sort_keys=True)},
    )


def _header(data: bytes) -> dict:
    if len(data) < 8:
        raise ArtifactError(f"not a safetensors file: only {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise ArtifactError("not a safetensors file: header length is out of range (truncated or another format)")
    try:
        return json.loads(data[8 : 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"not a safetensors file: header is not JSON ({exc})") from exc


def parse(data: bytes, fmt: str = FORMAT) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and tensors of a model file, after checking format, version and hash."""
    header = _header(data)
    try:
        config = json.loads(header.get("__metadata__", {})["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ArtifactError("the file has no embedded config; it was not written by this project") from exc
    if config.get("format") != fmt:
        raise ArtifactError(f"format is {config.get('format')!r}, expected {fmt!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"format version {version!r} is newer than this build reads (up to {FORMAT_VERSION}); upgrade embedding_assets"
        )
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ArtifactError(f"tensors are unreadable: {exc}") from exc
    if config.get("sha256") != content_hash(config, tensors):
        raise ArtifactError("content hash does not match: the file was modified after it was written")
    return config, tensors


def require(tensors: dict[str, np.ndarray], name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """The named tensor, checked for presence, dtype and shape (None in `shape` matches any size)."""
    if name not in tensors:
        raise ArtifactError(f"tensor {name!r} is missing")
    array = tensors[name]
    if array.dtype != dtype:
        raise ArtifactError(f"tensor {name!r} has dtype {array.dtype}, expected {np.dtype(dtype)}")
    if len(array.shape) != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        raise ArtifactError(f"tensor {name!r} has shape {array.shape}, expected {shape}")
    return array
