"""Teacher embeddings of the training sample, on the compute device."""

import json
import time

import dagster as dg
import numpy as np
import pyarrow as pa

from embedding_assets.assets.features import read_sample
from embedding_assets.assets.ingest import training_sample
from embedding_assets.progress import ProgressLog, throughput
from embedding_assets.resources import Compute, Storage, Teacher
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, latest_metadata_value, short_hash
from embedding_assets.placement import GPU_POD_TAGS, GPU_POOL

TEACHER_FILE = "teacher_embeddings.parquet"
TEACHER_MODEL_FILE = "teacher_model.json"
CHUNK = 512


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


@dg.asset(
    group_name="training",
    kinds={"pytorch", "json"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["teacher_model"],
    description=(
        "The teacher's identity: model name, a hash of its weights and configs, and the settings it embeds with. "
        "Its data version changes when any of them does, which marks everything trained from it stale."
    ),
)
def teacher_model(teacher: Teacher, storage: Storage) -> dg.MaterializeResult:
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
    description="The teacher's embeddings of every sample document (float32, L2-normalised by default), in sample order.",
)
def teacher_embeddings(context: dg.AssetExecutionContext, storage: Storage, teacher: Teacher, compute: Compute) -> dg.MaterializeResult:
    sample = read_sample(storage, ["id", "text"])
    texts = sample["text"].to_pylist()
    device = compute.torch_device()
    identity = teacher.identity()
    pinned = json.loads(storage.read_bytes(TEACHER_MODEL_FILE))
    if pinned["sha256"] != identity["sha256"]:
        raise dg.Failure(
            f"the teacher configured now ({identity}) is not the one teacher_model recorded ({pinned}); "
            "materialise teacher_model with it first, so lineage names the teacher that was used"
        )
    model = teacher.load(device)
    dim = model.get_embedding_dimension()
    if teacher.truncate_dim:
        dim = min(dim, teacher.truncate_dim)
    context.log.info(f"teacher {identity['model']} on {device}: {len(texts)} documents, dim {dim}")

    started = time.perf_counter()
    progress = ProgressLog(context.log.info, "teacher", len(texts))
    chunks = []
    for start in range(0, len(texts), CHUNK):
        chunks.append(teacher.embed(model, texts[start : start + CHUNK], device, compute.precision))
        progress.update(min(start + CHUNK, len(texts)))
    seconds = time.perf_counter() - started
    vectors = np.concatenate(chunks)
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
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(identity["sha256"], "\n".join(sample["id"].to_pylist()), vectors.tobytes())),
        metadata={
            "dagster/row_count": rows,
            "uri": dg.MetadataValue.path(uri),
            "teacher": identity["model"],
            "teacher_sha256": identity["sha256"],
            "device": device,
            "dim": dim,
            **throughput(seconds, len(texts), latest_metadata_value(context.instance, "training_sample", "tokens")),
        }
    )
