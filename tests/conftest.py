import json
import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedding_assets.resources.teacher import default_teacher_dir
from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR


@pytest.fixture(scope="session")
def tokenizer_json() -> str:
    return (default_teacher_dir() / "tokenizer.json").read_text()


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    table = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[0])
    return table["text"].to_pylist()


def write_small_corpus(directory: Path, docs_per_shard: int = 200) -> dict[str, list[str]]:
    """Three parquet shards spread across the sample, one jsonl and one txt shard; returns ids per shard."""
    directory.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {}
    for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[:3]:
        table = pq.read_table(path)
        table = table.take(list(range(0, table.num_rows, table.num_rows // docs_per_shard))[:docs_per_shard])
        pq.write_table(table, directory / path.name)
        ids[path.stem] = table["id"].to_pylist()
    extra = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[3]).to_pylist()[::45][:60]
    with open(directory / "notes.jsonl", "w", encoding="utf-8") as f:
        for row in extra[:40]:
            f.write(json.dumps({"id": row["id"], "text": row["text"], "label": row["label"], "origin": "jsonl"}) + "\n")
    ids["notes"] = [row["id"] for row in extra[:40]]
    lines = [row["text"].replace("\n", " ") for row in extra[40:]]
    (directory / "lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids["lines"] = [f"lines:{i + 1}" for i in range(len(lines))]
    return ids


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    directory = tmp_path_factory.mktemp("corpus")
    return directory, write_small_corpus(directory)


TEST_RUN_CONFIG = {
    "ops": {
        "training_sample": {"config": {"size": 560, "heldout_fraction": 0.25}},
        "features": {"config": {"vocabulary_size": 50_000}},
        "distilled_model": {"config": {"epochs": 25, "batch_size": 128, "hidden_dims": [128]}},
        "quality_classifier": {"config": {"target_keep_fraction": 0.2}},
    }
}


def materialize_pipeline(instance: dg.DagsterInstance, resources: dict, shards: list[str], run_config=TEST_RUN_CONFIG):
    """Ingest every shard, train, then score every shard, as the jobs do; returns the run results."""
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
    from embedding_assets.partitions import corpus_shards

    known = set(instance.get_dynamic_partitions(corpus_shards.name))
    instance.add_dynamic_partitions(corpus_shards.name, [s for s in shards if s not in known])
    results = []
    for shard in shards:
        results.append(dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key=shard, instance=instance, resources=resources))
    training = ["training_sample", "features", "teacher_embeddings", "distilled_model", "quality_classifier"]
    results.append(dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=training, instance=instance, resources=resources, run_config=run_config))
    for shard in shards:
        results.append(dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["scored_corpus"], partition_key=shard, instance=instance, resources=resources))
    assert all(r.success for r in results)
    return results


@pytest.fixture(scope="session")
def pipeline(small_corpus, tmp_path_factory):
    """The whole graph materialised once on the small corpus, into local storage."""
    from embedding_assets.resources import Compute, CorpusSource, QualityGates, Storage, Teacher

    corpus_dir, ids = small_corpus
    storage_dir = tmp_path_factory.mktemp("storage")
    resources = {
        "corpus": CorpusSource(location=str(corpus_dir)),
        "storage": Storage(base=str(storage_dir)),
        "teacher": Teacher(),
        "compute": Compute(device="cpu"),
        "gates": QualityGates(),
    }
    with dg.instance_for_test() as instance:
        results = materialize_pipeline(instance, resources, sorted(ids))
        yield {"instance": instance, "resources": resources, "storage": storage_dir, "ids": ids, "results": results}
