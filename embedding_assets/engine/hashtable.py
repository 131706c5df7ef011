"""A read-only open-addressing hash table from 64-bit n-gram keys to vocabulary columns.

Each slot holds its key and its column side by side (16 bytes), so a probe touches one cache
line, not one in a key array and another in a column array. Linear probing at a load factor
of at most 1/2 keeps a 520k-n-gram table at 16 MiB, inside a server's L3 cache, with about
1.5 probes per hit and 2.5 per miss.
"""

from __future__ import annotations

import numba
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # column field of an unused slot


class KeyTable:
    def __init__(self, keys: np.ndarray):
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        bits = max(4, int(np.ceil(np.log2(max(2 * len(keys), 1)))))
        self.shift = np.uint64(64 - bits)
        self.slots = np.empty((1 << bits, 2), dtype=np.uint64)
        self.slots[:, 0] = 0
        self.slots[:, 1] = EMPTY
        _insert(self.slots, keys, self.shift)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The column of each key, or -1 where the key is not in the table."""
        return _lookup(self.slots, np.ascontiguousarray(keys, dtype=np.uint64), self.shift)


@numba.njit(nogil=True, cache=True)
def find(slots: np.ndarray, key: np.uint64, shift: np.uint64) -> int:
    mask = slots.shape[0] - 1
    slot = np.int64((key * GOLDEN) >> shift)
    while slots[slot, 1] != EMPTY:
        if slots[slot, 0] == key:
            return np.int64(slots[slot, 1])
        slot = (slot + 1) & mask
    return -1


@numba.njit(nogil=True, cache=True)
def _insert(slots: np.ndarray, keys: np.ndarray, shift: np.uint64) -> None:
    mask = slots.shape[0] - 1
    for column in range(len(keys)):
        slot = np.int64((keys[column] * GOLDEN) >> shift)
        while slots[slot, 1] != EMPTY:
            slot = (slot + 1) & mask
        slots[slot, 0] = keys[column]
        slots[slot, 1] = np.uint64(column)


@numba.njit(nogil=True, cache=True)
def _lookup(slots: np.ndarray, keys: np.ndarray, shift: np.uint64) -> np.ndarray:
    out = np.empty(len(keys), dtype=np.int32)
    for i in range(len(keys)):
        out[i] = find(slots, keys[i], shift)
    return out
