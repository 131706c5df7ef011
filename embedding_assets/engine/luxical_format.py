"""Read and write luxical's v1 `.npz` embedder files with numpy alone (never unpickling).

The file holds: `tokenizer` (tokenizer.json as uint8 bytes), `version`, `recognized_ngrams`
(token ids padded with the token dtype's maximum), `ngram_hash_to_ngram_idx_keys/values`
(luxical's n-gram hash -> column), `idf_values`, `num_nn_layers` and `nn_layer_{i}`, each
stored (out, in). Luxical hashes an n-gram with FNV-1a over the bytes of its padded row and
looks columns up through that map; we look n-grams up by our own key, so the columns are
re-ordered to our vocabulary order on the way in, and hashed luxical's way on the way out.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from embedding_assets.engine.errors import ArtifactError
from embedding_assets.engine.ngrams import PAD, ngram_keys

LUXICAL_FORMAT_VERSION = 1
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


def luxical_hash(ngrams: np.ndarray) -> np.ndarray:
    """Luxical's n-gram hash: FNV-1a over the little-endian bytes of each padded row, as int64."""
    rows = np.ascontiguousarray(ngrams)
    as_bytes = rows.view(np.uint8).reshape(len(rows), -1)
    h = np.full(len(rows), _FNV_OFFSET, dtype=np.uint64)
    for j in range(as_bytes.shape[1]):
        h ^= as_bytes[:, j].astype(np.uint64)
        h *= _FNV_PRIME
    return h.view(np.int64)


def _as_uint32_padded(ngrams: np.ndarray) -> np.ndarray:
    if ngrams.ndim != 2 or ngrams.dtype.kind not in "ui":
        raise ArtifactError(f"recognized_ngrams must be an integer matrix, got {ngrams.dtype} {ngrams.shape}")
    pad = np.iinfo(ngrams.dtype).max
    present = ngrams != pad
    if np.any(ngrams[present] < 0) or np.any(ngrams[present] >= PAD):
        raise ArtifactError("recognized_ngrams has token ids outside the uint32 range")
    out = np.full(ngrams.shape, PAD, dtype=np.uint32)
    out[present] = ngrams[present]
    return out


def read_luxical(path: str | os.PathLike | io.BytesIO) -> dict:
    """The parts of a luxical file in our orientation and vocabulary order.

    Returns tokenizer_json, ngrams (uint32, PAD-padded, sorted by our key), idf and layers
    (in, out), all float32.
    """
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"not a luxical .npz file: {exc}") from exc
    with npz:
        def get(name: str) -> np.ndarray:
            if name not in npz.files:
                raise ArtifactError(f"luxical file has no {name!r} array")
            try:
                return npz[name]
            except ValueError as exc:  # object arrays, which would need unpickling
                raise ArtifactError(f"luxical file array {name!r} is unreadable without pickle: {exc}") from exc

        version = int(get("version").item())
        if version != LUXICAL_FORMAT_VERSION:
            raise ArtifactError(f"luxical format version {version} is not supported (only {LUXICAL_FORMAT_VERSION})")
        tokenizer_json = get("tokenizer").astype(np.uint8).tobytes().decode("utf-8")
        recognized = get("recognized_ngrams")
        keys = get("ngram_hash_to_ngram_idx_keys").astype(np.int64)
        columns = get("ngram_hash_to_ngram_idx_values").astype(np.int64)
        idf = get("idf_values").astype(np.float32)
        num_layers = int(get("num_nn_layers").reshape(-1)[0])
        layers = [get(f"nn_layer_{i}").astype(np.float32) for i in range(num_layers)]

    if num_layers < 1:
        raise ArtifactError("luxical file has no network layers")
    vocab_size = layers[0].shape[1]
    if idf.shape != (vocab_size,):
        raise ArtifactError(f"idf_values has shape {idf.shape}, first layer reads {vocab_size} columns")
    if keys.shape != columns.shape or np.any(columns < 0) or np.any(columns >= vocab_size):
        raise ArtifactError("the n-gram hash map has mismatched keys and values or columns out of range")

    # Find the n-gram behind each hash-map entry by hashing the recognized rows luxical's way.
    row_hashes = luxical_hash(recognized)
    order = np.argsort(row_hashes, kind="stable")
    pos = np.searchsorted(row_hashes[order], keys)
    pos = np.minimum(pos, len(order) - 1)
    if len(order) == 0 or not np.array_equal(row_hashes[order][pos], keys):
        raise ArtifactError("some n-gram hashes of the map match no recognized n-gram")
    ngrams = _as_uint32_padded(recognized[order[pos]])

    by_our_key = np.argsort(ngram_keys(ngrams), kind="stable")
    cols = columns[by_our_key]
    return {
        "tokenizer_json": tokenizer_json,
        "ngrams": ngrams[by_our_key],
        "idf": np.ascontiguousarray(idf[cols]),
        "layers": [np.ascontiguousarray(layers[0].T[cols])] + [np.ascontiguousarray(w.T) for w in layers[1:]],
    }


def write_luxical(
    path: str | os.PathLike | io.BytesIO,
    tokenizer_json: str,
    ngrams: np.ndarray,
    idf: np.ndarray,
    layers: Sequence[np.ndarray],
) -> None:
    """Write a luxical v1 file; column i of the first layer is n-gram row i."""
    if len(layers) < 2:
        raise ArtifactError("luxical's network needs at least two layers (input and output)")
    if ngrams.dtype != np.uint32:
        raise ArtifactError(f"n-grams must be uint32, got {ngrams.dtype}")
    hashes = luxical_hash(ngrams)
    if len(np.unique(hashes)) != len(hashes):
        raise ArtifactError("two n-grams share a luxical hash; luxical could not tell them apart")
    arrays = {
        "tokenizer": np.frombuffer(tokenizer_json.encode("utf-8"), dtype=np.uint8),
        "version": np.int64(LUXICAL_FORMAT_VERSION),
        "recognized_ngrams": ngrams,
        "ngram_hash_to_ngram_idx_keys": hashes,
        "ngram_hash_to_ngram_idx_values": np.arange(len(ngrams), dtype=np.uint32),
        "idf_values": np.asarray(idf, dtype=np.float32),
        "num_nn_layers": np.array([len(layers)]),
    }
    arrays.update({f"nn_layer_{i}": np.ascontiguousarray(np.asarray(w, dtype=np.float32).T) for i, w in enumerate(layers)})
    np.savez(path, allow_pickle=False, **arrays)
