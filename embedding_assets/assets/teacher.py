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

import json

import dagster as dg
import pyarrow as pa
from pydantic import Field

from embedding_assets import paths, versions
from embedding_assets.assets.ingest import training_sample
from embedding_assets.interrupts import stop_on_interrupt
from embedding_assets.progress import throughput
from embedding_assets.resources import Compute, Storage, Teacher
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY
from embedding_assets.resources.teacher import model_problem
from embedding_assets.resources.teacher_chunks import TeacherChunks, embed_in_chunks, read_assembled
from embedding_assets.stored import embedding_column, embeddings_schema, read_sample
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, latest_metadata_value, short_hash
from embedding_assets.placement import GPU_POD_TAGS, GPU_POOL


class TeacherEmbeddingsConfig(dg.Config):
    chunk_size: int = Field(default=512, description="Documents per stored chunk: a re-run after a crash embeds only the chunks that are missing.")


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
@stop_on_interrupt
def teacher_model(context: dg.AssetExecutionContext, teacher: Teacher, storage: Storage) -> dg.MaterializeResult:
    problem = model_problem(teacher.model)  # the directory may have changed since the settings were read
    if problem:
        raise dg.Failure(problem, allow_retries=False)
    native = teacher.native_dim()
    if native is not None and teacher.truncate_dim > native:
        raise dg.Failure(
            f"teacher truncate_dim {teacher.truncate_dim} is larger than the dimension of {teacher.model!r} ({native}); "
            "Matryoshka truncation can only shorten vectors",
            allow_retries=False,
        )
    identity = teacher.identity()
    version = versions.new_version(context, "teacher_model")
    uri = storage.write_bytes(json.dumps(identity, indent=1, sort_keys=True).encode(), *version.file(paths.TEACHER_MODEL_FILE))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(identity["sha256"]),
        metadata={"uri": dg.MetadataValue.path(uri), **versions.record(context, storage, version), **{k: str(v) for k, v in identity.items()}, "tokenizer_sha256": teacher.tokenizer_sha256()},
    )


@dg.asset(
    deps=[training_sample, teacher_model],
    group_name="training",
    kinds={"parquet", "pytorch"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "string", "training-sample document id, in the sample's order"), dg.TableColumn("embedding", "fixed_size_list<float32>[dim]", "teacher vector, L2-normalised")])},
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
@stop_on_interrupt
def teacher_embeddings(
    context: dg.AssetExecutionContext, config: TeacherEmbeddingsConfig, storage: Storage, teacher: Teacher, compute: Compute
) -> dg.MaterializeResult:
    if config.chunk_size < 1:
        raise dg.Failure(f"chunk_size must be >= 1, got {config.chunk_size}", allow_retries=False)
    sample = read_sample(storage, versions.published(context, "training_sample"), ["id", "text", "split"])
    ids, texts = sample["id"].to_pylist(), sample["text"].to_pylist()
    identity = teacher.identity()
    pinned = json.loads(storage.read_bytes(*versions.published(context, "teacher_model").file(paths.TEACHER_MODEL_FILE)))
    if pinned["sha256"] != identity["sha256"]:
        raise dg.Failure(
            f"the teacher configured now ({identity}) is not the one teacher_model recorded ({pinned}); "
            "materialise teacher_model with it first, so lineage names the teacher that was used",
            allow_retries=False,
        )
    def assembled(key: str):
        earlier = versions.latest_version(context.instance, "teacher_embeddings")
        if earlier is None or latest_metadata_value(context.instance, "teacher_embeddings", "chunk_key") != key:
            return None
        return read_assembled(storage, earlier.file(paths.TEACHER_EMBEDDINGS_FILE), earlier.file(paths.TEACHER_TOKEN_SUMS_FILE), ids)

    result = embed_in_chunks(
        storage, teacher, ids, texts,
        sum_over=[split == "train" for split in sample["split"].to_pylist()],  # held-out documents stay out of the prior
        chunk_size=config.chunk_size, device=compute.torch_device, precision=compute.precision, log=context.log.info, assembled=assembled,
    )
    vectors, dim = result.vectors, result.vectors.shape[1]
    version = versions.new_version(context, "teacher_embeddings")
    storage.write_bytes(result.token_sums.to_bytes(), *version.file(paths.TEACHER_TOKEN_SUMS_FILE))
    schema = embeddings_schema(dim, pa.float32(), {
        "model": identity["model"],
        "model_sha256": identity["sha256"],
        "tokenizer_sha256": teacher.tokenizer_sha256(),
        "dim": str(dim),
        "normalization": "l2" if teacher.normalize else "none",
        "quantization_limit": "none",
        "max_seq_length": str(teacher.max_seq_length),
    })
    table = pa.table([sample["id"], embedding_column(vectors)], schema=schema)
    uri, rows = storage.write_parquet(table.to_batches(), schema, *version.file(paths.TEACHER_EMBEDDINGS_FILE))
    removed = TeacherChunks(storage, result.key).remove_all()
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(identity["sha256"], "\n".join(ids), vectors.tobytes())),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "teacher": identity["model"],
            "teacher_sha256": identity["sha256"],
            "tokenizer_sha256": schema.metadata[b"tokenizer_sha256"].decode(),
            "device": result.device,
            "dim": dim,
            "chunk_size": config.chunk_size,
            "chunk_key": result.key,
            "chunks": result.chunks,
            "chunks_reused": result.reused,
            "chunks_computed": result.computed,
            "embedded_documents": result.embedded,
            "chunk_folders_removed": removed,
            "prior_tokens": len(result.token_sums.ids),
            # Throughput of the teacher itself: only the documents embedded in this run count.
            **throughput(result.seconds, result.embedded, latest_metadata_value(context.instance, "features", "tokens") if result.reused == 0 else None),
        }
    )
