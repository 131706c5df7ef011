"""Teacher embeddings of the training sample, on the compute device, in resumable chunks.

The sample is embedded `chunk_size` documents at a time. Each chunk is stored (atomically) as
soon as it is done, under `teacher_chunks/<key>/`, where the key hashes the teacher's identity,
the sample's content and the chunk size; the final file is assembled from the chunks. A run that
was killed or failed leaves its finished chunks, and the next run embeds only the missing ones. A
chunk of another teacher or sample lives under another key and is never read; once the final file
is written, the chunk folders of every other key are removed, so only the latest set is kept.

The same forward pass also sums each token's contextual vectors over the training documents
(`engine.prior`): every chunk stores its sums beside its vectors, and the totals are written to
`teacher_token_sums.safetensors`, the prior `distilled_model` starts from.
"""

import hashlib
import json
import time

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from embedding_assets.assets.features import read_sample
from embedding_assets.assets.ingest import training_sample
from embedding_assets.engine.errors import ArtifactError
from embedding_assets.engine.prior import TokenSums
from embedding_assets.progress import ProgressLog, throughput
from embedding_assets.resources import Compute, Storage, Teacher
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, latest_metadata_value, short_hash
from embedding_assets.placement import GPU_POD_TAGS, GPU_POOL

TEACHER_FILE = "teacher_embeddings.parquet"
TEACHER_MODEL_FILE = "teacher_model.json"
TOKEN_SUMS_FILE = "teacher_token_sums.safetensors"
CHUNKS_DIR = "teacher_chunks"


class TeacherEmbeddingsConfig(dg.Config):
    chunk_size: int = Field(default=512, description="Documents per stored chunk: a re-run after a crash embeds only the chunks that are missing.")


def embeddings_schema(dim: int, value_type: pa.DataType, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [pa.field("id", pa.string(), nullable=False), pa.field("embedding", pa.list_(value_type, dim), nullable=False)],
        metadata=metadata,
    )


def embedding_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).ravel()), vectors.shape[1])


def read_embeddings(storage: Storage, *parts: str) -> tuple[list[str], np.ndarray, dict[bytes, bytes]]:
    with storage.open_parquet(*parts) as parquet:
        table = parquet.read()
        metadata = parquet.schema_arrow.metadata or {}
    column = table["embedding"].combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy().reshape(-1, dim)
    return table["id"].to_pylist(), vectors, metadata


def chunk_key(teacher_sha256: str, ids: list[str], texts: list[str], chunk_size: int) -> str:
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


def read_chunk(storage: Storage, key: str, index: int, ids: list[str]) -> tuple[np.ndarray, TokenSums] | None:
    """A stored chunk's vectors and token sums, or None when the chunk is not the one expected (other ids, unreadable, no sums)."""
    try:
        chunk_ids, vectors, _ = read_embeddings(storage, CHUNKS_DIR, key, chunk_name(index))
        sums = TokenSums.from_bytes(storage.read_bytes(CHUNKS_DIR, key, sums_name(index)))
    except (pa.ArrowException, OSError, dg.Failure, ValueError, ArtifactError):
        return None
    return (vectors, sums) if chunk_ids == ids else None


@dg.asset(
    group_name="training",
    kinds={"pytorch", "json"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["teacher_model"],
    retry_policy=STORAGE_RETRY_POLICY,
    description=(
        "The teacher's identity: model name, a hash of its weights and configs, and the settings it embeds with. "
        "Its data version changes when any of them does, which marks everything trained from it stale."
    ),
)
def teacher_model(teacher: Teacher, storage: Storage) -> dg.MaterializeResult:
    native = teacher.native_dim()
    if native is not None and teacher.truncate_dim > native:
        raise dg.Failure(
            f"teacher truncate_dim {teacher.truncate_dim} is larger than the dimension of {teacher.model!r} ({native}); "
            "Matryoshka truncation can only shorten vectors",
            allow_retries=False,
        )
    identity = teacher.identity()
    uri = storage.write_bytes(json.dumps(identity, indent=1, sort_keys=True).encode(), TEACHER_MODEL_FILE)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(identity["sha256"]),
        metadata={"uri": dg.MetadataValue.path(uri), **{k: str(v) for k, v in identity.items()}},
    )


@dg.asset(
    deps=[training_sample, teacher_model],
    group_name="training",
    kinds={"parquet", "pytorch"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "string"), dg.TableColumn("embedding", "fixed_size_list<float32>[dim]", "teacher vector, L2-normalised")])},
    code_version=CODE_VERSIONS["teacher_embeddings"],
    pool=GPU_POOL,
    op_tags=GPU_POD_TAGS,
    retry_policy=STORAGE_RETRY_POLICY,
    description=(
        "The teacher's embeddings of every sample document (float32, L2-normalised by default), in sample order. "
        "Computed in stored chunks, so a re-run after a crash embeds only the missing ones. The same pass sums each token's "
        "contextual vectors over the training split (teacher_token_sums.safetensors), the prior of the student's first layer."
    ),
)
def teacher_embeddings(
    context: dg.AssetExecutionContext, config: TeacherEmbeddingsConfig, storage: Storage, teacher: Teacher, compute: Compute
) -> dg.MaterializeResult:
    if config.chunk_size < 1:
        raise dg.Failure(f"chunk_size must be >= 1, got {config.chunk_size}", allow_retries=False)
    sample = read_sample(storage, ["id", "text", "split"])
    ids, texts = sample["id"].to_pylist(), sample["text"].to_pylist()
    train = [split == "train" for split in sample["split"].to_pylist()]  # held-out documents stay out of the prior
    identity = teacher.identity()
    pinned = json.loads(storage.read_bytes(TEACHER_MODEL_FILE))
    if pinned["sha256"] != identity["sha256"]:
        raise dg.Failure(
            f"the teacher configured now ({identity}) is not the one teacher_model recorded ({pinned}); "
            "materialise teacher_model with it first, so lineage names the teacher that was used",
            allow_retries=False,
        )
    key = chunk_key(identity["sha256"], ids, texts, config.chunk_size)
    starts = list(range(0, len(texts), config.chunk_size))
    stored = set(storage.list_names(CHUNKS_DIR, key))
    chunks: list[tuple[np.ndarray, TokenSums] | None] = [
        read_chunk(storage, key, i, ids[start : start + config.chunk_size]) if chunk_name(i) in stored else None
        for i, start in enumerate(starts)
    ]
    missing = [i for i, chunk in enumerate(chunks) if chunk is None]
    context.log.info(f"teacher {identity['model']}: {len(texts)} documents in {len(starts)} chunks under {CHUNKS_DIR}/{key}, {len(missing)} to embed")

    device = "none"
    started = time.perf_counter()
    embedded = 0
    if missing:
        device = compute.torch_device()
        try:
            model = teacher.load(device)
        except Exception as exc:  # sentence-transformers and transformers raise many types for a bad model directory
            raise dg.Failure(f"cannot load teacher {teacher.model!r}: {type(exc).__name__}: {exc}", allow_retries=False) from exc
        progress = ProgressLog(context.log.info, "teacher", sum(len(texts[starts[i] : starts[i] + config.chunk_size]) for i in missing))
        for i in missing:
            start = starts[i]
            end = start + config.chunk_size
            vectors, sums = teacher.embed_with_token_sums(model, texts[start:end], device, compute.precision, train[start:end])
            chunk_ids = sample["id"][start:end]
            schema = embeddings_schema(vectors.shape[1], pa.float32(), {})
            storage.write_bytes(sums.to_bytes(), CHUNKS_DIR, key, sums_name(i))
            storage.write_parquet([pa.record_batch([chunk_ids.combine_chunks(), embedding_column(vectors)], schema=schema)], schema, CHUNKS_DIR, key, chunk_name(i))
            chunks[i] = vectors, sums
            embedded += len(vectors)
            progress.update(embedded, f"chunk {i + 1}/{len(starts)} on {device}")
    seconds = time.perf_counter() - started
    vectors = np.concatenate([c[0] for c in chunks]) if chunks else np.empty((0, teacher.embedding_dim() or 0), np.float32)
    dim = vectors.shape[1]
    token_sums = TokenSums.merge((c[1] for c in chunks), dim)
    storage.write_bytes(token_sums.to_bytes(), TOKEN_SUMS_FILE)
    schema = embeddings_schema(dim, pa.float32(), {
        "model": identity["model"],
        "model_sha256": identity["sha256"],
        "dim": str(dim),
        "normalization": "l2" if teacher.normalize else "none",
        "quantization_limit": "none",
        "max_seq_length": str(teacher.max_seq_length),
    })
    table = pa.table([sample["id"], embedding_column(vectors)], schema=schema)
    uri, rows = storage.write_parquet(table.to_batches(), schema, TEACHER_FILE)
    stale = [name for name in storage.list_names(CHUNKS_DIR) if name != key]
    for name in stale:
        storage.delete_folder(CHUNKS_DIR, name)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(identity["sha256"], "\n".join(ids), vectors.tobytes())),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            "teacher": identity["model"],
            "teacher_sha256": identity["sha256"],
            "device": device,
            "dim": dim,
            "chunk_size": config.chunk_size,
            "chunk_key": key,
            "chunks": len(starts),
            "chunks_reused": len(starts) - len(missing),
            "chunks_computed": len(missing),
            "chunk_folders_removed": len(stale),
            "prior_tokens": len(token_sums.ids),
            # Throughput of the teacher itself: only the documents embedded in this run count.
            **throughput(seconds, embedded, latest_metadata_value(context.instance, "training_sample", "tokens") if len(missing) == len(starts) else None),
        }
    )
