"""The corpus report: every scored shard in one table, the corpus totals and one score histogram."""

import json
import time

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from embedding_assets import versions
from embedding_assets.assets.curation import read_head, scored_corpus
from embedding_assets.assets.ingest import retryable
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, short_hash
from embedding_assets.partitions import corpus_shards
from embedding_assets.plots import score_histogram
from embedding_assets.progress import StepMemory, throughput
from embedding_assets.engine.errors import InputError
from embedding_assets.resources import CorpusSource, Storage
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY
from embedding_assets.stored import open_scored_shard

REPORT_BINS = 40
# Rows of the table of shards; past it, the shards that need a look come first.
MAX_LISTED_SHARDS = 1000
DRIFT_CHECK = "scored_corpus_drift"

# After scoring: when any scored shard changes (or the report is missing), once no shard is being scored.
AFTER_SCORING = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after scoring")

SHARDS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("shard", "string", "corpus shard (scored_corpus partition)"),
        dg.TableColumn("status", "string", "scored; not scored yet; refused, when its newest scoring failed a blocking gate (readers then use no version of it); or departed, when its file is no longer in the corpus location (not in the totals)"),
        dg.TableColumn("documents", "int", "rows in the scored file"),
        dg.TableColumn("kept", "int", "documents with keep = true"),
        dg.TableColumn("keep_fraction", "float", "kept / documents, 3 decimals"),
        dg.TableColumn("drift_check", "string", f"{DRIFT_CHECK} on the version read: passed, failed (warn or error) or not run"),
        dg.TableColumn("score_psi", "float", "population stability index of the shard's scores against its previous scoring by the same head; empty on a first scoring"),
        dg.TableColumn("model_version", "string", "distilled_model version that embedded the shard"),
        dg.TableColumn("classifier_version", "string", "quality_classifier version that scored the shard"),
    ]
)


def drift_of(instance: dg.DagsterInstance, scored: versions.Version) -> tuple[str, float | None]:
    """The drift gate's outcome and PSI on this very version of the shard."""
    evaluation = versions.evaluation_for(instance, dg.AssetCheckKey(scored_corpus.key, DRIFT_CHECK), scored)
    if evaluation is None:
        return "not run", None
    psi = evaluation.metadata.get("score_psi")
    psi = psi.value if psi is not None and isinstance(psi.value, (int, float)) else None
    return ("passed" if evaluation.passed else f"failed ({evaluation.severity.value.lower()})"), psi


def published_shards(context, shards: list[str], listing: dict[str, str]) -> dict[str, versions.Version | str]:
    """Shard -> the version of scored_corpus[shard] readers use, or why there is none; a few queries for all."""
    instance = context.instance
    latest = versions.latest_versions(instance, "scored_corpus", shards)
    refused = versions.gate_problems_by_partition(instance, latest)
    found: dict[str, versions.Version | str] = {}
    for shard in shards:
        if shard not in listing:
            found[shard] = "departed: its file is no longer in the corpus location"
        elif shard not in latest:
            found[shard] = "not scored"
        elif shard in refused:
            found[shard] = "refused: its newest scoring failed a blocking gate (see its checks)"
        else:
            found[shard] = latest[shard]
    return found


def listed_rows(rows: list[dict], cap: int) -> tuple[list[dict], str]:
    """The rows the table of shards shows, in shard order, and what they are: every one up to `cap`;
    beyond it, every shard that needs a look (not scored, refused, departed, drift failed) first, then
    scored ones, so a corpus of thousands of shards keeps a table the UI can show."""
    if len(rows) <= cap:
        return rows, f"all {len(rows):,} shards"
    attention = [i for i, r in enumerate(rows) if r["status"] != "scored" or r["drift_check"].startswith("failed")]
    shown = set(attention[:cap])
    shown |= set([i for i in range(len(rows)) if i not in shown][: cap - len(shown)])
    return [rows[i] for i in sorted(shown)], (
        f"{len(shown):,} of {len(rows):,} shards: every one not scored, refused, departed or failing its drift gate "
        f"({min(len(attention), cap):,} listed), then scored ones in shard order; the totals cover them all"
    )


def footer(parquet) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}


@dg.asset(
    deps=[scored_corpus],
    group_name="curation",
    kinds={"table"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["corpus_report"],
    retry_policy=STORAGE_RETRY_POLICY,
    automation_condition=AFTER_SCORING,
    description=(
        "The whole scored corpus at a glance: one row per shard (documents, kept, keep fraction, drift, model and classifier "
        "versions), the corpus totals and one histogram of every document's score with the keep threshold. Read from the scored "
        "files' score and keep columns, shard by shard in record batches; refreshed after scoring."
    ),
)
def corpus_report(context: dg.AssetExecutionContext, corpus: CorpusSource, storage: Storage) -> dg.MaterializeResult:
    memory = StepMemory.start()
    started = time.perf_counter()
    try:
        listing = corpus.shards()
    except InputError as exc:
        raise dg.Failure(str(exc), allow_retries=retryable(exc)) from exc
    head = read_head(storage, versions.published(context, "quality_classifier"))
    low, high = head.score_range
    counts = np.zeros(REPORT_BINS, dtype=np.int64)
    rows, produced_by = [], set()
    documents = kept = 0
    shards = sorted(context.instance.get_dynamic_partitions(corpus_shards.name))
    for shard, scored in published_shards(context, shards, listing).items():
        if isinstance(scored, str):
            rows.append({"shard": shard, "status": scored, "documents": None, "kept": None, "keep_fraction": None,
                         "drift_check": "not run", "score_psi": None, "model_version": None, "classifier_version": None})
            continue
        shard_kept = 0
        with open_scored_shard(storage, scored) as parquet:
            meta = footer(parquet)
            shard_documents = parquet.metadata.num_rows
            for batch in parquet.iter_batches(batch_size=65_536, columns=["score", "keep"]):
                shard_kept += int(pc.sum(batch.column("keep")).as_py() or 0)
                scores = batch.column("score").drop_null().to_numpy(zero_copy_only=False)
                if head.scores and len(scores):
                    counts += np.histogram(np.clip(scores, low, high), bins=REPORT_BINS, range=(low, high))[0]
        drift, psi = drift_of(context.instance, scored)
        produced_by.add((meta.get("model_version"), meta.get("classifier_version")))
        rows.append({
            "shard": shard, "status": "scored", "documents": shard_documents, "kept": shard_kept,
            "keep_fraction": round(shard_kept / max(shard_documents, 1), 3), "drift_check": drift,
            "score_psi": round(psi, 4) if psi is not None else None,
            "model_version": meta.get("model_version"), "classifier_version": meta.get("classifier_version"),
        })
        documents += shard_documents
        kept += shard_kept
    listed, listed_what = listed_rows(rows, MAX_LISTED_SHARDS)
    scored_rows = [r for r in rows if r["status"] == "scored"]
    if not scored_rows:
        raise dg.Failure("no shard of scored_corpus has been materialised; score the corpus first (score_corpus)", allow_retries=False)
    stale = [r["shard"] for r in scored_rows if r["classifier_version"] != head.version]
    if stale:
        context.log.warning(f"{len(stale)} shards were scored by another quality_classifier than the current {head.version}: {stale[:20]}")
    keep_fraction = kept / max(documents, 1)
    metadata = {
        "shards": dg.MetadataValue.table([dg.TableRecord(r) for r in listed], schema=SHARDS_SCHEMA),
        "shards_listed": listed_what,
        "documents": documents,
        "kept": kept,
        "keep_fraction": round(keep_fraction, 4),
        "shards_scored": len(scored_rows),
        "shards_not_scored": sum(r["status"] == "not scored" for r in rows),
        "shards_refused": sum(r["status"].startswith("refused") for r in rows),
        "shards_departed": sum(r["status"].startswith("departed") for r in rows),
        "shards_drift_failed": sum(r["drift_check"].startswith("failed") for r in scored_rows),
        "shards_by_another_classifier": len(stale),
        "distinct_model_classifier_pairs": len(produced_by),
        "classifier_version": head.version,
    }
    if head.scores:
        summary = (
            f"Scores of all {documents:,} documents in {len(scored_rows)} shards; {kept:,} kept ({100 * keep_fraction:.1f}%) "
            f"at the keep threshold {head.threshold:.3f}"
        )
        metadata["threshold"] = round(head.threshold, 4)
        metadata.update(score_histogram([int(c) for c in counts], head.threshold, (low, high), summary).entries("score_histogram"))
    else:
        metadata["scores"] = "none: no curation is configured, so documents are embedded, not scored"
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(json.dumps(rows, sort_keys=True), repr(head.threshold), *map(str, counts))),
        metadata={**metadata, **throughput(time.perf_counter() - started, documents), **memory.report()},
    )
