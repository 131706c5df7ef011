"""The encoder's first layer in one pass: n-gram hashing, vocabulary lookup, counting and the
IDF-weighted sum of first-layer rows, per document, with no intermediate arrays.

The numpy path (`ngrams.ngram_windows`, `tfidf.count_matrix`) computes the same counts for
training; this kernel is what `LexicalEmbedder.encode` runs. It releases the GIL, so the
encoder's threads run it side by side. Both of its inner loops are written for memory-level
parallelism, since both are bound by random reads (of the key table, and of first-layer
rows): the table reads of a thousand n-grams are issued before any is branched on, and rows
are summed eight at a time, so the CPU has many cache misses in flight instead of one. An
n-gram is extended only while the table says some vocabulary n-gram starts with it.
"""

from __future__ import annotations

import numba
import numpy as np

from embedding_assets.engine.half import as_float32
from embedding_assets.engine.hashtable import EMPTY, EXTENDS, GOLDEN, KeyTable, column_of, find
from embedding_assets.engine.ngrams import FNV_OFFSET, FNV_PRIME, ngram_keys

_BLOCK = 1024  # token positions whose n-grams are looked up together; their buffers stay in L1


def first_layer_sums(
    ids: np.ndarray,
    offsets: np.ndarray,
    table: KeyTable,
    max_n: int,
    idf: np.ndarray,
    first_layer: np.ndarray,
    unigrams: np.ndarray | None = None,
    lexical: np.ndarray | None = None,
):
    """Per document, the sum over its known n-grams of count * IDF * first-layer row: [docs, hidden] float32.

    `first_layer` is float32 or float16 (see `half`); float16 values are read exactly.
    `unigrams`, from `unigram_entries`, answers single-token lookups for small token ids
    from an array that stays in cache, instead of the table.

    TF-IDF's L2 norm is left out: it is a positive per-row factor, which commutes with the
    ReLU and is removed by the network's next normalisation.

    With `lexical`, a float32 [vocabulary, k] matrix, also each document's L2-normalised
    TF-IDF row times that matrix, [docs, k], from the same lookups: (hidden, lexical_out).
    """
    if first_layer.dtype == np.float16:
        first_layer = first_layer.view(np.uint16)
    if unigrams is None:
        unigrams = np.empty(0, dtype=np.uint64)
    wanted = lexical is not None
    if not wanted:
        lexical = np.empty((len(idf), 0), dtype=np.float32)
    hidden, lexical_out = _sums(ids, offsets, table.slots, table.shift, unigrams, max_n, idf, first_layer, lexical)
    return (hidden, lexical_out) if wanted else hidden


def unigram_entries(table: KeyTable, num_tokens: int) -> np.ndarray:
    """The table's entry for each single-token n-gram (token id < num_tokens), by token id."""
    return table.entries(ngram_keys(np.arange(num_tokens, dtype=np.uint32)[:, None]))


@numba.njit(nogil=True, cache=True, fastmath=True)
def _sums(ids, offsets, slots, shift, unigrams, max_n, idf, first_layer, lexical):
    num_docs = len(offsets) - 1
    hidden = np.zeros((num_docs, first_layer.shape[1]), dtype=np.float32)
    lexical_out = np.zeros((num_docs, lexical.shape[1]), dtype=np.float32)
    counts = np.zeros(first_layer.shape[0], dtype=np.int32)
    longest = 0
    for d in range(num_docs):
        longest = max(longest, offsets[d + 1] - offsets[d])
    starts = np.empty(_BLOCK, dtype=np.int64)  # where each n-gram still being extended starts
    keys = np.empty(_BLOCK, dtype=np.uint64)
    found = np.empty((_BLOCK, 2), dtype=np.uint64)
    seen = np.empty(longest * max_n, dtype=np.int64)  # a document's distinct columns, in order of appearance
    weights = np.empty(longest * max_n, dtype=np.float32)
    for d in range(num_docs):
        end = offsets[d + 1]
        distinct = 0
        for block in range(offsets[d], end, _BLOCK):
            # Level by level: the n-grams of length n from every position of the block are
            # looked up together, and only those the table says extend go on to length n + 1.
            active = min(_BLOCK, end - block)
            for i in range(active):
                starts[i] = block + i
                keys[i] = (FNV_OFFSET ^ np.uint64(ids[block + i])) * FNV_PRIME
            n = 1
            while active:
                for i in range(active):
                    if n == 1 and ids[starts[i]] < len(unigrams):
                        found[i, 0] = keys[i]
                        found[i, 1] = unigrams[ids[starts[i]]]
                    else:
                        slot = np.int64((keys[i] * GOLDEN) >> shift)
                        found[i, 0] = slots[slot, 0]
                        found[i, 1] = slots[slot, 1]
                extended = 0
                for i in range(active):
                    entry = found[i, 1]
                    if entry == EMPTY:
                        continue
                    if found[i, 0] != keys[i]:
                        entry = find(slots, keys[i], shift)
                        if entry == EMPTY:
                            continue
                    column = column_of(entry)
                    if column >= 0:
                        if counts[column] == 0:
                            seen[distinct] = column
                            distinct += 1
                        counts[column] += 1
                    if entry & EXTENDS and n < max_n and starts[i] + n < end:
                        starts[extended] = starts[i]
                        keys[extended] = (keys[i] ^ np.uint64(ids[starts[i] + n])) * FNV_PRIME
                        extended += 1
                active = extended
                n += 1
        for i in range(distinct):
            weights[i] = np.float32(counts[seen[i]]) * idf[seen[i]]
            counts[seen[i]] = 0
        add_rows(hidden[d], first_layer, seen, weights, distinct)
        if lexical.shape[1] and distinct:
            norm = 0.0
            for i in range(distinct):
                norm += weights[i] * weights[i]
            add_rows(lexical_out[d], lexical, seen, weights, distinct)
            lexical_out[d] /= np.float32(np.sqrt(norm))
    return hidden, lexical_out


@numba.njit(nogil=True, cache=True, fastmath=True)
def add_rows(out, rows, columns, weights, count):
    """out += sum of weights[i] * rows[columns[i]] for i < count; rows float32, or float16 bits as uint16."""
    v = as_float32
    i = 0
    while i + 8 <= count:
        r0, r1, r2, r3 = rows[columns[i]], rows[columns[i + 1]], rows[columns[i + 2]], rows[columns[i + 3]]
        r4, r5, r6, r7 = rows[columns[i + 4]], rows[columns[i + 5]], rows[columns[i + 6]], rows[columns[i + 7]]
        w0, w1, w2, w3, w4, w5, w6, w7 = weights[i], weights[i + 1], weights[i + 2], weights[i + 3], weights[i + 4], weights[i + 5], weights[i + 6], weights[i + 7]
        for j in range(len(out)):
            out[j] += (w0 * v(r0[j]) + w1 * v(r1[j]) + w2 * v(r2[j]) + w3 * v(r3[j])) + (w4 * v(r4[j]) + w5 * v(r5[j]) + w6 * v(r6[j]) + w7 * v(r7[j]))
        i += 8
    while i < count:
        r0, w0 = rows[columns[i]], weights[i]
        for j in range(len(out)):
            out[j] += w0 * v(r0[j])
        i += 1
