"""The run command's closing summary, read from the instance's event log of the runs it launched:
per stage its step time, documents and docs/s; per shard its documents, kept and keep fraction;
and where the outputs are."""

from collections import defaultdict
from dataclasses import dataclass, field

import dagster as dg

# Stages in graph order; each is an asset, and its step has the asset's name.
STAGES = (
    "raw_corpus", "reference_set", "annotations", "training_sample", "features", "teacher_model", "teacher_embeddings",
    "distilled_model", "quality_classifier", "clusters", "scored_corpus", "near_duplicates", "selection",
)
ENDED = {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}


@dataclass
class Stage:
    seconds: float = 0.0
    documents: int = 0
    materialisations: int = 0


@dataclass
class Summary:
    stages: dict[str, Stage] = field(default_factory=lambda: defaultdict(Stage))
    check_seconds: float = 0.0
    checks: int = 0
    shards: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    uris: dict[str, str] = field(default_factory=dict)
    selected: int | None = None
    head: dict = field(default_factory=dict)  # the curation head's quality metadata, when this run fitted one


# Where a materialisation says how many documents it went through: the first of these it has. The
# teacher counts only what it embedded: a run that reused every chunk embedded nothing.
DOCUMENT_COUNTS = ("embedded_documents", "corpus_documents", "documents", "sample_documents", "dagster/row_count", "train_documents", "documents_processed")


def documents(metadata: dict) -> int:
    """The documents a stage's materialisation went through, as it counted them; 0 when it does not say."""
    value = {k: getattr(v, "value", v) for k, v in metadata.items()}
    for key in DOCUMENT_COUNTS:
        if isinstance(value.get(key), int):
            return value[key]
    return 0


def read_summary(instance: dg.DagsterInstance, run_ids: list[str]) -> Summary:
    summary = Summary()
    for run_id in run_ids:
        started: dict[str, float] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            elif event.event_type in ENDED and entry.step_key in started:
                seconds = entry.timestamp - started.pop(entry.step_key)
                if entry.step_key in STAGES:
                    summary.stages[entry.step_key].seconds += seconds
                else:
                    summary.check_seconds += seconds
                    summary.checks += 1
            elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.event_specific_data.materialization
                name = materialization.asset_key.to_user_string()
                metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
                stage = summary.stages[name]
                stage.documents += documents(materialization.metadata)
                stage.materialisations += 1
                if "uri" in metadata:
                    summary.uris[name] = str(metadata["uri"])
                if name == "quality_classifier":
                    summary.head = metadata
                if name == "selection" and isinstance(metadata.get("kept"), int):
                    summary.selected = metadata["kept"]
                if name == "scored_corpus" and materialization.partition:
                    kept = metadata.get("kept")
                    summary.shards[materialization.partition] = (int(metadata.get("dagster/row_count") or 0), None if kept is None else int(kept))
    return summary


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns left-aligned first, right-aligned after, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

    return [line(header), *[line(row) for row in rows]]


def rate(documents: int, seconds: float) -> str:
    return f"{documents / seconds:,.0f}" if documents and seconds > 0 else "-"


def head_lines(head: dict) -> list[str]:
    """How good the curation head is, in terms a user can act on, and what is not known."""
    if not head or head.get("mode") in (None, "none"):
        return []
    lines = ["", f"curation head ({head['mode']}, calibrated on {head.get('calibration_documents', 0):,} {head.get('calibrated_on', 'corpus')} documents):"]
    if head.get("calibration_keep_fraction") is not None:
        inside, outside = head.get("keep_rate_training_sample"), head.get("keep_rate_outside_training_sample")
        split = f" ({inside:.1%} of the student's training documents, {outside:.1%} of the others)" if inside is not None and outside is not None else ""
        lines.append(f"  the threshold keeps {head['calibration_keep_fraction']:.1%} of them, target {head.get('target_keep_fraction')}{split}")
    if head.get("heldout_wanted_kept") is not None:
        lines.append(f"  {head['heldout_wanted_kept']:.0%} of the held-out wanted examples ({head.get('heldout_positives', 0):,}) score above it: "
                     "documents like them are kept that often; wanted documents unlike the examples, less often")
    if head.get("heldout_average_precision") is not None:
        lines.append(f"  held-out AP {head['heldout_average_precision']:.3f}, AUC {head.get('heldout_auc', 0):.3f}: {head.get('heldout_measures', '')}")
    if head.get("heldout_spearman") is not None:
        lines.append(f"  held-out Spearman of predicted and annotated scores {head['heldout_spearman']:.3f}")
    if head.get("corpus_quality_estimate"):
        lines.append(f"  corpus quality estimate: {head['corpus_quality_estimate']}")
    return lines


def summary_lines(summary: Summary, wall_seconds: float, storage: str, home: str, log_file: str) -> list[str]:
    rows = []
    step_seconds = summary.check_seconds
    for name in STAGES:
        if name not in summary.stages:
            continue
        stage = summary.stages[name]
        step_seconds += stage.seconds
        label = f"{name} ({stage.materialisations} shards)" if name in ("raw_corpus", "scored_corpus") else name
        rows.append([label, f"{stage.seconds:.1f}", f"{stage.documents:,}" if stage.documents else "-", rate(stage.documents, stage.seconds)])
    rows.append([f"checks ({summary.checks} steps)", f"{summary.check_seconds:.1f}", "", ""])
    rows.append(["launches, processes, events", f"{max(wall_seconds - step_seconds, 0):.1f}", "", ""])
    rows.append(["total", f"{wall_seconds:.1f}", "", ""])
    lines = ["", *table(["stage", "time (s)", "documents", "docs/s"], rows)]
    if summary.shards:
        shard_rows = []
        for shard, (docs, kept) in sorted(summary.shards.items()):
            shard_rows.append([shard, f"{docs:,}", "-" if kept is None else f"{kept:,}", "-" if kept is None else f"{kept / max(docs, 1):.3f}"])
        total = sum(d for d, _ in summary.shards.values())
        kept_total = None if any(k is None for _, k in summary.shards.values()) else sum(k for _, k in summary.shards.values())
        shard_rows.append(["all shards", f"{total:,}", "-" if kept_total is None else f"{kept_total:,}", "-" if kept_total is None else f"{kept_total / max(total, 1):.3f}"])
        lines += ["", *table(["shard", "documents", "kept", "keep fraction"], shard_rows)]
    lines += head_lines(summary.head)
    if not summary.uris:
        lines += ["", f"outputs: none; nothing was written to {storage}"]
    else:
        lines += ["", f"outputs: {storage}"]
        named = {"scored_corpus", "selection"} & set(summary.uris)
        if not named:
            lines.append(f"  written: {', '.join(sorted(summary.uris))}")
    if "scored_corpus" in summary.uris:
        lines.append(f"  scored shards: {len(summary.shards)} files, the last {summary.uris['scored_corpus']}")
    if "selection" in summary.uris:
        kept = "" if summary.selected is None else f" ({summary.selected:,} kept after near-duplicates and cluster caps)"
        lines.append(f"  keep list: {summary.uris['selection']}{kept}")
    lines.append(f"runs, metadata and lineage: DAGSTER_HOME={home} (make ui opens them); Dagster's event lines: {log_file}")
    return lines
