"""`LexicalEmbedder`: the trained model as one object, `load(path).encode(texts)`."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, cached_property

import fsspec
import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from embedding_assets.engine import artifact
from embedding_assets.engine.errors import ArtifactError, InputError
from embedding_assets.engine.luxical_format import read_luxical, write_luxical
from embedding_assets.engine.first_layer import first_layer_sums, unigram_entries
from embedding_assets.engine.half import FIRST_LAYER_DTYPES, FLOAT16, FLOAT32, expand, shrink
from embedding_assets.engine.hashtable import KeyTable
from embedding_assets.engine.network import finish
from embedding_assets.engine.ngrams import prefix_keys
from embedding_assets.engine.quantization import quantize_uint8
from embedding_assets.engine.storage import is_url, read_bytes, write_bytes_atomic
from embedding_assets.engine.threads import available_cpus
from embedding_assets.engine.tfidf import Vocabulary, count_matrix, tfidf_rows
from embedding_assets.engine.tokenization import WORDPIECE, load_tokenizer, make_front_end


class LexicalEmbedder:
    """Text -> token n-grams -> TF-IDF -> sparse-to-dense ReLU network -> unit vector.

    The tokens are WordPiece (the tokenizer's) or hashed words, as the vocabulary's `front_end` says.

    `fallback` is the vector given to texts with no known n-gram (an empty string, say): the
    normalised mean of the training embeddings, so every row of `encode` has norm 1.

    `first_layer_dtype` "float16" stores the first layer, by far the largest array, in half
    precision (see `half`): the model file halves, and so do the bytes `encode` reads per
    n-gram, its main cost on long texts. Only the float16 matrix is kept; `layers[0]` gives its
    float32 values, with which the numpy and torch paths compute the same embeddings.
    """

    def __init__(
        self,
        tokenizer_json: str,
        vocabulary: Vocabulary,
        layers: Sequence[np.ndarray],
        fallback: np.ndarray,
        quantization_limit: float,
        provenance: dict | None = None,
        first_layer_dtype: str = FLOAT32,
    ):
        if first_layer_dtype not in FIRST_LAYER_DTYPES:
            raise ArtifactError(f"first layer dtype must be one of {FIRST_LAYER_DTYPES}, got {first_layer_dtype!r}")
        if not layers:
            raise ArtifactError("a model needs at least one layer")
        if layers[0].shape[0] != vocabulary.size:
            raise ArtifactError(f"first layer has {layers[0].shape[0]} rows, vocabulary has {vocabulary.size} n-grams")
        for i, (a, b) in enumerate(zip(layers[:-1], layers[1:]), start=1):
            if a.shape[1] != b.shape[0]:
                raise ArtifactError(f"layer {i} expects {b.shape[0]} inputs, layer {i - 1} gives {a.shape[1]}")
        if fallback.shape != (layers[-1].shape[1],):
            raise ArtifactError(f"fallback vector has shape {fallback.shape}, expected ({layers[-1].shape[1]},)")
        self.tokenizer_json = tokenizer_json
        self.tokenizer = load_tokenizer(tokenizer_json)
        self.front_end = make_front_end(vocabulary.front_end, tokenizer_json)
        self.vocabulary = vocabulary
        self.first_layer_dtype = first_layer_dtype
        if first_layer_dtype == FLOAT16:
            self._first_layer = layers[0] if layers[0].dtype == np.float16 else shrink(layers[0])
        else:
            self._first_layer = np.ascontiguousarray(layers[0], dtype=np.float32)
        self._later_layers = [np.ascontiguousarray(w, dtype=np.float32) for w in layers[1:]]
        self.fallback = np.asarray(fallback, dtype=np.float32)
        self.quantization_limit = float(quantization_limit)
        self.provenance = provenance or {}

    @property
    def layers(self) -> list[np.ndarray]:
        """The network's float32 weights, input first (a float16 first layer is expanded on each call)."""
        first = expand(self._first_layer) if self.first_layer_dtype == FLOAT16 else self._first_layer
        return [first, *self._later_layers]

    @property
    def dim(self) -> int:
        return self.dims[-1]

    @property
    def dims(self) -> list[int]:
        return [self.vocabulary.size] + [w.shape[1] for w in (self._first_layer, *self._later_layers)]

    def tfidf(self, texts: Sequence[str]) -> sp.csr_matrix:
        return tfidf_rows(count_matrix(self.front_end, self.vocabulary, texts), self.vocabulary.idf)

    def encode(self, texts: Sequence[str] | Iterable[str], batch_size: int = 4096, threads: int | None = None, lexical: np.ndarray | None = None):
        """Unit-norm float32 embeddings, shape (len(texts), dim).

        With `lexical`, a float32 matrix with one row per n-gram of the vocabulary, also each
        text's L2-normalised TF-IDF row (`tfidf`) times that matrix, from the same pass:
        (embeddings, lexical products).
        """
        chunks = list(self.encode_batches(texts, batch_size, threads, lexical))
        if lexical is None:
            return np.concatenate(chunks) if chunks else np.empty((0, self.dim), dtype=np.float32)
        if not chunks:
            return np.empty((0, self.dim), dtype=np.float32), np.empty((0, lexical.shape[1]), dtype=np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def encode_batches(self, texts: Iterable[str], batch_size: int = 4096, threads: int | None = None, lexical: np.ndarray | None = None) -> Iterator:
        """Embeddings of an iterable of texts, a batch at a time, in bounded memory.

        Each batch is split across `threads` threads (default: the usable cores). The first-layer
        kernel and numpy release the GIL, so one part's n-gram and network work runs while another part
        is tokenised (`tokenizers` holds the GIL but parallelises inside its own call).
        """
        if lexical is not None and (lexical.ndim != 2 or lexical.shape[0] != self.vocabulary.size or lexical.dtype != np.float32):
            raise ValueError(f"lexical must be float32 of shape ({self.vocabulary.size}, k), got {lexical.dtype} {lexical.shape}")
        threads = threads or available_cpus()
        with ThreadPoolExecutor(threads) as pool:
            batch: list[str] = []
            for text in texts:
                batch.append(text)
                if len(batch) == batch_size:
                    yield self._encode_valid(pool, batch, threads, lexical)
                    batch = []
            if batch:
                yield self._encode_valid(pool, batch, threads, lexical)

    def _encode_valid(self, pool: ThreadPoolExecutor, texts: list[str], threads: int, lexical: np.ndarray | None):
        # The batch is already split across the cores; BLAS threads of their own inside each part
        # would only spin between the small dense products, burning CPU time.
        with _blas_threads().limit(limits=1, user_api="blas"):
            return self._encode_checked(pool, texts, threads, lexical)

    def _encode_checked(self, pool: ThreadPoolExecutor, texts: list[str], threads: int, lexical: np.ndarray | None):
        try:
            return self._encode_parallel(pool, texts, threads, lexical)
        except TypeError:
            # The tokenizer takes UTF-8 only; a Python string can hold lone surrogates (from a JSON
            # escape, say). Those become U+FFFD, and valid surrogate pairs the character they encode.
            if not all(isinstance(t, str) for t in texts):
                raise InputError(f"texts must be strings, got {sorted({type(t).__name__ for t in texts})}") from None
            cleaned = [t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in texts]
            return self._encode_parallel(pool, cleaned, threads, lexical)

    def encode_parquet(
        self, path: str | os.PathLike, column: str = "text", batch_size: int = 4096, threads: int | None = None
    ) -> Iterator[np.ndarray]:
        """Embeddings of one string column of a parquet file, streamed a record batch at a time."""
        import pyarrow.parquet as pq

        with fsspec.open(os.fspath(path), "rb") as f:
            parquet = pq.ParquetFile(f)
            if column not in parquet.schema_arrow.names:
                raise InputError(f"{path}: no column {column!r} (columns: {parquet.schema_arrow.names})")
            yield from self.encode_batches(_column_texts(parquet, column, batch_size, path), batch_size, threads)

    def _encode_parallel(self, pool: ThreadPoolExecutor, texts: list[str], threads: int, lexical: np.ndarray | None):
        step = -(-len(texts) // threads)
        if threads == 1 or len(texts) < 2 * threads:
            return self._encode_batch(texts, lexical)
        self._unigrams  # build once, before the threads race to
        parts = list(pool.map(lambda part: self._encode_batch(part, lexical), [texts[i : i + step] for i in range(0, len(texts), step)]))
        if lexical is None:
            return np.concatenate(parts)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @cached_property
    def _key_table(self) -> KeyTable:
        return KeyTable(self.vocabulary.keys, prefix_keys(self.vocabulary.ngrams))

    @cached_property
    def _unigrams(self) -> np.ndarray:
        # WordPiece ids are small: their single-token entries fit an array. Word ids are hashes.
        if self.vocabulary.front_end != WORDPIECE:
            return np.empty(0, dtype=np.uint64)
        return unigram_entries(self._key_table, self.tokenizer.get_vocab_size())

    def first_layer_sums(self, ids: np.ndarray, offsets: np.ndarray, lexical: np.ndarray | None = None):
        """The first layer's output for tokenised documents (`front_end.tokenize`), before the ReLU;
        with `lexical`, also their L2-normalised TF-IDF rows times it (see `encode`)."""
        return first_layer_sums(ids, offsets, self._key_table, self.vocabulary.max_n, self.vocabulary.idf, self._first_layer, self._unigrams, lexical)

    def finish(self, hidden: np.ndarray) -> np.ndarray:
        """The rest of the network, from the first layer's output (modified in place) to the embeddings."""
        return finish(hidden, self._later_layers)

    def _encode_batch(self, texts: Sequence[str], lexical: np.ndarray | None = None):
        sums = self.first_layer_sums(*self.front_end.tokenize(texts), lexical=lexical)
        hidden, products = sums if lexical is not None else (sums, None)
        out = self.finish(hidden)
        empty = ~np.any(out, axis=1)
        out[empty] = self.fallback
        return out if lexical is None else (out, products)

    def quantize(self, embeddings: np.ndarray) -> np.ndarray:
        return quantize_uint8(embeddings, self.quantization_limit)

    def _config(self) -> dict:
        return {
            "tokenizer": self.tokenizer_json,
            "front_end": self.vocabulary.front_end,
            "max_ngram_length": self.vocabulary.max_n,
            "dims": self.dims,
            "first_layer_dtype": self.first_layer_dtype,
            "quantization_limit": self.quantization_limit,
            "provenance": self.provenance,
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        tensors = {"vocabulary.ngrams": self.vocabulary.ngrams, "vocabulary.idf": self.vocabulary.idf, "fallback": self.fallback}
        tensors.update({f"layers.{i}": w for i, w in enumerate((self._first_layer, *self._later_layers))})
        return tensors

    @cached_property
    def version(self) -> str:
        """Content hash of the model: equal models, equal versions."""
        return artifact.content_hash(self._config(), self._tensors())[:16]

    def to_bytes(self) -> bytes:
        return artifact.dump(self._config(), self._tensors())

    def save(self, path: str | os.PathLike) -> None:
        write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> LexicalEmbedder:
        """A model from its file's bytes (read from S3, say); `load` maps a local file instead of reading it."""
        return cls._from_parts(*artifact.parse(data))

    @classmethod
    def _from_parts(cls, config: dict, tensors: dict[str, np.ndarray]) -> LexicalEmbedder:
        try:
            dims = [int(d) for d in config["dims"]]
            max_n = int(config["max_ngram_length"])
            tokenizer_json = config["tokenizer"]
            limit = float(config["quantization_limit"])
            first_layer_dtype = config.get("first_layer_dtype", FLOAT32)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"config is missing or has a bad value for {exc}") from exc
        if len(dims) < 2 or min(dims) < 1 or not 1 <= max_n <= 16:
            raise ArtifactError(f"config has impossible dims {dims} or n-gram length {max_n}")
        if first_layer_dtype not in FIRST_LAYER_DTYPES:
            raise ArtifactError(f"config has unknown first layer dtype {first_layer_dtype!r}")
        vocabulary = Vocabulary(
            artifact.require(tensors, "vocabulary.ngrams", (dims[0], max_n), np.uint32),
            artifact.require(tensors, "vocabulary.idf", (dims[0],), np.float32),
            config.get("front_end", WORDPIECE),
        )
        layers = [
            artifact.require(tensors, f"layers.{i}", (dims[i], dims[i + 1]), first_layer_dtype if i == 0 else np.float32)
            for i in range(len(dims) - 1)
        ]
        fallback = artifact.require(tensors, "fallback", (dims[-1],), np.float32)
        return cls(tokenizer_json, vocabulary, layers, fallback, limit, config.get("provenance"), first_layer_dtype)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LexicalEmbedder:
        """A model from a local path, memory-mapped (its arrays are views into the file's pages), or from a URL (s3://...)."""
        try:
            parts = artifact.parse(read_bytes(path)) if is_url(path) else artifact.parse_file(path)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ArtifactError(f"no model file at {path}") from exc
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc
        try:
            return cls._from_parts(*parts)
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc

    @classmethod
    def from_luxical(cls, path: str | os.PathLike, quantization_limit: float = 0.5) -> LexicalEmbedder:
        """A luxical v1 `.npz` embedder, giving the same embeddings as luxical does.

        The tokenizer's baked-in truncation and padding are switched off, as for every model
        here; a luxical file built with them on differs only on texts longer than the limit.
        Texts with no known n-gram get the zero vector, as in luxical. The uint8 clip limit
        is not part of luxical's file, hence the argument.
        """
        parts = read_luxical(path)
        layers = parts["layers"]
        return cls(
            parts["tokenizer_json"],
            Vocabulary(parts["ngrams"], parts["idf"]),
            layers,
            np.zeros(layers[-1].shape[1], dtype=np.float32),
            quantization_limit,
            provenance={"imported_from": "luxical", "source": os.fspath(path)},
        )

    def to_luxical(self, path: str | os.PathLike) -> None:
        """Write this model as a luxical v1 `.npz` (needs two or more layers; the fallback vector is not kept)."""
        if self.vocabulary.front_end != WORDPIECE:
            raise ArtifactError(
                f"luxical models read WordPiece n-grams; this model's front end is {self.vocabulary.front_end!r}, "
                "which luxical cannot reproduce. Train with front_end='wordpiece' to export."
            )
        buffer = io.BytesIO()
        write_luxical(buffer, self.tokenizer.to_str(), self.vocabulary.ngrams, self.vocabulary.idf, self.layers)
        write_bytes_atomic(path, buffer.getvalue())


@cache
def _blas_threads() -> ThreadpoolController:
    return ThreadpoolController()


def _column_texts(parquet, column: str, batch_size: int, path) -> Iterator[str]:
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[column]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise InputError(f"{path}: row {row}, column {column!r} is {type(text).__name__}, expected a string")
            yield text
            row += 1
