"""Gates on each raw shard: the contract, empty and over-long texts, duplicates within and across shards."""

import dagster as dg
import numpy as np

from embedding_assets.assets.ingest import raw_corpus
from embedding_assets import versions
from embedding_assets.paths import shard_file
from embedding_assets.checks.expectations import validate
from embedding_assets.checks.reasons import bounds_table
from embedding_assets.partitions import corpus_shards
from embedding_assets.engine.errors import InputError
from embedding_assets.resources import CorpusSource, QualityGates, Storage


def read_ids_and_texts(storage: Storage, raw: versions.Version, shard: str):
    with storage.open_parquet(*raw.file(shard_file(shard))) as parquet:
        return parquet.read(columns=["id", "text"]).to_pandas()


@dg.asset_check(asset=raw_corpus, partitions_def=corpus_shards, blocking=True, description="Required columns; ids non-null and unique; texts non-empty and within length bounds; few duplicate texts; rows > 0.")
def raw_corpus_contract(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    shard = context.partition_key
    frame = read_ids_and_texts(storage, versions.latest(context, "raw_corpus", shard), shard)
    text = frame["text"].fillna("")
    frame["stripped_length"] = text.str.strip().str.len()
    frame["length"] = text.str.len()
    cap = gates.failing_ids_cap
    empty_ids = frame.loc[frame["stripped_length"] < gates.min_text_chars, "id"].head(cap).tolist()
    long_ids = frame.loc[frame["length"] > gates.max_text_chars, "id"].head(cap).tolist()
    duplicate_ids = frame.loc[frame["id"].duplicated(keep=False), "id"].drop_duplicates().head(cap).tolist()
    duplicate_text_ratio = float(frame["text"].duplicated().mean()) if len(frame) else 0.0

    def expectations(gxe):
        return [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="id"),
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValuesToBeBetween(column="stripped_length", min_value=gates.min_text_chars),
            gxe.ExpectColumnValuesToBeBetween(column="length", max_value=gates.max_text_chars),
            gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(column="text", min_value=1.0 - gates.max_duplicate_text_ratio),
        ]

    return validate(
        frame,
        f"raw_corpus[{shard}]",
        expectations,
        {
            "shard": shard,
            **{key: ids for key, ids in (("duplicate_ids", duplicate_ids), ("empty_text_ids", empty_ids), ("overlong_text_ids", long_ids)) if ids},
            "duplicate_text_ratio": round(duplicate_text_ratio, 4),
        },
        cap,
    )


@dg.asset_check(asset=raw_corpus, partitions_def=corpus_shards, blocking=True, description="No id of this shard occurs in another materialised shard of the corpus location.")
def raw_corpus_ids_unique_across_shards(context: dg.AssetCheckExecutionContext, corpus: CorpusSource, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    shard = context.partition_key
    with storage.open_parquet(*versions.latest(context, "raw_corpus", shard).file(shard_file(shard))) as parquet:
        ids = parquet.read(columns=["id"])["id"].to_numpy(zero_copy_only=False).astype(str)
    clashes: dict[str, list[str]] = {}
    try:
        in_location = set(corpus.shards())
    except InputError:
        in_location = set(context.instance.get_dynamic_partitions(corpus_shards.name))
    # Partitions of a corpus that has left the location are not compared: they are not read either.
    others = sorted(s for s in context.instance.get_dynamic_partitions(corpus_shards.name) if s != shard and s in in_location)
    for other in others:
        stored = versions.latest_version(context.instance, "raw_corpus", other)
        if stored is None:
            continue
        with storage.open_parquet(*stored.file(shard_file(other))) as parquet:
            for batch in parquet.iter_batches(columns=["id"], batch_size=65536):
                shared = np.intersect1d(ids, batch.column("id").to_numpy(zero_copy_only=False).astype(str))
                if len(shared):
                    clashes.setdefault(other, []).extend(shared[: gates.failing_ids_cap].tolist())
    return dg.AssetCheckResult(
        passed=not clashes,
        metadata={
            "shard": shard,
            "shards_compared": len(others),
            "bounds": bounds_table([(f"ids shared with the {len(others)} other shards of the location", sum(len(v) for v in clashes.values()), "0", not clashes)]),
            **({"clashing_shards": sorted(clashes), "clashing_ids": sorted({i for v in clashes.values() for i in v})[: gates.failing_ids_cap]} if clashes else {}),
        },
    )
