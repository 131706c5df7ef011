"""Where the pipeline keeps what it makes: a local directory (default) or an s3:// prefix.

Every write is atomic. Parquet is written to a local temporary file first; locally it is then
renamed over the target, on S3 it is uploaded as one object (a multipart upload completes
whole or is aborted). Readers therefore see the previous version or the new one, never a part.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from embedding_assets.engine.storage import is_url, read_bytes, write_bytes_atomic


class Storage(dg.ConfigurableResource):
    """Base location of every output: a local directory or `s3://bucket/prefix`."""

    base: str = Field(default="data/storage", description="Local directory or s3://bucket/prefix for all outputs.")

    def uri(self, *parts: str) -> str:
        base = self.base.rstrip("/")
        if is_url(base):
            return "/".join([base, *parts])
        return str(Path(base).absolute().joinpath(*parts))

    def exists(self, *parts: str) -> bool:
        fs, path = fsspec.core.url_to_fs(self.uri(*parts))
        return fs.exists(path)

    def write_bytes(self, data: bytes, *parts: str) -> str:
        uri = self.uri(*parts)
        write_bytes_atomic(uri, data)
        return uri

    def read_bytes(self, *parts: str) -> bytes:
        return read_bytes(self.uri(*parts))

    @contextmanager
    def open_parquet(self, *parts: str):
        """A `pyarrow.parquet.ParquetFile` over the stored object, for streaming its batches."""
        uri = self.uri(*parts)
        with fsspec.open(uri, "rb") as f:
            yield pq.ParquetFile(f)

    def write_parquet(
        self,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        *parts: str,
    ) -> tuple[str, int]:
        """Stream record batches into one parquet object; returns its URI and row count."""
        uri = self.uri(*parts)
        fs, path = fsspec.core.url_to_fs(uri)
        local = not is_url(uri)
        directory = Path(path).parent if local else None
        if local:
            directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{Path(path).name}.", suffix=".tmp")
        os.close(fd)
        rows = 0
        try:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            if local:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            else:
                fs.put_file(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return uri, rows
