"""Gates on the curation inputs: the reference set and the annotations as stored."""

import dagster as dg
import numpy as np

from embedding_assets.assets.reference import NEGATIVE, REFERENCE, annotations, reference_set
from embedding_assets import versions
from embedding_assets.paths import ANNOTATIONS_FILE, REFERENCE_FILE
from embedding_assets.checks.reasons import bounds_table, failed_entry
from embedding_assets.lineage import latest_metadata_value
from embedding_assets.resources import Curation, QualityGates, Storage


@dg.asset_check(
    asset=reference_set,
    blocking=True,
    description="Enough reference documents for the curation mode, held-out ones among them; no empty or repeated texts or ids; the share also found in the corpus, reported.",
)
def reference_set_contract(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates, curation: Curation) -> dg.AssetCheckResult:
    with storage.open_parquet(*versions.latest(context, "reference_set").file(REFERENCE_FILE)) as parquet:
        table = parquet.read(columns=["id", "text", "role", "split"])
    roles = np.array(table["role"].to_pylist())
    texts = table["text"].to_pylist()
    references = int((roles == REFERENCE).sum())
    negatives = int((roles == NEGATIVE).sum())
    heldout = int(((roles == REFERENCE) & (np.array(table["split"].to_pylist()) == "heldout")).sum())
    failed = []
    if references < gates.min_reference_documents:
        failed.append(f"{references} reference documents < {gates.min_reference_documents} (QualityGates.min_reference_documents)")
    if 0 < negatives < gates.min_reference_documents:
        failed.append(f"{negatives} negative reference documents < {gates.min_reference_documents}")
    if heldout == 0:
        failed.append("no reference document is held out, so the head cannot be measured; add reference documents")
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        failed.append(f"{empty} empty texts")
    if len(set(texts)) != len(texts) or len(set(table["id"].to_pylist())) != table.num_rows:
        failed.append("repeated texts or ids")
    share = latest_metadata_value(context.instance, "reference_set", "in_corpus_share")
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            **failed_entry(failed),
            "mode": curation.resolved_mode(),
            "bounds": bounds_table([
                ("reference documents", references, f">= {gates.min_reference_documents} (QualityGates.min_reference_documents)", references >= gates.min_reference_documents),
                ("negative reference documents", negatives, f"0 or >= {gates.min_reference_documents}", not 0 < negatives < gates.min_reference_documents),
                ("held-out reference documents", heldout, ">= 1", heldout > 0),
                ("empty texts", empty, "0", not empty),
            ]),
            "reference_documents": references,
            "heldout_reference_documents": heldout,
            "negative_documents": negatives,
            "in_corpus_share": share if share is not None else "n/a",
        },
    )


@dg.asset_check(
    asset=annotations,
    blocking=True,
    description="Every annotated document found, once; label annotations hold both kinds; enough held-out annotations to measure the head.",
)
def annotations_contract(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    with storage.open_parquet(*versions.latest(context, "annotations").file(ANNOTATIONS_FILE)) as parquet:
        table = parquet.read()
    ids = table["id"].to_pylist()
    heldout = sum(1 for s in table["split"].to_pylist() if s == "heldout")
    failed = []
    if len(set(ids)) != len(ids):
        failed.append("an id is annotated more than once")
    if table.num_rows < gates.min_reference_documents:
        failed.append(f"{table.num_rows} annotated documents < {gates.min_reference_documents} (QualityGates.min_reference_documents)")
    if heldout == 0:
        failed.append("no annotated document is held out, so the head cannot be measured")
    distinct = len(set(table["label"].to_pylist())) if "label" in table.column_names else None
    if distinct is not None and distinct < 2:
        failed.append("every annotation has the same label; a classifier needs two kinds")
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            **failed_entry(failed),
            "bounds": bounds_table([
                ("annotated documents", table.num_rows, f">= {gates.min_reference_documents} (QualityGates.min_reference_documents)", table.num_rows >= gates.min_reference_documents),
                ("held-out annotated documents", heldout, ">= 1", heldout > 0),
                ("distinct labels", distinct if distinct is not None else "n/a (scores)", ">= 2 (label annotations)", distinct is None or distinct >= 2),
                ("ids annotated more than once", len(ids) - len(set(ids)), "0", len(set(ids)) == len(ids)),
            ]),
            "annotated_documents": table.num_rows,
            "heldout_documents": heldout,
        },
    )
