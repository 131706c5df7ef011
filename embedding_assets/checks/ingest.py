"""Gates on each raw shard (the contract, empty and over-long texts, duplicate ids and texts within it),
and on the corpus id index (ids unique across shards)."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets import versions
from embedding_assets.assets.ingest import corpus_id_hash, corpus_id_index, raw_corpus
from embedding_assets.checks.expectations import validate
from embedding_assets.checks.reasons import bounds_table
from embedding_assets.partitions import corpus_shards
from embedding_assets.paths import CORPUS_ID_INDEX_FILE, shard_file
from embedding_assets.resources import QualityGates, Storage

# Collisions kept with their shards for the report; all of them are counted.
MAX_COLLISIONS_KEPT = 10_000


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


def shared_hashes(storage: Storage, index: versions.Version) -> tuple[dict[int, set[str]], int, int]:
    """Hashes that more than one shard holds, from one pass over the index (sorted by hash):
    hash -> shards for the first MAX_COLLISIONS_KEPT of them, how many there are in all, and the ids indexed."""
    found: dict[int, set[str]] = {}
    total = 0
    last_hash, last_shard = None, None
    with storage.open_parquet(*index.file(CORPUS_ID_INDEX_FILE)) as parquet:
        indexed = parquet.metadata.num_rows
        for batch in parquet.iter_batches(batch_size=1 << 20):
            hashes = batch.column("id_hash").to_numpy()
            shards = batch.column("shard").to_numpy(zero_copy_only=False)
            if last_hash is not None:
                hashes, shards = np.r_[np.uint64(last_hash), hashes], np.r_[np.array([last_shard], dtype=object), shards]
            for i in np.flatnonzero((hashes[1:] == hashes[:-1]) & (shards[1:] != shards[:-1])):
                key = int(hashes[i])
                if key not in found:
                    total += 1
                    if len(found) >= MAX_COLLISIONS_KEPT:
                        continue
                    found[key] = set()
                found[key] |= {shards[i], shards[i + 1]}
            last_hash, last_shard = hashes[-1], shards[-1]
    return found, total, indexed


def ids_of(storage: Storage, raw: versions.Version, shard: str, wanted: set[int]) -> dict[int, str]:
    """The ids of `shard` whose hash is in `wanted` (only shards named in a collision are read)."""
    out: dict[int, str] = {}
    targets = np.fromiter(wanted, np.uint64, len(wanted))
    with storage.open_parquet(*raw.file(shard_file(shard))) as parquet:
        for batch in parquet.iter_batches(batch_size=65536, columns=["id"]):
            ids = pc.drop_null(batch.column("id")).cast(pa.string())
            hashes = corpus_id_hash(ids)
            for i in np.flatnonzero(np.isin(hashes, targets)):
                out[int(hashes[i])] = ids[int(i)].as_py()
    return out


@dg.asset_check(
    asset=corpus_id_index,
    blocking=True,
    description="No document id occurs in two shards of the corpus location: one pass over the merged id index, naming both shards and the ids.",
)
def corpus_ids_unique_across_shards(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    index = versions.latest(context, "corpus_id_index")
    found, total, indexed = shared_hashes(storage, index)
    collisions = []
    if found:
        wanted = dict(list(found.items())[: gates.failing_ids_cap])
        ids: dict[int, str] = {}
        for shard in sorted(set().union(*wanted.values())):
            raw = versions.latest_version(context.instance, "raw_corpus", shard)
            if raw is not None:
                ids.update(ids_of(storage, raw, shard, set(wanted)))
        collisions = [{"id": ids.get(h, f"hash {h:016x}"), "shards": sorted(where)} for h, where in wanted.items()]
    pairs = sorted({(a, b) for where in found.values() for a in where for b in where if a < b})
    return dg.AssetCheckResult(
        passed=total == 0,
        metadata={
            "ids_indexed": indexed,
            "bounds": bounds_table([(f"ids in two shards or more, of {indexed:,} indexed", total, "0", total == 0)]),
            **(
                {
                    "clashing_shards": sorted({s for where in found.values() for s in where}),
                    "clashing_shard_pairs": [f"{a} & {b}" for a, b in pairs[:100]],
                    "clashing_ids": sorted(c["id"] for c in collisions),
                    "collisions": dg.MetadataValue.table(
                        [dg.TableRecord({"id": c["id"], "shards": ", ".join(c["shards"])}) for c in collisions],
                        dg.TableSchema(columns=[dg.TableColumn("id", "string", "a document id"), dg.TableColumn("shards", "string", "the shards that hold it")]),
                    ),
                }
                if total
                else {}
            ),
        },
    )
