"""The model file: one safetensors file whose header carries the JSON config.

Only arrays and JSON are read, so a model file can never run code. The config records the
format version and a SHA-256 over the config and every tensor; loading recomputes it and
checks every shape, and says which part is wrong.

Reading makes no copy of the tensors: they are views into the buffer, and a file is mapped
into memory (`parse_file`), so loading a model costs about its file size in memory, not twice.
"""

from __future__ import annotations

import hashlib
import json
import struct

import os

import numpy as np
from safetensors.numpy import save as save_tensors

from embedding_assets.engine.errors import ArtifactError

FORMAT = "embedding_assets.lexical_embedder"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "F16": np.float16,
    "U32": np.uint32, "I32": np.int32, "F32": np.float32, "U64": np.uint64, "I64": np.int64, "F64": np.float64,
}


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


def _header(data) -> dict:
    if len(data) < 8:
        raise ArtifactError(f"not a safetensors file: only {len(data)} bytes")
    (size,) = struct.unpack("<Q", bytes(data[:8]))
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise ArtifactError("not a safetensors file: header length is out of range (truncated or another format)")
    try:
        header = json.loads(bytes(data[8 : 8 + size]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"not a safetensors file: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ArtifactError("not a safetensors file: header is not a JSON object")
    return header


def _tensor_views(data: np.ndarray, header: dict) -> dict[str, np.ndarray]:
    """Each tensor as a view into `data` (uint8), after checking its dtype, shape and byte range."""
    (size,) = struct.unpack("<Q", bytes(data[:8]))
    start, available = 8 + size, len(data) - 8 - size
    tensors, ranges = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"tensors are unreadable: tensor {name!r} has a bad header entry ({exc!r})") from exc
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= available or end - begin != count * dtype.itemsize:
            raise ArtifactError(f"tensors are unreadable: tensor {name!r} of shape {shape} does not fit bytes {begin}..{end} of {available}")
        ranges.append((begin, end, name))
        view = data[start + begin : start + end].view(dtype)
        tensors[name] = (view if view.flags.aligned else view.copy()).reshape(shape)
    ranges.sort()
    for (_, end, name), (begin, _, other) in zip(ranges, ranges[1:]):
        if begin < end:
            raise ArtifactError(f"tensors are unreadable: tensors {name!r} and {other!r} overlap")
    return tensors


def parse(data, fmt: str = FORMAT) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and tensors of a model file's bytes (or a uint8 array over them), after checking format, version and hash.

    The tensors are views into `data`, without a copy.
    """
    if not isinstance(data, np.ndarray):
        # One writable copy: torch and the compiled kernels take writable arrays only.
        data = np.frombuffer(bytearray(data), dtype=np.uint8)
    header = _header(data)
    config = _config(header, fmt)
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"format version {version!r} is newer than this build reads (up to {FORMAT_VERSION}); upgrade embedding_assets"
        )
    tensors = _tensor_views(data, header)
    if config.get("sha256") != content_hash(config, tensors):
        raise ArtifactError("content hash does not match: the file was modified after it was written")
    return config, tensors


def read_config(read_range, fmt: str = FORMAT) -> dict:
    """The JSON config of a model file from its safetensors header alone: `read_range(start, length)`
    returns bytes of the file, and only the 8-byte length and the header are read. The tensors, and
    so the content hash, are not checked: for a shape or a recorded value, not for loading."""
    prefix = read_range(0, 8)
    if len(prefix) < 8:
        raise ArtifactError(f"not a safetensors file: only {len(prefix)} bytes")
    (size,) = struct.unpack("<Q", prefix)
    if size > MAX_HEADER_BYTES:
        raise ArtifactError("not a safetensors file: header length is out of range (truncated or another format)")
    return _config(_header(prefix + read_range(8, size)), fmt)


def _config(header: dict, fmt: str) -> dict:
    """The project's JSON config from a safetensors header, refused when absent or of another format."""
    try:
        config = json.loads(header.get("__metadata__", {})["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ArtifactError("the file has no embedded config; it was not written by this project") from exc
    if config.get("format") != fmt:
        raise ArtifactError(f"format is {config.get('format')!r}, expected {fmt!r}")
    return config


def parse_file(path: str | os.PathLike, fmt: str = FORMAT) -> tuple[dict, dict[str, np.ndarray]]:
    """`parse` of a local file mapped into memory: pages are read as the tensors are touched, and never copied.

    The mapping is copy-on-write, so the arrays are writable (as numba's compiled kernels expect)
    while a write, were there one, would never reach the file.
    """
    if os.path.getsize(path) == 0:
        raise ArtifactError("not a safetensors file: only 0 bytes")
    return parse(np.asarray(np.memmap(path, dtype=np.uint8, mode="c")), fmt)


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
