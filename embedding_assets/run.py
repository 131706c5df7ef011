"""Materialise the whole graph on a corpus: every shard, the curation inputs, training, every shard scored, then the selection.

    python -m embedding_assets.run [--corpus DIR_OR_S3] [--storage DIR_OR_S3] [--sample-size N]
        [--reference DIR_OR_S3 [--negative-reference DIR_OR_S3]] [--annotations PATH]
        [--curation MODE] [--positive-labels a,b,c] [--keep-fraction F] [--top-k K]

Shards found in the corpus become partitions of the Dagster instance in DAGSTER_HOME (an
ephemeral one if it is unset), and each job runs through Dagster, so `dagster dev` shows the
runs, metadata and lineage afterwards.
"""

import argparse
import os
import sys
import time

from embedding_assets.resources.curation import SETTINGS


def failure_reasons(result) -> list[str]:
    """Why a run failed: each failed step's message, and each failed blocking check's reasons."""
    import dagster as dg

    reasons = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            message = getattr(data.user_failure_data, "description", None) or (data.error.message.strip() if data.error else "failed")
            reasons.append(f"{event.step_key}: {message}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed:
            evaluation = event.event_specific_data
            failed = evaluation.metadata.get("failed") or evaluation.metadata.get("failed_expectations")
            reasons.append(f"check {evaluation.check_name} of {evaluation.asset_key.to_user_string()} failed: {getattr(failed, 'value', failed)}")
    return reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialise every asset of embedding_assets on a corpus.")
    parser.add_argument("--corpus", help="corpus directory or s3:// prefix (default: the built-in sample)")
    parser.add_argument("--storage", help="output directory or s3:// prefix (default: data/storage)")
    parser.add_argument("--sample-size", type=int, help="documents in the training sample")
    parser.add_argument("--epochs", type=int, help="training epochs")
    curation = parser.add_argument_group("curation", "what to keep; without any of these a corpus is embedded, not scored (the built-in sample keeps its networking labels)")
    curation.add_argument("--curation", choices=SETTINGS, help="how documents are scored (default auto: annotations, else reference-classifier with --reference, else labels with --positive-labels, else none)")
    curation.add_argument("--reference", help="directory, file or s3:// prefix of documents to find more of (parquet, jsonl or txt, with id and text)")
    curation.add_argument("--negative-reference", help="documents not wanted: the reference classifier's negatives instead of corpus documents")
    curation.add_argument("--annotations", help="file, directory or s3:// prefix of a table of corpus ids with a label or a score")
    curation.add_argument("--positive-labels", help="comma-separated labels to keep (labels mode, or label annotations)")
    curation.add_argument("--keep-fraction", type=float, help="share of documents to keep (default 0.2)")
    curation.add_argument("--top-k", type=int, help="reference-similarity: how many nearest references a score averages (default 10)")
    args = parser.parse_args(argv)
    for flag, name in [
        ("corpus", "CORPUS"), ("storage", "STORAGE"), ("curation", "CURATION"), ("reference", "REFERENCE"),
        ("negative_reference", "NEGATIVE_REFERENCE"), ("annotations", "ANNOTATIONS"), ("positive_labels", "POSITIVE_LABELS"),
        ("keep_fraction", "KEEP_FRACTION"), ("top_k", "TOP_K"),
    ]:
        if getattr(args, flag) is not None:
            os.environ[f"EMBEDDING_ASSETS_{name}"] = str(getattr(args, flag))

    import dagster as dg
    from pydantic import ValidationError

    try:
        from embedding_assets.definitions import defs
    except ValidationError as exc:
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2
    from embedding_assets.jobs import pipeline
    from embedding_assets.partitions import corpus_shards
    from embedding_assets.resources.curation import CurationSettingsError

    try:
        mode = defs.resources["curation"].check()
    except CurationSettingsError as exc:
        print(f"bad curation settings: {exc}", file=sys.stderr)
        return 2

    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    shards = sorted(defs.resources["corpus"].shards())
    if not shards:
        print(f"no shard files under {defs.resources['corpus'].location}", file=sys.stderr)
        return 1
    known = set(instance.get_dynamic_partitions(corpus_shards.name))
    instance.add_dynamic_partitions(corpus_shards.name, [s for s in shards if s not in known])

    ops: dict = {}
    if args.sample_size:
        ops["training_sample"] = {"config": {"size": args.sample_size}}
    if args.epochs is not None:
        ops["distilled_model"] = {"config": {"epochs": args.epochs}}

    print(f"curation mode: {mode}" + ("" if mode != "none" else " (nothing configured: shards are embedded, not scored; see --help)"), flush=True)
    started = time.perf_counter()
    for job, assets in pipeline(mode):
        job_def = defs.resolve_job_def(job.name)
        partitions = shards if job_def.partitions_def is not None else [None]
        for shard in partitions:
            label = f"{job.name}[{shard}]" if shard else job.name
            result = job_def.execute_in_process(
                instance=instance,
                partition_key=shard,
                run_config={"ops": {k: v for k, v in ops.items() if k in {n.name for n in job_def.nodes}}},
                asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
                raise_on_error=False,
            )
            print(f"{label}: {'success' if result.success else 'FAILED'} (run {result.run_id})", flush=True)
            if not result.success:
                for reason in failure_reasons(result):
                    print(f"  {reason}", file=sys.stderr)
                return 1
    print(f"materialised {len(shards)} shards end to end in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
