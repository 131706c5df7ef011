"""Scoring N shards with 1 vs 2 concurrent runs on this machine, and the peak RSS of one scoring process.

    python -m bench.scale [--configs 4x1,4x2,8x2] [--workdir DIR]

Trains a small model once on the four sample shards, then, for each SHARDSxWORKERS, scores that
many shards (copies of the sample shards with their ids prefixed, about 3,000 documents each) as
a backfill does: one run of `score_corpus` per shard, WORKERS runs at a time, every step in its own
process (the multiprocess executor). Peak RSS is the `peak_rss_mib` each scoring step records.
"""

import argparse
import os
import tempfile
import time
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
        "distilled_model": {"config": {"epochs": 25, "batch_size": 128, "hidden_dims": [128]}},
    }
}
TRAINING = ["training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier"]


def write_corpus(directory: Path, shards: int) -> None:
    from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR

    directory.mkdir(parents=True)
    samples = sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))
    for i in range(shards):
        table = pq.read_table(samples[i % len(samples)])
        ids = pc.binary_join_element_wise(pa.scalar(f"c{i}"), table["id"], ":")
        pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", ids), directory / f"shard-{i:02d}.parquet")


def fresh_instance(root: Path, corpus: Path, storage: Path) -> dg.DagsterInstance:
    """An instance with every shard of `corpus` added and ingested; the environment points runs at them."""
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, resources_from_env
    from embedding_assets.partitions import corpus_shards
    from embedding_assets.resources import Compute

    os.environ["EMBEDDING_ASSETS_CORPUS"] = str(corpus)
    os.environ["EMBEDDING_ASSETS_STORAGE"] = str(storage)
    home = Path(tempfile.mkdtemp(dir=root, prefix="home-"))
    instance = dg.DagsterInstance.local_temp(str(home))
    resources = {**resources_from_env(), "compute": Compute(device="cpu")}
    shards = sorted(resources["corpus"].shards())
    instance.add_dynamic_partitions(corpus_shards.name, shards)
    for shard in shards:
        assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key=shard, instance=instance, resources=resources).success
    return instance


def train(root: Path, storage: Path) -> None:
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, resources_from_env
    from embedding_assets.resources import Compute

    instance = fresh_instance(root, root / "corpus-4", storage)
    resources = {**resources_from_env(), "compute": Compute(device="cpu")}
    assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=TRAINING, instance=instance, resources=resources, run_config=TRAIN_CONFIG).success
    instance.dispose()


def peak_rss_mib(instance: dg.DagsterInstance, run_id: str) -> float:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        return float(entry.asset_materialization.metadata["peak_rss_mib"].value)
    raise LookupError(f"run {run_id} materialised nothing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="4x1,4x2,8x2", help="comma-separated SHARDSxWORKERS")
    parser.add_argument("--workdir", help="where corpora, storage and instances go (default: a temp dir)")
    args = parser.parse_args(argv)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    for n in sorted({n for n, _ in configs} | {4}):
        write_corpus(root / f"corpus-{n}", n)
    storage = root / "storage"
    started = time.perf_counter()
    train(root, storage)
    print(f"trained in {time.perf_counter() - started:.0f} s; workdir {root}", flush=True)

    from embedding_assets.jobs.launch import run_partitions

    print(f"{'shards':>6} {'runs at once':>12} {'documents':>9} {'wall s':>7} {'docs/s':>7} {'step peak RSS MB (max)':>22}")
    for shards, workers in configs:
        instance = fresh_instance(root, root / f"corpus-{shards}", storage)
        partitions = sorted(instance.get_dynamic_partitions("corpus_shards"))
        started = time.perf_counter()
        runs = run_partitions(instance, "score_corpus", partitions, workers)
        wall = time.perf_counter() - started
        assert all(run.success for run in runs), [run for run in runs if not run.success]
        documents = sum(pq.read_metadata(storage / "scored_corpus" / f"{p}.parquet").num_rows for p in partitions)
        rss = max(peak_rss_mib(instance, run.run_id) for run in runs)
        print(f"{shards:>6} {workers:>12} {documents:>9} {wall:>7.1f} {documents / wall:>7.0f} {rss:>22.0f}", flush=True)
        instance.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
