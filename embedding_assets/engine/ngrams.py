"""Token n-grams: vectorised hashing and bounded-memory approximate counting.

An n-gram's key is a 64-bit FNV-1a fold over its token ids. Keys of all windows of a batch
are computed with one numpy pass per n-gram length, never one Python object per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = np.uint32(0xFFFFFFFF)
FNV_OFFSET = np.uint64(14695981039346656037)
FNV_PRIME = np.uint64(1099511628211)


@dataclass(frozen=True)
class NgramWindows:
    """Every n-gram window of a batch of tokenised documents."""

    keys: np.ndarray  # uint64
    docs: np.ndarray  # int64, the document each window belongs to
    starts: np.ndarray  # int64, position of the first token in the flat token array
    lengths: np.ndarray  # uint8


def ngram_windows(ids: np.ndarray, offsets: np.ndarray, max_n: int) -> NgramWindows:
    """Hash all n-grams of length 1..max_n that lie inside one document."""
    num_tokens = len(ids)
    num_docs = len(offsets) - 1
    docs = np.repeat(np.arange(num_docs, dtype=np.int64), np.diff(offsets))
    doc_end = offsets[1:][docs]
    tokens = ids.astype(np.uint64)
    h = np.full(num_tokens, FNV_OFFSET, dtype=np.uint64)
    parts: list[tuple[np.ndarray, ...]] = []
    positions = np.arange(num_tokens, dtype=np.int64)
    for n in range(1, max_n + 1):
        m = num_tokens - n + 1
        if m <= 0:
            break
        h = (h[:m] ^ tokens[n - 1 : n - 1 + m]) * FNV_PRIME
        inside = positions[:m] + n <= doc_end[:m]
        starts = positions[:m][inside]
        parts.append((h[inside], docs[:m][inside], starts, np.full(len(starts), n, np.uint8)))
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return NgramWindows(np.empty(0, np.uint64), empty, empty, np.empty(0, np.uint8))
    return NgramWindows(*(np.concatenate(columns) for columns in zip(*parts)))


def ngram_keys(ngrams: np.ndarray) -> np.ndarray:
    """Keys of n-grams given as rows of token ids padded with PAD, as `ngram_windows` makes them."""
    h = np.full(len(ngrams), FNV_OFFSET, dtype=np.uint64)
    for j in range(ngrams.shape[1]):
        present = ngrams[:, j] != PAD
        h[present] = (h[present] ^ ngrams[present, j].astype(np.uint64)) * FNV_PRIME
    return h


def window_tokens(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, max_n: int) -> np.ndarray:
    """The token ids of the given windows as rows padded with PAD."""
    out = np.full((len(starts), max_n), PAD, dtype=np.uint32)
    for j in range(max_n):
        present = lengths > j
        out[present, j] = ids[starts[present] + j]
    return out


def lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `keys` in `sorted_keys`, and whether each is there."""
    pos = np.searchsorted(sorted_keys, keys)
    if len(sorted_keys) == 0:
        return pos, np.zeros(len(keys), dtype=bool)
    found = sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == keys
    return pos, found & (pos < len(sorted_keys))


def unique_per_document(windows: NgramWindows) -> np.ndarray:
    """Indices of the first occurrence of each distinct (document, key) pair."""
    order = np.lexsort((windows.keys, windows.docs))
    keys, docs = windows.keys[order], windows.docs[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]) | (docs[1:] != docs[:-1])
    return order[first]


class NgramCounter:
    """Approximate document frequencies of the most frequent n-grams in bounded memory.

    A batched space-saving summary: at most `capacity` n-grams are tracked. When the table
    overflows, the least frequent entries are evicted and the largest evicted count becomes
    the floor; an n-gram that enters later starts from that floor, so its count is an upper
    bound and `errors` says by how much it may be over.
    """

    def __init__(self, capacity: int, max_n: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.max_n = max_n
        self.keys = np.empty(0, dtype=np.uint64)
        self.counts = np.empty(0, dtype=np.int64)
        self.errors = np.empty(0, dtype=np.int64)
        self.ngrams = np.empty((0, max_n), dtype=np.uint32)
        self.floor = 0
        self.documents = 0
        self.windows = 0

    def update(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        windows = ngram_windows(ids, offsets, self.max_n)
        self.documents += len(offsets) - 1
        self.windows += len(windows.keys)
        first = unique_per_document(windows)
        batch_keys, where, batch_counts = np.unique(
            windows.keys[first], return_index=True, return_counts=True
        )
        pos, known = lookup(self.keys, batch_keys)
        self.counts[pos[known]] += batch_counts[known]

        new = ~known
        new_rows = first[where[new]]
        keys = np.concatenate([self.keys, batch_keys[new]])
        counts = np.concatenate([self.counts, batch_counts[new] + self.floor])
        errors = np.concatenate([self.errors, np.full(new.sum(), self.floor, np.int64)])
        ngrams = np.concatenate([
            self.ngrams,
            window_tokens(ids, windows.starts[new_rows], windows.lengths[new_rows], self.max_n),
        ])
        if len(keys) > self.capacity:
            # Keep the most frequent; ties go to the smaller key so the result is deterministic.
            order = np.lexsort((keys, -counts))
            self.floor = max(self.floor, int(counts[order[self.capacity :]].max()))
            keep = order[: self.capacity]
            keys, counts, errors, ngrams = keys[keep], counts[keep], errors[keep], ngrams[keep]
        order = np.argsort(keys, kind="stable")
        self.keys, self.counts, self.errors, self.ngrams = keys[order], counts[order], errors[order], ngrams[order]

    def most_frequent(self, size: int, min_count: int = 1) -> np.ndarray:
        """Indices into the table of up to `size` n-grams with count >= min_count, most frequent first."""
        order = np.lexsort((self.keys, -self.counts))
        order = order[(self.counts - self.errors)[order] >= min_count]
        return order[:size]


def prefix_keys(ngrams: np.ndarray) -> np.ndarray:
    """Keys of every proper prefix of the given n-grams (rows padded with PAD), deduplicated."""
    lengths = (ngrams != PAD).sum(axis=1)
    parts = []
    for n in range(1, ngrams.shape[1]):
        rows = ngrams[lengths > n].copy()
        rows[:, n:] = PAD
        parts.append(ngram_keys(rows))
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)
