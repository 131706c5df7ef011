"""A read-only open-addressing hash table from 64-bit n-gram keys to vocabulary columns.

Lookups are vectorised: one gather per probe round over the keys still unresolved, so a
batch of window keys costs about one random memory access each instead of the ~17 of a
binary search over the sorted vocabulary keys.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class KeyTable:
    def __init__(self, keys: np.ndarray):
        keys = np.asarray(keys, dtype=np.uint64)
        bits = max(4, int(np.ceil(np.log2(max(2 * len(keys), 1)))) + 1)  # load factor <= 1/4
        self.shift = np.uint64(64 - bits)
        self.mask = np.int64((1 << bits) - 1)
        self.keys = np.zeros(1 << bits, dtype=np.uint64)
        self.columns = np.full(1 << bits, -1, dtype=np.int32)
        pending = np.arange(len(keys), dtype=np.int64)
        slots = self._slots(keys)
        while len(pending):
            free = self.columns[slots] < 0
            # Of the keys aiming at the same free slot, the first takes it; the rest move on.
            _, first = np.unique(slots[free], return_index=True)
            placed = np.flatnonzero(free)[first]
            self.keys[slots[placed]] = keys[pending[placed]]
            self.columns[slots[placed]] = pending[placed].astype(np.int32)
            stay = np.ones(len(pending), dtype=bool)
            stay[placed] = False
            pending, slots = pending[stay], (slots[stay] + 1) & self.mask

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _GOLDEN) >> self.shift).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The column of each key, or -1 where the key is not in the table."""
        out = np.full(len(keys), -1, dtype=np.int32)
        todo = np.arange(len(keys), dtype=np.int64)
        slots = self._slots(keys)
        query = keys
        while len(todo):
            cols = self.columns[slots]
            hit = self.keys[slots] == query
            out[todo[hit & (cols >= 0)]] = cols[hit & (cols >= 0)]
            more = ~hit & (cols >= 0)
            todo, slots, query = todo[more], (slots[more] + 1) & self.mask, query[more]
        return out
