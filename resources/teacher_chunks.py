"""The teacher's embeddings of a document list, computed in stored chunks so that a re-run redoes only the missing ones.

Chunk i holds documents [i * chunk_size, (i + 1) * chunk_size) and lives under
`teacher_chunks/<key>/`, where the key hashes the teacher's identity, the documents and the chunk
size: a chunk of another teacher or sample is under another key and is never read. Each chunk
stores its vectors (parquet) and the sums of the teacher's contextual token vectors over its
training documents (`engine.prior`), written atomically as soon as the chunk is done.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow as pa

from embedding_assets.engine.errors import ArtifactError
from embedding_assets.engine.prior import TokenSums
from embedding_assets.paths import TEACHER_CHUNKS_DIR
from embedding_assets.progress import ProgressLog
from embedding_assets.resources.storage import Storage
from embedding_assets.resources.teacher import Teacher
from embedding_assets.stored import embedding_column, embeddings_schema, read_embeddings


def chunk_key(teacher_sha256: str, ids: Sequence[str], texts: Sequence[str], chunk_size: int) -> str:
    """Names the chunk folder: what the chunks' vectors depend on (teacher, sample content, chunking)."""
    digest = hashlib.sha256(f"{teacher_sha256}|{chunk_size}|{len(ids)}".encode())
    for doc_id, text in zip(ids, texts):
        digest.update(f"{len(doc_id)}:{doc_id}{len(text)}:".encode())
        digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def chunk_name(index: int) -> str:
    return f"{index:06d}.parquet"


def sums_name(index: int) -> str:
    return f"{index:06d}.token_sums.safetensors"


@dataclass
class ChunkedEmbeddings:
    vectors: np.ndarray  # float32 [documents, dim], in document order
    token_sums: TokenSums  # over the documents flagged for the prior
    key: str
    chunks: int
    reused: int
    computed: int
    embedded: int  # documents embedded by this call
    device: str  # "none" when every chunk was reused
    seconds: float


@dataclass
class TeacherChunks:
    storage: Storage
    key: str

    def read(self, index: int, ids: list[str]) -> tuple[np.ndarray, TokenSums] | None:
        """A stored chunk's vectors and token sums, or None when it is not the one expected (other ids, unreadable, no sums)."""
        try:
            chunk_ids, vectors, _ = read_embeddings(self.storage, TEACHER_CHUNKS_DIR, self.key, chunk_name(index))
            sums = TokenSums.from_bytes(self.storage.read_bytes(TEACHER_CHUNKS_DIR, self.key, sums_name(index)))
        except (pa.ArrowException, OSError, dg.Failure, ValueError, ArtifactError):
            return None
        return (vectors, sums) if chunk_ids == ids else None

    def write(self, index: int, ids: list[str], vectors: np.ndarray, sums: TokenSums) -> None:
        schema = embeddings_schema(vectors.shape[1], pa.float32(), {})
        batch = pa.record_batch([pa.array(ids, pa.string()), embedding_column(vectors)], schema=schema)
        self.storage.write_bytes(sums.to_bytes(), TEACHER_CHUNKS_DIR, self.key, sums_name(index))
        self.storage.write_parquet([batch], schema, TEACHER_CHUNKS_DIR, self.key, chunk_name(index))

    def remove_all(self) -> int:
        """Once the final file is written: remove every chunk folder, this key's too; returns how many."""
        folders = self.storage.list_names(TEACHER_CHUNKS_DIR)
        for name in folders:
            self.storage.delete_folder(TEACHER_CHUNKS_DIR, name)
        return len(folders)


def read_assembled(storage: Storage, embeddings: tuple[str, ...], token_sums: tuple[str, ...], ids: list[str]) -> tuple[np.ndarray, TokenSums] | None:
    """The vectors and token sums of a final file assembled earlier from the same key's chunks, or
    None when it is gone, unreadable or not of these documents."""
    try:
        stored_ids, vectors, _ = read_embeddings(storage, *embeddings)
        sums = TokenSums.from_bytes(storage.read_bytes(*token_sums))
    except (pa.ArrowException, OSError, dg.Failure, ValueError, ArtifactError):
        return None
    return (vectors, sums) if stored_ids == ids else None


def embed_in_chunks(
    storage: Storage,
    teacher: Teacher,
    ids: list[str],
    texts: list[str],
    sum_over: Sequence[bool],
    chunk_size: int,
    device: Callable[[], str],
    precision: str,
    log: Callable[[str], None] = print,
    assembled: Callable[[str], tuple[np.ndarray, TokenSums] | None] = lambda key: None,
) -> ChunkedEmbeddings:
    """The teacher's vectors of `texts`, and its token sums over those flagged in `sum_over`; stored chunks are reused.

    `assembled(key)` gives the final file an earlier run assembled from this key's chunks (which
    were then removed), or None; when it has one, nothing is embedded.
    `device()` is asked only when a chunk has to be computed, so a full reuse never loads torch.
    `log` gets the plan and the progress of the chunks being computed.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks = TeacherChunks(storage, chunk_key(teacher.identity()["sha256"], ids, texts, chunk_size))
    starts = list(range(0, len(texts), chunk_size))
    earlier = assembled(chunks.key)
    if earlier is not None:
        log(f"teacher {teacher.model}: {len(texts)} documents read from the final file of an earlier run with key {chunks.key}; nothing to embed")
        vectors, sums = earlier
        return ChunkedEmbeddings(vectors, sums, chunks.key, len(starts), len(starts), 0, 0, "none", 0.0)
    stored = set(storage.list_names(TEACHER_CHUNKS_DIR, chunks.key))
    parts = [chunks.read(i, ids[s : s + chunk_size]) if chunk_name(i) in stored else None for i, s in enumerate(starts)]
    missing = [i for i, part in enumerate(parts) if part is None]
    log(f"teacher {teacher.model}: {len(texts)} documents in {len(starts)} chunks under {TEACHER_CHUNKS_DIR}/{chunks.key}, {len(missing)} to embed")
    started, embedded, used = time.perf_counter(), 0, "none"
    if missing:
        progress = ProgressLog(log, "teacher", sum(len(texts[starts[i] : starts[i] + chunk_size]) for i in missing))
        used = device()
        try:
            model = teacher.load(used)
        except Exception as exc:  # sentence-transformers and transformers raise many types for a bad model directory
            raise dg.Failure(f"cannot load teacher {teacher.model!r}: {type(exc).__name__}: {exc}", allow_retries=False) from exc
        for i in missing:
            window = slice(starts[i], starts[i] + chunk_size)
            vectors, sums = teacher.embed_with_token_sums(model, texts[window], used, precision, sum_over[window])
            chunks.write(i, ids[window], vectors, sums)
            parts[i] = vectors, sums
            embedded += len(vectors)
            progress.update(embedded, f"chunk {i + 1}/{len(starts)} on {used}")
    vectors = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, teacher.embedding_dim() or 0), np.float32)
    return ChunkedEmbeddings(
        vectors=vectors,
        token_sums=TokenSums.merge((p[1] for p in parts), vectors.shape[1]),
        key=chunks.key,
        chunks=len(starts),
        reused=len(starts) - len(missing),
        computed=len(missing),
        embedded=embedded,
        device=used,
        seconds=time.perf_counter() - started,
    )
