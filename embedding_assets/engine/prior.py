"""A teacher prior for the first layer: each token's mean contextual vector inside the teacher.

The teacher's document vector is the mean of its contextual token vectors. Averaged over
every occurrence in the training documents, a token's contextual vector is a static stand-in
for what that token adds to a document. A first layer whose unigram rows hold these means
(divided by the IDF, so a TF-IDF row sums them with the teacher's own count weights) is
already a fair student before any fitting; the ridge start then fits only the residual,
so n-grams rare in training stay near the teacher's meaning instead of near zero.

The sums come from the same teacher pass that embeds the training documents: no extra run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from embedding_assets.engine import artifact
from embedding_assets.engine.ngrams import PAD
from embedding_assets.engine.tfidf import Vocabulary

TOKEN_SUMS_FORMAT = "embedding_assets.token_sums"


@dataclass(frozen=True)
class TokenSums:
    """Sums and counts of the teacher's contextual vectors per token id (special tokens left out)."""

    ids: np.ndarray  # int64 [k], sorted, unique
    sums: np.ndarray  # float64 [k, d]
    counts: np.ndarray  # int64 [k]

    @classmethod
    def of(cls, token_ids: Sequence[np.ndarray], token_vectors: Sequence[np.ndarray], dim: int) -> TokenSums:
        """From each document's token ids and their contextual vectors (rows in step)."""
        if not token_ids:
            return cls(np.empty(0, np.int64), np.empty((0, dim)), np.empty(0, np.int64))
        ids = np.concatenate([np.asarray(t, dtype=np.int64) for t in token_ids])
        vectors = np.concatenate([np.asarray(v, dtype=np.float64)[:, :dim] for v in token_vectors])
        unique, inverse = np.unique(ids, return_inverse=True)
        sums = np.zeros((len(unique), dim))
        np.add.at(sums, inverse, vectors)
        return cls(unique, sums, np.bincount(inverse, minlength=len(unique)).astype(np.int64))

    @classmethod
    def merge(cls, parts: Iterable[TokenSums], dim: int) -> TokenSums:
        parts = [p for p in parts if len(p.ids)]
        if not parts:
            return cls.of([], [], dim)
        ids = np.concatenate([p.ids for p in parts])
        unique, inverse = np.unique(ids, return_inverse=True)
        sums = np.zeros((len(unique), dim))
        np.add.at(sums, inverse, np.concatenate([p.sums for p in parts]))
        counts = np.bincount(inverse, weights=np.concatenate([p.counts for p in parts]), minlength=len(unique))
        return cls(unique, sums, counts.astype(np.int64))

    def to_bytes(self) -> bytes:
        return artifact.dump({"dim": self.sums.shape[1]}, {"ids": self.ids, "sums": self.sums, "counts": self.counts}, TOKEN_SUMS_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenSums:
        config, tensors = artifact.parse(data, TOKEN_SUMS_FORMAT)
        ids = artifact.require(tensors, "ids", (None,), np.int64)
        return cls(
            ids,
            artifact.require(tensors, "sums", (len(ids), int(config["dim"])), np.float64),
            artifact.require(tensors, "counts", (len(ids),), np.int64),
        )


def unigram_prior(vocabulary: Vocabulary, sums: TokenSums) -> np.ndarray:
    """[V, d] first-layer prior: a seen unigram's mean contextual vector over its IDF; zero elsewhere."""
    prior = np.zeros((vocabulary.size, sums.sums.shape[1]), dtype=np.float32)
    unigram = (vocabulary.ngrams[:, 1:] == PAD).all(axis=1) if vocabulary.max_n > 1 else np.ones(vocabulary.size, bool)
    token = vocabulary.ngrams[:, 0].astype(np.int64)
    pos = np.searchsorted(sums.ids, token)
    seen = unigram & (pos < len(sums.ids))
    seen[seen] = sums.ids[pos[seen]] == token[seen]
    means = sums.sums[pos[seen]] / sums.counts[pos[seen], None]
    prior[seen] = means / vocabulary.idf[seen, None]
    return prior
