"""Materialise the whole graph on a corpus: every shard, the curation inputs, training, every shard scored, then the selection.

    python -m embedding_assets.run [--corpus DIR_OR_S3] [--storage DIR_OR_S3] [--sample-size N]
        [--epochs E] [--batch-size B] [--reference DIR_OR_S3 [--negative-reference DIR_OR_S3]] [--annotations PATH]
        [--curation MODE] [--positive-labels a,b,c] [--keep-fraction F] [--top-k K]

Shards found in the corpus become partitions of the Dagster instance in DAGSTER_HOME (an
ephemeral one if it is unset), and each job runs through Dagster, so `dagster dev` shows the
runs, metadata and lineage afterwards. Settings that cannot work are refused before anything
runs. Every shard is ingested and scored even when another fails; the failures are listed at the
end and the exit status is 1.
"""

import argparse
import os
import signal
import socket
import sys
import time

from embedding_assets.checks.reasons import failure_reason
from embedding_assets.resources.curation import SETTINGS

# Tags on every run this command starts, so a later invocation can tell a run whose process died
# (kill -9, a lost machine) from one that is still going.
PID_TAG = "embedding_assets/pid"
HOST_TAG = "embedding_assets/host"
HELDOUT_FRACTION = 0.15


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop now, run nothing more, retry nothing."""


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
            severity = "" if evaluation.severity == dg.AssetCheckSeverity.ERROR else f" ({evaluation.severity.value} only)"
            reasons.append(f"check of {evaluation.asset_key.to_user_string()}: {failure_reason(evaluation.check_name, evaluation.metadata)}{severity}")
    return reasons


def bad_training_settings(args) -> list[str]:
    """Settings the training cannot run with, known before anything runs."""
    from embedding_assets.engine.config import DistillConfig

    problems = []
    batch = args.batch_size if args.batch_size is not None else DistillConfig.model_fields["batch_size"].default
    if args.batch_size is not None and args.batch_size < 2:
        problems.append(f"--batch-size {args.batch_size}: a batch needs at least 2 documents (the loss compares documents within a batch)")
    if args.epochs is not None and args.epochs < 1:
        problems.append(f"--epochs {args.epochs}: train for at least 1 epoch")
    if args.sample_size is not None:
        if args.sample_size < 2:
            problems.append(f"--sample-size {args.sample_size}: sample at least 2 documents")
        elif batch >= 2 and args.sample_size * (1 - HELDOUT_FRACTION) < batch:
            problems.append(
                f"--sample-size {args.sample_size} leaves about {int(args.sample_size * (1 - HELDOUT_FRACTION))} training documents "
                f"({HELDOUT_FRACTION:.0%} are held out), fewer than one batch of {batch} (--batch-size): "
                f"raise --sample-size to at least {int(batch / (1 - HELDOUT_FRACTION)) + 1} or lower --batch-size"
            )
    return problems


def fail_dead_runs(instance) -> list[str]:
    """Mark as failed the runs this command started on this host whose process is gone, so none stays STARTED."""
    import dagster as dg

    host = socket.gethostname()
    ended = []
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags={HOST_TAG: host})):
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            instance.report_run_failed(run, f"the process that ran it (pid {pid} on {host}) is gone: it was killed or its machine stopped")
            ended.append(run.run_id)
    return ended


def run_jobs(defs, instance, steps, shards: list[str], ops: dict) -> list[str]:
    """Run each job in order, every shard of a partitioned one even when another fails; returns the
    failures, each with its reasons. Training failing stops the rest (nothing to score with), and a
    shard whose ingest failed is not scored."""
    import dagster as dg

    from embedding_assets.interrupts import was_interrupted

    failures: list[str] = []
    bad_shards: set[str] = set()
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    for job, assets in steps:
        job_def = defs.resolve_job_def(job.name)
        partitioned = job_def.partitions_def is not None
        for shard in shards if partitioned else [None]:
            label = f"{job.name}[{shard}]" if shard else job.name
            if shard in bad_shards:
                print(f"{label}: skipped (its ingest failed)", flush=True)
                continue
            result = job_def.execute_in_process(
                instance=instance,
                partition_key=shard,
                run_config={"ops": {k: v for k, v in ops.items() if k in {n.name for n in job_def.nodes}}},
                asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
                raise_on_error=False,
                tags=tags,
            )
            if was_interrupted(result):
                raise Interrupted(f"{label} was interrupted (run {result.run_id})")
            reasons = failure_reasons(result)
            status = "success" if result.success else "FAILED"
            print(f"{label}: {status} (run {result.run_id})", flush=True)
            for reason in reasons:
                print(f"  {reason}", file=sys.stderr, flush=True)
            if not result.success:
                failures.append(f"{label}: " + ("; ".join(reasons) or "failed"))
                if not partitioned:
                    return failures
                bad_shards.add(shard)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialise every asset of embedding_assets on a corpus.")
    parser.add_argument("--corpus", help="corpus directory or s3:// prefix (default: the built-in sample)")
    parser.add_argument("--storage", help="output directory or s3:// prefix (default: data/storage)")
    parser.add_argument("--sample-size", type=int, help="documents in the training sample")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--batch-size", type=int, help="training documents per step (default 512); the training split must hold at least one batch")
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

    problems = bad_training_settings(args)
    if problems:
        for problem in problems:
            print(f"bad setting: {problem}", file=sys.stderr)
        return 2

    import dagster as dg
    from pydantic import ValidationError

    try:
        from embedding_assets.definitions import defs
    except (ValidationError, ValueError) as exc:
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2
    from embedding_assets.jobs import pipeline
    from embedding_assets.partitions import corpus_shards
    from embedding_assets.engine.errors import InputError
    from embedding_assets.resources.curation import CurationSettingsError

    try:
        mode = defs.resources["curation"].check()
    except CurationSettingsError as exc:
        print(f"bad curation settings: {exc}", file=sys.stderr)
        return 2

    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    for run_id in fail_dead_runs(instance):
        print(f"run {run_id} was left STARTED by a process that is gone; marked failed", file=sys.stderr)
    corpus = defs.resources["corpus"]
    try:
        listing = corpus.listing()
    except InputError as exc:
        print(f"bad corpus: {exc}", file=sys.stderr)
        return 2
    for name, why in listing.skipped.items():
        print(f"{corpus.location}: {name} is not a shard: {why}", file=sys.stderr)
    shards = sorted(listing.shards)
    if not shards:
        print(f"no shard files under {corpus.location}", file=sys.stderr)
        return 1
    known = set(instance.get_dynamic_partitions(corpus_shards.name))
    departed = sorted(known - set(shards))
    if departed:
        print(
            f"{len(departed)} shard partition(s) of this instance are not in {corpus.location} now and are left out "
            f"(their outputs stay where they are): {', '.join(departed[:10])}{' ...' if len(departed) > 10 else ''}",
            file=sys.stderr,
        )
    instance.add_dynamic_partitions(corpus_shards.name, [s for s in shards if s not in known])

    ops: dict = {}
    if args.sample_size:
        ops["training_sample"] = {"config": {"size": args.sample_size}}
    training = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size}.items() if v is not None}
    if training:
        ops["distilled_model"] = {"config": training}

    print(f"curation mode: {mode}" + ("" if mode != "none" else " (nothing configured: shards are embedded, not scored; see --help)"), flush=True)
    started = time.perf_counter()
    # A pod's eviction or `kill`, between steps too: handled as Ctrl-C is (inside a step Dagster does the same).
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))
    try:
        failures = run_jobs(defs, instance, pipeline(mode), shards, ops)
    except (Interrupted, KeyboardInterrupt) as exc:
        print(
            f"interrupted: {exc or 'Ctrl-C'}; stopped, nothing retried. What was stored stays (finished shards, teacher chunks): "
            "run the same command again to go on from there",
            file=sys.stderr,
        )
        return 130
    if failures:
        print(f"{len(failures)} run(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print(f"materialised {len(shards)} shards end to end in {time.perf_counter() - started:.0f} s")
    return 0

if __name__ == "__main__":
    sys.exit(main())
