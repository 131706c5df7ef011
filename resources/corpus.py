"""The corpus source: a local directory or an s3:// prefix whose files are the shards."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from embedding_assets.corpus import list_shards
from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR


class CorpusSource(dg.ConfigurableResource):
    location: str = Field(default=str(SAMPLE_CORPUS_DIR), description="Directory or s3://bucket/prefix holding the shard files (parquet, jsonl, txt).")
    batch_size: int = Field(default=8192, description="Documents per record batch when streaming a shard.")

    def shards(self) -> dict[str, str]:
        return list_shards(self.location)
