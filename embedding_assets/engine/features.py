"""Lexical features of a document sample: vocabulary, IDF and the TF-IDF matrix, in one file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from embedding_assets.engine import artifact
from embedding_assets.engine.ngrams import NgramCounter
from embedding_assets.engine.tfidf import Vocabulary, count_matrix, tfidf_rows
from embedding_assets.engine.tokenization import WORDPIECE, make_front_end, tokenizer_sha256

FEATURES_FORMAT = "embedding_assets.features"


@dataclass(frozen=True)
class Features:
    tokenizer_json: str
    vocabulary: Vocabulary
    document_frequency: np.ndarray  # int64 [V], exact, over the sample
    tfidf: sp.csr_matrix  # [documents, V], rows in sample order
    ids: list[str]
    counted_ngrams: int  # distinct n-grams the bounded counter tracked
    tokenizer_model: str = ""  # the model whose tokenizer this is, as the teacher names it
    document_tokens: np.ndarray | None = None  # tokens per document, counted while building (not stored)

    @property
    def tokenizer_sha256(self) -> str:
        return tokenizer_sha256(self.tokenizer_json)

    def to_bytes(self) -> bytes:
        tensors = {
            "vocabulary.ngrams": self.vocabulary.ngrams,
            "vocabulary.idf": self.vocabulary.idf,
            "document_frequency": self.document_frequency,
            "tfidf.indptr": self.tfidf.indptr.astype(np.int64),
            "tfidf.indices": self.tfidf.indices.astype(np.int32),
            "tfidf.data": self.tfidf.data.astype(np.float32),
        }
        config = {
            "tokenizer": self.tokenizer_json,
            "front_end": self.vocabulary.front_end,
            "ids": self.ids,
            "counted_ngrams": self.counted_ngrams,
            "tokenizer_model": self.tokenizer_model,
        }
        return artifact.dump(config, tensors, FEATURES_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes) -> Features:
        config, tensors = artifact.parse(data, FEATURES_FORMAT)
        ngrams = artifact.require(tensors, "vocabulary.ngrams", (None, None), np.uint32)
        size, n_docs = len(ngrams), len(config["ids"])
        vocabulary = Vocabulary(
            ngrams, artifact.require(tensors, "vocabulary.idf", (size,), np.float32), config.get("front_end", WORDPIECE)
        )
        indptr = artifact.require(tensors, "tfidf.indptr", (n_docs + 1,), np.int64)
        indices = artifact.require(tensors, "tfidf.indices", (indptr[-1],), np.int32)
        values = artifact.require(tensors, "tfidf.data", (indptr[-1],), np.float32)
        return cls(
            tokenizer_json=config["tokenizer"],
            vocabulary=vocabulary,
            document_frequency=artifact.require(tensors, "document_frequency", (size,), np.int64),
            tfidf=sp.csr_matrix((values, indices, indptr), shape=(n_docs, size)),
            ids=list(config["ids"]),
            counted_ngrams=int(config["counted_ngrams"]),
            tokenizer_model=str(config.get("tokenizer_model", "")),
        )


def build_features(
    tokenizer_json: str,
    ids: Sequence[str],
    text_batches: Iterable[Sequence[str]],
    vocabulary_size: int,
    max_ngram_length: int,
    min_document_frequency: int,
    counter_capacity: int,
    front_end: str = WORDPIECE,
    tokenizer_model: str = "",
) -> Features:
    """Pick the vocabulary in one bounded-memory pass, then count exactly over the kept n-grams.

    `text_batches` is iterated twice; it must be re-iterable (a list of batches, say).
    `front_end` is "wordpiece" (the tokenizer's ids) or "words" (hashed words; see `tokenization`).
    """
    tokens = make_front_end(front_end, tokenizer_json)
    counter = NgramCounter(counter_capacity, max_ngram_length)
    lengths = []
    for texts in text_batches:
        ids_flat, offsets = tokens.tokenize(texts)
        counter.update(ids_flat, offsets)
        lengths.append(np.diff(offsets))
    vocabulary = Vocabulary.from_counter(counter, vocabulary_size, min_document_frequency, front_end)
    counts = sp.vstack([count_matrix(tokens, vocabulary, texts) for texts in text_batches], format="csr")
    if counts.shape[0] != len(ids):
        raise ValueError(f"{counts.shape[0]} texts but {len(ids)} ids")
    df = np.bincount(counts.indices, minlength=vocabulary.size).astype(np.int64)
    vocabulary = vocabulary.with_document_frequencies(df, counts.shape[0])
    return Features(
        tokenizer_json=tokenizer_json,
        vocabulary=vocabulary,
        document_frequency=df,
        tfidf=tfidf_rows(counts, vocabulary.idf),
        ids=list(ids),
        counted_ngrams=len(counter.keys),
        tokenizer_model=tokenizer_model,
        document_tokens=np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
    )
