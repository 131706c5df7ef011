"""Versions that make lineage auditable: content hashes of data, and the code version of each asset.

Dagster compares the data versions an asset was built from with the current ones to say what
is stale; the same versions are written into the scored shards so a file alone tells its origin.
"""

import hashlib
from collections.abc import Iterable, Iterator

import dagster as dg
import pyarrow as pa

OWNERS = ["team:data-curation"]

# Bump an asset's entry when its logic changes what it produces.
CODE_VERSIONS = {
    "raw_corpus": "2",
    "corpus_id_index": "1",
    "training_sample": "2",
    "features": "2",
    "teacher_model": "1",
    "teacher_embeddings": "3",
    "distilled_model": "4",
    "reference_set": "1",
    "annotations": "1",
    "quality_classifier": "4",
    "scored_corpus": "4",
    "clusters": "1",
    "near_duplicates": "1",
    "selection": "1",
    "corpus_report": "1",
}


def short_hash(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()[:16]


class BatchHasher:
    """Hashes record batches as they stream past, so a table's version costs no second read."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def wrap(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self._digest.update(batch.serialize())
            yield batch

    @property
    def version(self) -> str:
        return self._digest.hexdigest()[:16]


def _latest_materialization(instance: dg.DagsterInstance, key: str, partition: str | None) -> dg.AssetMaterialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0].asset_materialization if records else None


def latest_data_version(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> str | None:
    """The data version of the latest materialisation of `key` (and `partition`), from the event log."""
    materialization = _latest_materialization(instance, key, partition)
    return materialization.tags.get("dagster/data_version") if materialization else None


def latest_metadata_value(instance: dg.DagsterInstance, key: str, entry: str, partition: str | None = None):
    """One metadata entry of the latest materialisation of `key` (and `partition`), or None."""
    materialization = _latest_materialization(instance, key, partition)
    if materialization is None or entry not in materialization.metadata:
        return None
    return materialization.metadata[entry].value


def code_versions_table() -> dg.TableMetadataValue:
    """CODE_VERSIONS as a table: one row per asset."""
    schema = dg.TableSchema(columns=[
        dg.TableColumn("asset", "string", "asset of this code location"),
        dg.TableColumn("code_version", "string", "version of its code; bumped when its logic changes what it produces"),
    ])
    return dg.MetadataValue.table([dg.TableRecord({"asset": k, "code_version": v}) for k, v in sorted(CODE_VERSIONS.items())], schema=schema)
