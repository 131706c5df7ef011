"""Gates on curation: the classifier's quality and calibration, and each scored shard against its raw shard."""

from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd

from embedding_assets.assets.curation import SCORE_BINS, calibration_scores, quality_classifier, scored_corpus
from embedding_assets.checks.expectations import validate
from embedding_assets.checks.partitioned import per_shard
from embedding_assets import versions
from embedding_assets.checks.reasons import bounds_table, failed_entry
from embedding_assets.paths import HEAD_FILE, MODEL_FILE, shard_file
from embedding_assets.partitions import corpus_shards
from embedding_assets.stored import model_config, read_sample
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.curation import CurationHead
from embedding_assets.resources import CorpusSource, QualityGates, Storage


def load_head(storage: Storage, version: versions.Version) -> CurationHead:
    return CurationHead.from_bytes(storage.read_bytes(*version.file(HEAD_FILE)))


@dg.asset_check(
    asset=quality_classifier,
    blocking=True,
    description="The head ranks held-out documents it did not learn from above its floor (AUC, or Spearman for annotation scores); its threshold keeps the target share of the corpus documents it was calibrated on, scored again.",
)
def quality_classifier_calibration(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates, corpus: CorpusSource) -> dg.AssetCheckResult:
    head = load_head(storage, versions.latest(context, "quality_classifier"))
    model = LexicalEmbedder.from_bytes(storage.read_bytes(*versions.published(context, "distilled_model").file(MODEL_FILE)))
    failed = []
    if head.model_version != model.version:
        failed.append(f"fitted on model {head.model_version}, current model is {model.version}")
    if not head.scores:
        return dg.AssetCheckResult(passed=not failed, metadata={"mode": head.mode, **failed_entry(failed), "note": "no curation configured: nothing is scored"})
    sample = read_sample(storage, versions.published(context, "training_sample"), ["id", "text", "split"])
    calibration = calibration_scores(context, storage, corpus, model, head, sample)
    keep_fraction = float(head.keep(calibration.scores).mean())
    measure, floor, setting = (
        ("held-out Spearman", gates.min_heldout_spearman, "min_heldout_spearman") if head.kind == "ridge" else ("held-out AUC", gates.min_heldout_auc, "min_heldout_auc")
    )
    quality = head.evaluation.get("heldout_spearman" if head.kind == "ridge" else "heldout_auc")
    quality_ok = quality is not None and quality >= floor
    if not quality_ok:
        failed.append(f"{measure} {quality} < {floor}")
    keep_ok = abs(keep_fraction - head.target_keep_fraction) <= gates.sample_keep_tolerance
    if not keep_ok:
        failed.append(f"calibration keep fraction {keep_fraction:.4f} is not {head.target_keep_fraction} ± {gates.sample_keep_tolerance}")
    bounds = [
        (measure, f"{quality:.3f}" if quality is not None else "n/a", f">= {floor} (QualityGates.{setting})", quality_ok),
        (
            f"keep fraction of the {len(calibration.scores):,} calibration documents",
            f"{keep_fraction:.3f}",
            f"{head.target_keep_fraction} ± {gates.sample_keep_tolerance} (target keep fraction ± QualityGates.sample_keep_tolerance)",
            keep_ok,
        ),
        ("model the head was fitted on", head.model_version, f"= the current distilled_model {model.version}", head.model_version == model.version),
    ]
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            "mode": head.mode,
            **failed_entry(failed),
            "bounds": bounds_table(bounds),
            "calibration_keep_fraction": round(keep_fraction, 4),
            "threshold": round(head.threshold, 4),
        },
    )


def read_scored(storage: Storage, scored: versions.Version, shard: str) -> pd.DataFrame:
    """Ids, scores and keep flags of a scored shard; the embedding dimension from the file's schema, not its rows."""
    with storage.open_parquet(*scored.file(shard_file(shard))) as parquet:
        frame = parquet.read(columns=["id", "score", "keep"]).to_pandas()
        frame["embedding_dim"] = parquet.schema_arrow.field("embedding").type.list_size
    return frame


@dg.asset_check(asset=scored_corpus, partitions_def=corpus_shards, blocking=True, description="The same ids as the raw shard; scores within the head's range (none when no curation is configured); embeddings of the model's dimension.")
def scored_corpus_contract(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> Iterator:
    yield from per_shard(context, lambda shard: contract(context, storage, gates, shard))


def contract(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates, shard: str) -> dg.AssetCheckResult:
    scored = read_scored(storage, versions.latest(context, "scored_corpus", shard), shard)
    with storage.open_parquet(*versions.published(context, "raw_corpus", shard).file(shard_file(shard))) as parquet:
        raw_ids = parquet.read(columns=["id"])["id"].to_pylist()
    model_dim = int(model_config(storage, versions.published(context, "distilled_model"))["dims"][-1])
    head = load_head(storage, versions.published(context, "quality_classifier"))
    scored_ids = scored["id"].tolist()
    missing = sorted(set(raw_ids) - set(scored_ids))[: gates.failing_ids_cap]
    extra = sorted(set(scored_ids) - set(raw_ids))[: gates.failing_ids_cap]
    low, high = head.score_range

    def expectations(gxe):
        scores = (
            [gxe.ExpectColumnValuesToNotBeNull(column="score"), gxe.ExpectColumnValuesToBeBetween(column="score", min_value=low, max_value=high)]
            if head.scores
            else [gxe.ExpectColumnValuesToBeNull(column="score")]
        )
        return [
            gxe.ExpectTableRowCountToEqual(value=len(raw_ids)),
            *scores,
            gxe.ExpectColumnValuesToBeInSet(column="embedding_dim", value_set=[model_dim]),
        ]

    result = validate(scored, f"scored_corpus[{shard}]", expectations, {"shard": shard, **({"missing_ids": missing} if missing else {}), **({"unexpected_ids": extra} if extra else {})}, gates.failing_ids_cap)
    if scored_ids != raw_ids:
        return dg.AssetCheckResult(passed=False, metadata={**result.metadata, "ids_match_raw_shard": False})
    return result


def histogram_stability(counts: list[int], reference: list[int]) -> float:
    """PSI of one histogram against another over the same bins."""
    actual = np.maximum(np.asarray(counts, float) / max(sum(counts), 1), 1e-4)
    expected = np.maximum(np.asarray(reference, float) / max(sum(reference), 1), 1e-4)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def score_bins(scores: np.ndarray, score_range: tuple[float, float]) -> list[int]:
    low, high = score_range
    return [int(c) for c in np.histogram(np.clip(scores, low, high), bins=SCORE_BINS, range=(low, high))[0]]


@dg.asset_check(
    asset=scored_corpus,
    partitions_def=corpus_shards,
    blocking=True,
    description=(
        "The shard against what it should be compared with: the keep fraction its drift reference expects (QualityGates.drift_references, "
        "per source), else its own previous scoring; and its score distribution (PSI) against its previous scoring by the same head. "
        "A first scoring with no reference is the baseline. Severity is QualityGates.drift_severity (warn or block)."
    ),
)
def scored_corpus_drift(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> Iterator:
    yield from per_shard(context, lambda shard: drift(context, storage, gates, shard))


def drift(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates, shard: str) -> dg.AssetCheckResult:
    scored = read_scored(storage, versions.latest(context, "scored_corpus", shard), shard)
    classifier = load_head(storage, versions.published(context, "quality_classifier"))
    severity = dg.AssetCheckSeverity.WARN if gates.drift_severity == "warn" else dg.AssetCheckSeverity.ERROR
    if not classifier.scores:
        return dg.AssetCheckResult(passed=True, severity=severity, metadata={"shard": shard, "note": "no curation configured: nothing is scored, so nothing drifts"})
    rows = len(scored)
    keep_fraction = float(scored["keep"].astype(bool).mean()) if rows else 0.0
    bins = score_bins(scored["score"].to_numpy(), classifier.score_range)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=scored_corpus.key, asset_partitions=[shard]), limit=2
    ).records
    previous = {k: v.value for k, v in records[1].asset_materialization.metadata.items()} if len(records) > 1 else None
    reference = gates.drift_reference(shard)
    if reference is not None:
        target, compared_with = reference[1], f"drift reference {reference[0]!r}"
    elif previous is not None and previous.get("keep_fraction") is not None:
        target, compared_with = float(previous["keep_fraction"]), f"its previous scoring (run {records[1].run_id[:8]})"
    else:
        target, compared_with = None, "nothing: first scoring of this shard, the baseline for the next (or set QualityGates.drift_references)"
    failed = []
    bounds = []
    if target is not None:
        # A small shard's keep fraction varies by chance: allow three binomial standard deviations on top.
        spread = 3 * np.sqrt(target * (1 - target) / max(rows, 1))
        allowed_gap = gates.shard_keep_tolerance + spread
        keep_ok = abs(keep_fraction - target) <= allowed_gap
        if not keep_ok:
            failed.append(f"keep fraction {keep_fraction:.4f} is not {target} ± {allowed_gap:.4f} ({compared_with})")
        bounds.append((
            f"keep fraction of {rows:,} documents",
            f"{keep_fraction:.3f}",
            f"{target:.3f} ± {allowed_gap:.3f}: {compared_with}, ± QualityGates.shard_keep_tolerance {gates.shard_keep_tolerance} "
            f"+ 3 binomial standard deviations {spread:.3f}",
            keep_ok,
        ))
    else:
        bounds.append((f"keep fraction of {rows:,} documents", f"{keep_fraction:.3f}", "none: " + compared_with.removeprefix("nothing: "), True))
    psi = None
    if previous is not None and previous.get("classifier_version") == classifier.version and previous.get("score_bins"):
        psi = histogram_stability(bins, previous["score_bins"])
        judged = rows >= gates.min_rows_for_drift
        psi_ok = not judged or psi <= gates.max_score_psi
        if not psi_ok:
            failed.append(f"score PSI {psi:.4f} > {gates.max_score_psi} against its previous scoring by the same head")
        bounds.append((
            "score PSI against its previous scoring by the same head",
            f"{psi:.4f}",
            f"<= {gates.max_score_psi} (QualityGates.max_score_psi)" + ("" if judged else f"; not judged under {gates.min_rows_for_drift} rows (QualityGates.min_rows_for_drift)"),
            psi_ok,
        ))
    else:
        bounds.append(("score PSI against its previous scoring by the same head", "n/a", "none: no previous scoring by this head", True))
    return dg.AssetCheckResult(
        passed=not failed,
        severity=severity,
        metadata={
            "shard": shard,
            **failed_entry(failed),
            "bounds": bounds_table(bounds),
            "compared_with": compared_with,
            "severity": gates.drift_severity,
            "rows": rows,
            "keep_fraction": round(keep_fraction, 4),
            "score_psi": round(psi, 4) if psi is not None else "none (no previous scoring by this head)",
        },
    )
