"""The corpus source: a local directory or an s3:// prefix whose files are the shards."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
from pydantic import Field, field_validator

from embedding_assets.corpus import Listing, read_shard, scan_location, shard_fingerprints
from embedding_assets.resources.s3 import S3Settings, is_s3
from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR


class CorpusSource(dg.ConfigurableResource):
    location: str = Field(default=str(SAMPLE_CORPUS_DIR), description="Directory or s3://bucket/prefix holding the shard files (parquet, jsonl, txt).")
    batch_size: int = Field(default=8192, description="Documents per record batch when streaming a shard.")
    s3: S3Settings = Field(default=S3Settings(), description="Endpoint, region and profile used when the location is on S3.")

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"corpus batch_size must be >= 1, got {value}")
        return value

    def filesystem(self):
        """The filesystem the shards live on: s3fs with the S3 settings, or None for the URL's default."""
        return self.s3.filesystem() if is_s3(self.location) else None

    def listing(self) -> Listing:
        """The shard files under the location, and the files that are not shards, each with why."""
        return scan_location(self.location, self.filesystem())

    def shards(self) -> dict[str, str]:
        return self.listing().shards

    def fingerprints(self) -> dict[str, str]:
        """Shard key -> size and ETag or mtime of its file, to tell a rewritten shard from an unchanged one."""
        return shard_fingerprints(self.location, self.filesystem())

    def read(self, url: str) -> Iterator[pa.RecordBatch]:
        """Stream one shard (a URL from `shards`) in record batches under the corpus contract."""
        return read_shard(url, self.batch_size, self.filesystem())
