"""Answer "which data, which teacher and which model decided this?" from the project's own records.

    python -m embedding_assets.audit scored_corpus/<shard>   # the chain behind one scored shard
    python -m embedding_assets.audit distilled_model         # the chain behind the current model
    python -m embedding_assets.audit <document id>           # where a document is, its score, keep and why

It reads the Dagster instance in DAGSTER_HOME (materialisations, data versions, check results)
and the stored files, prints the chain and writes it as JSON (--json, default audit.json). The
storage is --storage, else EMBEDDING_ASSETS_STORAGE, else where the instance recorded its outputs
(so it works from any directory).
Every link is found by its data version, so the chain is the one that really produced the output.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import dagster as dg

from embedding_assets.paths import MODEL_FILE, shard_file
from embedding_assets.versions import STORED_AT, latest_version
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.partitions import corpus_shards
from embedding_assets.resources import Storage

CHECKS = {
    "raw_corpus": ("raw_corpus_contract",),
    "corpus_id_index": ("corpus_ids_unique_across_shards",),
    "features": ("features_vocabulary", "features_coverage"),
    "teacher_embeddings": ("teacher_embeddings_valid",),
    "distilled_model": ("distilled_model_fidelity", "distilled_model_artifact"),
    "reference_set": ("reference_set_contract",),
    "annotations": ("annotations_contract",),
    "quality_classifier": ("quality_classifier_calibration",),
    "scored_corpus": ("scored_corpus_contract", "scored_corpus_drift"),
    "clusters": ("clusters_not_empty",),
    "near_duplicates": ("near_duplicates_groups",),
    "selection": ("selection_explained",),
}


class AuditError(LookupError):
    pass


def recorded_storage_base(instance: dg.DagsterInstance) -> str | None:
    """The storage base the instance's latest model (or any scored shard) was written under, from its `uri` and `stored_at` metadata."""
    for key in ("distilled_model", "scored_corpus"):
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(key)), limit=1).records
        metadata = records[0].asset_materialization.metadata if records else {}
        if "uri" not in metadata or STORED_AT not in metadata:
            continue
        uri = str(metadata["uri"].value)
        tail = f"/{metadata[STORED_AT].value}/{uri.rsplit('/', 1)[-1]}"
        if uri.endswith(tail):
            return uri[: -len(tail)]
    return None


def _plain(value):
    if isinstance(value, dg.TableMetadataValue):
        return [dict(record.data) for record in value.records]
    value = getattr(value, "value", value)
    if isinstance(value, (str, int, float, bool, type(None), list, dict)):
        return value
    return str(value)


def materialization(instance: dg.DagsterInstance, key: str, partition: str | None = None, version: str | None = None) -> dict:
    """The latest materialisation of `key` (with `version` as its data version, if given), as a plain dict."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=200
    ).records
    for record in records:
        event = record.asset_materialization
        data_version = event.tags.get("dagster/data_version")
        if version is None or data_version == version:
            return {
                "asset": key,
                "partition": partition,
                "data_version": data_version,
                "code_version": event.tags.get("dagster/code_version"),
                "run_id": record.run_id,
                "timestamp": record.timestamp,
                "metadata": {k: _plain(v) for k, v in event.metadata.items() if k != "model_card"},
                "checks": checks(instance, key, record.run_id),
            }
    wanted = f" with data version {version}" if version else ""
    raise AuditError(f"no materialisation of {key}{f'[{partition}]' if partition else ''}{wanted} in this instance")


def checks(instance: dg.DagsterInstance, key: str, run_id: str) -> dict:
    """Results of the asset's checks that ran with this materialisation."""
    results = {}
    for name in CHECKS.get(key, ()):
        history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey(key), name), limit=50)
        for record in history:
            if record.run_id == run_id and record.event and record.event.dagster_event:
                evaluation = record.event.dagster_event.event_specific_data
                results[name] = {"passed": evaluation.passed, "metadata": {k: _plain(v) for k, v in evaluation.metadata.items()}}
                break
    return results


def model_chain(instance: dg.DagsterInstance, storage: Storage, model_version: str | None = None) -> dict:
    model = materialization(instance, "distilled_model", version=model_version)
    provenance = {}
    stored = model["metadata"].get(STORED_AT)
    if stored:
        provenance = LexicalEmbedder.from_bytes(storage.read_bytes(*stored.split("/"), MODEL_FILE)).provenance
    versions = provenance.get("data_versions", {})
    chain = {"distilled_model": {**model, "training": provenance.get("training"), "evaluation": provenance.get("evaluation"), "teacher": provenance.get("teacher")}}
    for key in ("teacher_embeddings", "teacher_model", "features", "training_sample"):
        chain[key] = materialization(instance, key, version=versions.get(key))
    sample_shards = {row["shard"]: row["data_version"] for row in chain["training_sample"]["metadata"].get("raw_shard_versions") or []}
    chain["raw_corpus"] = {shard: materialization(instance, "raw_corpus", shard, version) for shard, version in sample_shards.items()}
    return chain


def shard_chain(instance: dg.DagsterInstance, storage: Storage, shard: str) -> dict:
    scored = materialization(instance, "scored_corpus", shard)
    meta = scored["metadata"]
    with storage.open_parquet(*meta[STORED_AT].split("/"), shard_file(shard)) as parquet:
        file_lineage = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    classifier = materialization(instance, "quality_classifier", version=meta["classifier_version"])
    settings = json.loads(file_lineage.get("curation_settings") or "{}")
    inputs = {
        key: materialization(instance, key, version=settings[f"{key}_version"])
        for key in ("reference_set", "annotations")
        if settings.get(f"{key}_version")
    }
    return {
        "scored_corpus": {**scored, "file_lineage": file_lineage},
        "raw_shard": materialization(instance, "raw_corpus", shard, meta["raw_shard_version"]),
        "quality_classifier": classifier,
        "curation": {"mode": file_lineage.get("curation_mode"), "settings": settings},
        **inputs,
        **model_chain(instance, storage, meta["model_version"]),
    }


def rows_with_id(storage: Storage, parts: tuple[str, ...], doc_id: str) -> list[dict]:
    """The rows of a stored table whose id is `doc_id`, read batch by batch."""
    import pyarrow.compute as pc

    rows = []
    with storage.open_parquet(*parts) as parquet:
        for batch in parquet.iter_batches(batch_size=65536):
            rows += batch.filter(pc.equal(batch.column("id"), doc_id)).to_pylist()
    return rows


def selection_decision(instance: dg.DagsterInstance, storage: Storage, doc_id: str) -> dict | None:
    """The document's line of the final keep list, with its duplicate group when it has one."""
    from embedding_assets.assets.selection import NEAR_DUPLICATES_FILE, SELECTION_FILE

    selected, grouped = latest_version(instance, "selection"), latest_version(instance, "near_duplicates")
    if selected is None or grouped is None:
        return None
    found = rows_with_id(storage, selected.file(SELECTION_FILE), doc_id)
    if not found:
        return None
    decision = found[0]
    group = rows_with_id(storage, grouped.file(NEAR_DUPLICATES_FILE), doc_id)
    if group:
        decision["duplicate_group"] = group[0]
    reason = decision["reason"]
    if reason is None:
        decision["why"] = f"kept in the final selection (cluster {decision['cluster']})"
    elif reason == "score":
        decision["why"] = "dropped from the final selection: the curation head did not keep it"
    elif reason.startswith("duplicate_of:"):
        g = decision["duplicate_group"]
        decision["why"] = (
            f"dropped from the final selection as a near-duplicate of {g['representative_id']} in shard {g['representative_shard']} "
            f"(cosine {g['cosine_to_representative']:.4f}; this document is in shard {g['shard']}; group {g['group']}, cluster {decision['cluster']})"
        )
    else:
        decision["why"] = f"dropped from the final selection by the cap of cluster {decision['cluster']}"
    decision["selection"] = materialization(instance, "selection")
    decision["near_duplicates"] = materialization(instance, "near_duplicates")
    return decision


def find_document(instance: dg.DagsterInstance, storage: Storage, doc_id: str) -> dict:
    import pyarrow.compute as pc

    searched = 0
    for shard in sorted(instance.get_dynamic_partitions(corpus_shards.name)):
        scored = latest_version(instance, "scored_corpus", shard)
        if scored is None or not storage.exists(*scored.file(shard_file(shard))):
            continue
        searched += 1
        with storage.open_parquet(*scored.file(shard_file(shard))) as parquet:
            for batch in parquet.iter_batches(columns=["id", "score", "keep", "model_version", "classifier_version"], batch_size=65536):
                hits = pc.index(batch.column("id"), doc_id).as_py()
                if hits >= 0:
                    row = {name: batch.column(name)[hits].as_py() for name in batch.schema.names}
                    chain = shard_chain(instance, storage, shard)
                    threshold = chain["quality_classifier"]["metadata"]["threshold"]
                    mode = chain["curation"]["mode"]
                    if row["score"] is None:
                        decision, why = "not scored", f"curation mode {mode}: no curation was configured, so the document was embedded, not scored"
                    else:
                        decision = "kept" if row["keep"] else "dropped"
                        sign = ">=" if row["score"] >= threshold else "<"
                        why = f"{mode} score {row['score']:.4f} {sign} threshold {threshold:.4f}"
                        if row["score"] >= threshold and not row["keep"]:
                            why += " but its text is empty"
                        why += f", so it was {decision}"
                    return {
                        "document": {**row, "shard": shard, "threshold": threshold, "decision": decision, "why": why},
                        "final_selection": selection_decision(instance, storage, doc_id),
                        **chain,
                    }
    if not searched:
        raise AuditError(f"no scored shard of this instance is in the storage {storage.uri()}; pass --storage with the storage the pipeline wrote to")
    raise AuditError(f"document {doc_id!r} is in none of the {searched} scored shards under {storage.uri()}")


def audit(target: str, instance: dg.DagsterInstance, storage: Storage) -> dict:
    if target.startswith("scored_corpus/") or (target.startswith("scored_corpus[") and target.endswith("]")):
        shard = target[len("scored_corpus/") :] if "/" in target else target[len("scored_corpus[") : -1]
        return {"target": target, **shard_chain(instance, storage, shard)}
    if target == "distilled_model":
        return {"target": target, **model_chain(instance, storage)}
    if target == "quality_classifier":
        classifier = materialization(instance, "quality_classifier")
        return {"target": target, "quality_classifier": classifier, **model_chain(instance, storage, classifier["metadata"]["model_version"])}
    return {"target": target, **find_document(instance, storage, target)}


def summary(report: dict) -> str:
    lines = [f"audit of {report['target']}"]
    if "document" in report:
        d = report["document"]
        lines.append(f"  document {d['id']} in shard {d['shard']}: {d['why']}")
        if report.get("final_selection"):
            lines.append(f"  {report['final_selection']['why']}")
    if "curation" in report:
        settings = ", ".join(f"{k} {v}" for k, v in sorted(report["curation"]["settings"].items()) if k != "mode")
        lines.append(f"  curation: mode {report['curation']['mode']}; {settings}")
    for key in ("scored_corpus", "raw_shard", "reference_set", "annotations", "quality_classifier", "distilled_model", "teacher_embeddings", "teacher_model", "features", "training_sample"):
        if key in report:
            link = report[key]
            checks_passed = all(c["passed"] for c in link["checks"].values()) if link["checks"] else None
            part = f"[{link['partition']}]" if link.get("partition") else ""
            lines.append(
                f"  {key}{part}: version {link['data_version']} (code {link['code_version']}), run {link['run_id'][:8]}, "
                f"checks {'passed' if checks_passed else 'none' if checks_passed is None else 'FAILED'}"
            )
    if "distilled_model" in report and report["distilled_model"].get("evaluation"):
        ev = report["distilled_model"]["evaluation"]
        lines.append(f"  held-out fidelity: recall@10 {ev['student']['recall_at_10']}, Spearman {ev['student']['spearman']}; probes {ev.get('probe_accuracy')}")
    if "teacher_model" in report:
        m = report["teacher_model"]["metadata"]
        lines.append(f"  teacher: {m.get('model')} sha256 {m.get('sha256')}, max_seq_length {m.get('max_seq_length')}")
    for shard, link in (report.get("raw_corpus") or {}).items():
        lines.append(f"  sample drew on raw_corpus[{shard}] version {link['data_version']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trace a scored shard, the model or a document back to its sources.")
    parser.add_argument("target", help="scored_corpus/<shard>, distilled_model, quality_classifier, or a document id")
    parser.add_argument("--json", type=Path, default=Path("audit.json"), help="where to write the full chain as JSON")
    parser.add_argument("--storage", help="directory or s3:// prefix the pipeline wrote to (default: EMBEDDING_ASSETS_STORAGE, else where the instance recorded its outputs)")
    args = parser.parse_args(argv)
    from embedding_assets.definitions import s3_settings_from_env
    from embedding_assets.engine.errors import ArtifactError

    if not os.environ.get("DAGSTER_HOME"):
        print("set DAGSTER_HOME to the instance whose history to audit", file=sys.stderr)
        return 2
    instance = dg.DagsterInstance.get()
    base = args.storage or os.environ.get("EMBEDDING_ASSETS_STORAGE") or recorded_storage_base(instance) or "data/storage"
    storage = Storage(base=base, s3=s3_settings_from_env())
    try:
        report = audit(args.target, instance, storage)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1
    except (dg.Failure, ArtifactError, OSError) as exc:
        message = getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"
        print(f"audit: cannot read the stored files under {storage.uri()}: {message}; pass --storage with the storage the pipeline wrote to", file=sys.stderr)
        return 1
    args.json.write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
    print(summary(report))
    print(f"full chain written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
