"""The n-gram vocabulary, IDF, and L2-normalised TF-IDF rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from embedding_assets.engine.errors import ArtifactError
from embedding_assets.engine.ngrams import NgramCounter, lookup, ngram_keys, ngram_windows
from embedding_assets.engine.tokenization import FRONT_ENDS, WORDPIECE


@dataclass(frozen=True)
class Vocabulary:
    """N-grams (rows of token ids padded with PAD) sorted by key, with their IDF weights.

    `front_end` names the tokenisation that made the token ids (see `tokenization`).
    """

    ngrams: np.ndarray  # uint32 [V, max_n]
    idf: np.ndarray  # float32 [V]
    front_end: str = WORDPIECE
    keys: np.ndarray = field(init=False, repr=False, compare=False)  # uint64 [V], derived

    def __post_init__(self) -> None:
        if self.ngrams.ndim != 2 or self.ngrams.dtype != np.uint32:
            raise ArtifactError(f"vocabulary n-grams must be a uint32 matrix, got {self.ngrams.dtype} {self.ngrams.shape}")
        if self.idf.shape != (len(self.ngrams),):
            raise ArtifactError(f"IDF has shape {self.idf.shape}, expected ({len(self.ngrams)},)")
        if self.front_end not in FRONT_ENDS:
            raise ArtifactError(f"unknown front end {self.front_end!r}; expected one of {FRONT_ENDS}")
        keys = ngram_keys(self.ngrams)
        if len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
            raise ArtifactError("vocabulary n-grams are not unique and sorted by key")
        object.__setattr__(self, "keys", keys)

    @property
    def size(self) -> int:
        return len(self.ngrams)

    @property
    def max_n(self) -> int:
        return self.ngrams.shape[1]

    @classmethod
    def from_counter(cls, counter: NgramCounter, size: int, min_count: int, front_end: str = WORDPIECE) -> Vocabulary:
        """The `size` n-grams with the highest document frequency; IDF is filled in later."""
        picked = counter.most_frequent(size, min_count)
        picked = picked[np.argsort(counter.keys[picked])]
        return cls(counter.ngrams[picked], np.ones(len(picked), dtype=np.float32), front_end)

    def with_document_frequencies(self, df: np.ndarray, num_documents: int) -> Vocabulary:
        """Smoothed IDF, as scikit-learn computes it: ln((1 + N) / (1 + df)) + 1."""
        idf = np.log((1.0 + num_documents) / (1.0 + df)) + 1.0
        return Vocabulary(self.ngrams, idf.astype(np.float32), self.front_end)


def count_matrix(front_end, vocabulary: Vocabulary, texts: Sequence[str]) -> sp.csr_matrix:
    """Raw n-gram counts of each text over the vocabulary (CSR, float32); `front_end` from `make_front_end`."""
    ids, offsets = front_end.tokenize(texts)
    windows = ngram_windows(ids, offsets, vocabulary.max_n)
    cols, known = lookup(vocabulary.keys, windows.keys)
    docs, cols = windows.docs[known], cols[known]
    cells, counts = np.unique(docs * vocabulary.size + cols, return_counts=True)
    rows = cells // vocabulary.size
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(texts)), out=indptr[1:])
    return sp.csr_matrix(
        (counts.astype(np.float32), (cells % vocabulary.size).astype(np.int32), indptr),
        shape=(len(texts), vocabulary.size),
    )


def tfidf_rows(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """Scale counts by IDF and give each non-empty row L2 norm 1."""
    data = counts.data * idf[counts.indices]
    row_of = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    norms = np.sqrt(np.bincount(row_of, weights=data.astype(np.float64) ** 2, minlength=counts.shape[0]))
    data = (data / norms[row_of]).astype(np.float32)
    return sp.csr_matrix((data, counts.indices, counts.indptr), shape=counts.shape)
