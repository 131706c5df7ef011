"""Reading back what the assets stored, for the assets downstream and for the checks."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from embedding_assets import paths
from embedding_assets.resources import Storage
from embedding_assets.versions import Version


def embeddings_schema(dim: int, value_type: pa.DataType, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [pa.field("id", pa.string(), nullable=False), pa.field("embedding", pa.list_(value_type, dim), nullable=False)],
        metadata=metadata,
    )


def embedding_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).ravel()), vectors.shape[1])


def read_embeddings(storage: Storage, *parts: str) -> tuple[list[str], np.ndarray, dict[bytes, bytes]]:
    """Ids, vectors and file metadata of an embeddings parquet file."""
    with storage.open_parquet(*parts) as parquet:
        table = parquet.read()
        metadata = parquet.schema_arrow.metadata or {}
    column = table["embedding"].combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy().reshape(-1, dim)
    return table["id"].to_pylist(), vectors, metadata


def model_config(storage: Storage, model: Version) -> dict:
    """The student's config (dims, provenance, ...) from its file's safetensors header, without reading its tensors."""
    from embedding_assets.engine.artifact import read_config

    return read_config(lambda start, length: storage.read_range(start, length, *model.file(paths.MODEL_FILE)))


def read_sample(storage: Storage, sample: Version, columns: list[str]) -> pa.Table:
    with storage.open_parquet(*sample.file(paths.TRAINING_SAMPLE_FILE)) as parquet:
        return parquet.read(columns=columns)


@contextmanager
def open_scored_shard(storage: Storage, scored: Version):
    """The file of a version of scored_corpus[shard], as a `ParquetFile` to stream."""
    with storage.open_parquet(*scored.file(paths.shard_file(scored.partition))) as parquet:
        yield parquet
