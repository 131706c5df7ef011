"""Ingest, checks and scoring at 50, 100 and 200 shards: wall time per shard and in total, per-run overhead.

    python -m bench.scale [--shards 50,100,200] [--docs 2000] [--per-run 16] [--workdir DIR]

The corpus: SHARDS shards of DOCS documents, synthesised from the packaged sample corpus
(embedding_assets/data/sample_corpus, four shards of about 3,000 documents): shard i takes DOCS
rows of sample shard i mod 4 from a shifting offset and prefixes every id with `sNNN:`, so ids are
unique across shards. Every size is a fresh instance and storage; the corpus of a smaller size is the
first shards of the largest.

One small model, classifier and clusters are trained once (on the sample corpus itself) and copied,
with the instance that records them, into each size's own instance and storage, so every size scores
with the same published model. Then, as `make run` does, every shard is
ingested (raw_corpus and its checks, one run per shard, as the corpus sensor requests them), the
corpus id index and its gate run once over all shards, and every shard is scored (scored_corpus and
its checks, PER_RUN shards per run: a partition range, as a backfill under scored_corpus's
BackfillPolicy runs them). Runs are in process, one at a time. A warm-up size of 2 shards runs
first and is not reported (imports, numba compilation).

Times come from the instance's event log: each step's wall time from its start to its end event;
a run's overhead is its wall time minus its steps' (building the job, the run's own events).
The ratio printed last is the checks' wall time per shard at the largest size over the smallest;
it stays near 1 when no check reads other shards. `lookup` is what every corpus-wide asset does
first, the published version and gates of every scored shard, in a few queries; `lookup one by one`
resolves the same shard by shard (a query for the version and one per blocking check), as anchor.
"""

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TRAIN_CONFIG = {
    "ops": {
        "training_sample": {"config": {"size": 560, "heldout_fraction": 0.25}},
        "features": {"config": {"vocabulary_size": 50_000}},
        "distilled_model": {"config": {"epochs": 10, "batch_size": 128, "hidden_dims": [128]}},
        "clusters": {"config": {"k": 8}},
    }
}
TRAINING = ["corpus_id_index", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier", "clusters"]
MAX_CHECK_RATIO = 1.3
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def write_corpus(directory: Path, shards: int, docs: int) -> None:
    from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR

    directory.mkdir(parents=True, exist_ok=True)
    samples = [pq.read_table(path) for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))]
    for i in range(shards):
        path = directory / f"s{i:03d}.parquet"
        if path.exists():
            continue
        table = samples[i % len(samples)]
        start = (i // len(samples) * 97) % max(table.num_rows - docs, 1)
        part = table.slice(start, docs)
        ids = pc.binary_join_element_wise(pa.scalar(f"s{i:03d}"), part["id"], ":")
        pq.write_table(part.set_column(part.schema.get_field_index("id"), "id", ids), path)


def corpus_of(root: Path, full: Path, shards: int) -> Path:
    """The first `shards` shards of the full corpus, hard-linked into a directory of their own."""
    directory = root / f"corpus-{shards}"
    directory.mkdir(exist_ok=True)
    for i in range(shards):
        target = directory / f"s{i:03d}.parquet"
        if not target.exists():
            os.link(full / target.name, target)
    return directory


def resources(corpus: Path, storage: Path) -> dict:
    from embedding_assets.resources import Compute, CorpusSource, Curation, QualityGates, Storage, Teacher
    from embedding_assets.sample_corpus import NETWORKING_LABELS

    return {
        "corpus": CorpusSource(location=str(corpus)),
        "curation": Curation(positive_labels=list(NETWORKING_LABELS)),
        "storage": Storage(base=str(storage)),
        "teacher": Teacher(),
        "compute": Compute(device="cpu"),
        "gates": QualityGates(),
    }


def train(root: Path) -> tuple[Path, Path]:
    """The model, classifier and clusters, trained once on the sample corpus: the instance directory
    and the storage that hold them (kept across reruns in the workdir)."""
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
    from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR

    home, storage = root / "model-home", root / "model-storage"
    if (home / "trained").exists():
        return home, storage
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(storage, ignore_errors=True)
    home.mkdir()
    res = resources(SAMPLE_CORPUS_DIR, storage)
    shards = sorted(res["corpus"].shards())
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        instance.add_dynamic_partitions("corpus_shards", shards)
        for shard in shards:
            assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key=shard, instance=instance, resources=res, run_config=QUIET).success
        assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=TRAINING, instance=instance, resources=res, run_config={**TRAIN_CONFIG, **QUIET}).success
    (home / "trained").touch()
    return home, storage


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Wall seconds of each step of a run, from its start event to its success or failure event."""
    started, seconds = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[event.step_key] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            seconds[event.step_key] = entry.timestamp - started[event.step_key]
    return seconds


def stage_of(step_key: str) -> str:
    if step_key == "raw_corpus":
        return "ingest"
    if step_key == "scored_corpus":
        return "scoring"
    if step_key == "corpus_id_index":
        return "index"
    if "corpus_ids_unique_across_shards" in step_key:
        return "index_check"
    return "raw_checks" if "raw_corpus" in step_key else "scored_checks"


def measure(root: Path, full: Path, model: tuple[Path, Path], shards: int, per_run: int) -> dict:
    """A copy of the trained instance and storage (the model's materialisations and passed gates
    included, so scoring may read it), then every shard of a corpus of `shards` ingested, indexed and scored."""
    from embedding_assets import versions
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
    from embedding_assets.lineage import latest_metadata_value

    corpus = corpus_of(root, full, shards)
    home, storage = root / f"home-{shards}", root / f"storage-{shards}"
    for copy, original in ((home, model[0]), (storage, model[1])):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(original, copy)
    res = resources(corpus, storage)
    totals: dict[str, float] = defaultdict(float)
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        names = sorted(res["corpus"].shards())
        instance.add_dynamic_partitions("corpus_shards", names)
        started = time.perf_counter()

        def run(kind: str, selection: list[str], batch: list[str] | None = None) -> None:
            """One run of `selection` (one shard, a range of shards, or unpartitioned): its steps' seconds by stage, and its overhead."""
            single = batch is not None and len(batch) == 1
            tags = {"dagster/asset_partition_range_start": batch[0], "dagster/asset_partition_range_end": batch[-1]} if batch and not single else {}
            run_started = time.perf_counter()
            result = dg.materialize(
                ALL_ASSETS + ALL_CHECKS, selection=selection, partition_key=batch[0] if single else None,
                instance=instance, resources=res, tags=tags, run_config=QUIET, raise_on_error=False,
            )
            assert result.success, (selection, batch)
            wall = time.perf_counter() - run_started
            steps = step_seconds(instance, result.run_id)
            for step, seconds in steps.items():
                totals[stage_of(step)] += seconds
            totals[f"{kind}_overhead"] += wall - sum(steps.values())
            totals[f"{kind}_runs"] += 1
            totals[f"{kind}_wall"] += wall

        # As make run does: every shard ingested (one run each, as the corpus sensor requests them),
        # the id index over all of them, then every shard scored.
        for shard in names:
            run("ingest", ["raw_corpus"], [shard])
        run("index", ["corpus_id_index"])
        for i in range(0, len(names), per_run):
            run("scoring", ["scored_corpus"], names[i : i + per_run])
        total = time.perf_counter() - started
        # What every corpus-wide asset does first: the version and gates of every scored shard,
        # resolved in a few queries, against the same resolved shard by shard.
        lookup_started = time.perf_counter()
        latest = versions.latest_versions(instance, "scored_corpus", names)
        assert not versions.gate_problems_by_partition(instance, latest) and len(latest) == len(names)
        totals["lookup"] = time.perf_counter() - lookup_started
        lookup_started = time.perf_counter()
        assert not any(versions.gate_problems(instance, versions.latest_version(instance, "scored_corpus", name)) for name in names)
        totals["lookup_each"] = time.perf_counter() - lookup_started
        documents = sum(latest_metadata_value(instance, "scored_corpus", "dagster/row_count", name) for name in names)
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(storage, ignore_errors=True)
    checks = totals["raw_checks"] + totals["scored_checks"] + totals["index_check"]
    return {"shards": shards, "documents": documents, "total": total, "checks": checks, **totals}


COLUMNS = [
    ("shards", "shards", "{:>6}"),
    ("documents", "docs", "{:>9,}"),
    ("ingest", "ingest", "{:>7.1f}"),
    ("ingest/", "/shard", "{:>6.3f}"),
    ("raw_checks/", "raw chk/shard", "{:>13.3f}"),
    ("index", "index", "{:>6.2f}"),
    ("index_check", "idx chk", "{:>7.2f}"),
    ("scoring", "scoring", "{:>7.1f}"),
    ("scoring/", "/shard", "{:>6.3f}"),
    ("scored_checks/", "scored chk/shard", "{:>16.3f}"),
    ("checks/", "checks/shard", "{:>12.3f}"),
    ("ingest_overhead/run", "ingest ovh/run", "{:>14.3f}"),
    ("scoring_overhead/run", "scoring ovh/run", "{:>15.3f}"),
    ("lookup", "lookup", "{:>6.2f}"),
    ("lookup_each", "lookup one by one", "{:>17.2f}"),
    ("ingest_wall", "ingest wall", "{:>11.1f}"),
    ("scoring_wall", "scoring wall", "{:>12.1f}"),
    ("total", "total", "{:>7.1f}"),
]


def cell(row: dict, key: str) -> float:
    """A figure of a row: `x/` is x per shard, `x_overhead/run` per run of that kind."""
    if key.endswith("_overhead/run"):
        kind = key.split("_")[0]
        return row[f"{kind}_overhead"] / row[f"{kind}_runs"]
    if key.endswith("/"):
        return row[key[:-1]] / row["shards"]
    return row[key]


def main(argv: list[str] | None = None) -> int:
    from embedding_assets.assets.curation import SHARDS_PER_RUN

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="50,100,200", help="comma-separated corpus sizes, in shards")
    parser.add_argument("--docs", type=int, default=2000, help="documents per shard")
    parser.add_argument("--per-run", type=int, default=SHARDS_PER_RUN, help="shards per scoring run (a partition range, as scored_corpus's BackfillPolicy makes them)")
    parser.add_argument("--workdir", help="where corpora, storage and instances go (default: a temp dir)")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.shards.split(","))
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    full = root / "corpus-full"
    write_corpus(full, max(sizes), args.docs)
    print(f"corpus: up to {max(sizes)} shards of {args.docs:,} documents, synthesised from the packaged sample corpus (embedding_assets/data/sample_corpus), ids prefixed sNNN:; workdir {root}", flush=True)
    started = time.perf_counter()
    model = train(root)
    print(f"model, classifier and clusters trained once in {time.perf_counter() - started:.0f} s (reused from the workdir when present)", flush=True)
    measure(root, full, model, 2, args.per_run)  # warm-up: imports, numba compilation, GX
    print(f"ingest: one run per shard; scoring: {args.per_run} shards per run; in process, one run at a time; seconds (steps from the event log)")
    print(" ".join(fmt.replace(",", "").replace(".1f", "").replace(".2f", "").replace(".3f", "").format(title) for _, title, fmt in COLUMNS))
    rows = []
    for shards in sizes:
        row = measure(root, full, model, shards, args.per_run)
        rows.append(row)
        print(" ".join(fmt.format(cell(row, key)) for key, _, fmt in COLUMNS), flush=True)
    small, large = rows[0], rows[-1]
    ratio = cell(large, "checks/") / cell(small, "checks/")
    raw_ratio = cell(large, "raw_checks/") / cell(small, "raw_checks/")
    scored_ratio = cell(large, "scored_checks/") / cell(small, "scored_checks/")
    print(
        f"checks per shard, {large['shards']} vs {small['shards']} shards: {ratio:.2f}x "
        f"(raw_corpus checks {raw_ratio:.2f}x, scored_corpus checks {scored_ratio:.2f}x; limit {MAX_CHECK_RATIO}x)"
    )
    return 0 if ratio <= MAX_CHECK_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
