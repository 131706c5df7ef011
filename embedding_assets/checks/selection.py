"""Gates on selection: clusters not empty, duplicate groups consistent, the keep list complete and explained."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.assets.selection import (
    NEAR_DUPLICATES_FILE,
    SELECTION_FILE,
    clusters,
    near_duplicates,
    read_clusters,
    read_model,
    selection,
)
from embedding_assets import versions
from embedding_assets.checks.reasons import bounds_table, failed_entry
from embedding_assets.resources import QualityGates, Storage


@dg.asset_check(asset=clusters, blocking=True, description="Every cluster holds sample documents, the centroids are unit vectors of the current model; the size spread is reported.")
def clusters_not_empty(context: dg.AssetCheckExecutionContext, storage: Storage) -> dg.AssetCheckResult:
    config, centroids, sizes = read_clusters(storage, versions.latest(context, "clusters"))
    model_version = read_model(storage, versions.published(context, "distilled_model")).version
    failed = []
    empty = np.flatnonzero(sizes == 0).tolist()
    if empty:
        failed.append(f"{len(empty)} of {len(sizes)} clusters hold no sample document: {empty[:20]}")
    if config.get("model_version") != model_version:
        failed.append(f"centroids are of model {config.get('model_version')}, the current model is {model_version}")
    norms = np.linalg.norm(centroids, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        failed.append(f"centroid norms range {norms.min():.4f}..{norms.max():.4f}, expected 1")
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            **failed_entry(failed),
            "bounds": bounds_table([
                ("clusters with no sample document", len(empty), "0", not empty),
                ("model of the centroids", config.get("model_version"), f"= the current distilled_model {model_version}", config.get("model_version") == model_version),
                ("centroid norms", f"{norms.min():.4f} to {norms.max():.4f}", "1 ± 0.001", bool(np.allclose(norms, 1.0, atol=1e-3))),
            ]),
            "k": len(sizes),
            "empty_clusters": len(empty),
            "size_min": int(sizes.min()),
            "size_median": round(float(np.median(sizes)), 1),
            "size_max": int(sizes.max()),
            "size_max_over_median": round(float(sizes.max() / max(np.median(sizes), 1)), 2),
            "size_coefficient_of_variation": round(float(sizes.std() / max(sizes.mean(), 1e-12)), 4),
        },
    )


@dg.asset_check(asset=near_duplicates, blocking=True, description="Each document in one group at most; every representative heads its own group; every cosine at or above the threshold.")
def near_duplicates_groups(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    with storage.open_parquet(*versions.latest(context, "near_duplicates").file(NEAR_DUPLICATES_FILE)) as parquet:
        table = parquet.read()
        threshold = float((parquet.schema_arrow.metadata or {}).get(b"threshold", b"0"))
    failed = []
    ids = table["id"]
    if pc.count_distinct(ids).as_py() != table.num_rows:
        failed.append("a document is in more than one group")
    heads = table.filter(pc.equal(ids, table["representative_id"]))
    missing = pc.filter(table["representative_id"], pc.invert(pc.is_in(table["representative_id"], value_set=heads["id"].combine_chunks()))).unique().to_pylist()
    if missing:
        failed.append(f"representatives that head no group: {missing[: gates.failing_ids_cap]}")
    group_heads = table.group_by("group").aggregate([("representative_id", "count_distinct")])
    if table.num_rows and pc.max(group_heads["representative_id_count_distinct"]).as_py() != 1:
        failed.append("a group has more than one representative")
    low = table.filter(pc.less(table["cosine_to_representative"], threshold - 1e-6))["id"].to_pylist()
    if low:
        failed.append(f"members below the threshold {threshold}: {low[: gates.failing_ids_cap]}")
    singletons = table.group_by("group").aggregate([("id", "count")]).filter(pc.less(pc.field("id_count"), 2)).num_rows
    if singletons:
        failed.append(f"{singletons} groups have a single member")
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            **failed_entry(failed),
            "bounds": bounds_table([
                ("documents in more than one group", table.num_rows - pc.count_distinct(ids).as_py(), "0", pc.count_distinct(ids).as_py() == table.num_rows),
                ("representatives that head no group", len(missing), "0", not missing),
                ("members below the cosine threshold", len(low), f"0 (threshold {threshold})", not low),
                ("groups with a single member", singletons, "0", not singletons),
            ]),
            "rows": table.num_rows,
            "groups": heads.num_rows,
            "threshold": threshold,
        },
    )


@dg.asset_check(asset=selection, blocking=True, description="Kept documents carry no reason, dropped ones one of score, duplicate_of:<id>, cluster_cap; ids are unique and every duplicate_of names a listed document.")
def selection_explained(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    with storage.open_parquet(*versions.latest(context, "selection").file(SELECTION_FILE)) as parquet:
        table = parquet.read(columns=["id", "keep", "reason"])
    failed = []
    keep = table["keep"].to_numpy(zero_copy_only=False)
    reason = table["reason"]
    if pc.count_distinct(table["id"]).as_py() != table.num_rows:
        failed.append("an id is listed more than once")
    if pc.sum(pc.is_valid(reason.filter(table["keep"]))).as_py():
        failed.append("kept documents with a reason")
    dropped = reason.filter(pc.invert(table["keep"]))
    known = pc.or_(pc.is_in(dropped, value_set=pa.array(["score", "cluster_cap"])), pc.starts_with(dropped, "duplicate_of:"))
    unexplained = pc.sum(pc.invert(pc.fill_null(known, False))).as_py() or 0
    if unexplained:
        failed.append(f"{unexplained} dropped documents without a known reason")
    targets = pc.utf8_slice_codeunits(dropped.filter(pc.fill_null(pc.starts_with(dropped, "duplicate_of:"), False)), len("duplicate_of:"))
    strangers = pc.filter(targets, pc.invert(pc.is_in(targets, value_set=table["id"].combine_chunks()))).to_pylist()
    if strangers:
        failed.append(f"duplicate_of names documents not in the corpus: {strangers[: gates.failing_ids_cap]}")
    counts = {"kept": int(keep.sum()), "score": 0, "duplicate_of": 0, "cluster_cap": 0}
    for value in dropped.to_pylist():
        if value:
            key = value.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
    bounds = bounds_table([
        ("ids listed more than once", table.num_rows - pc.count_distinct(table["id"]).as_py(), "0", pc.count_distinct(table["id"]).as_py() == table.num_rows),
        ("dropped documents without a known reason", unexplained, "0 (score, duplicate_of:<id> or cluster_cap)", not unexplained),
        ("duplicate_of naming documents not listed", len(strangers), "0", not strangers),
    ])
    return dg.AssetCheckResult(passed=not failed, metadata={**failed_entry(failed), "bounds": bounds, "rows": table.num_rows, **counts})
