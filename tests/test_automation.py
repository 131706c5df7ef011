"""The corpus sensor, parallel scoring of shards, the refresh automation, and the Kubernetes configuration."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import TEST_RUN_CONFIG, stored_file
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, defs
from embedding_assets.jobs.launch import run_partitions
from embedding_assets.jobs.sensors import corpus_shard_sensor
from embedding_assets.partitions import corpus_shards
from embedding_assets.resources import CorpusSource, Storage
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_CORPUS_DIR

ROOT = Path(__file__).resolve().parents[1]
SCORED = dg.AssetKey("scored_corpus")


def write_shard(directory: Path, name: str, ids: list[str]) -> None:
    pq.write_table(pa.table({"id": ids, "text": [f"socket text {i}" for i in ids]}), directory / f"{name}.parquet")


def tick(instance, corpus_dir: Path, cursor: str | None):
    """One sensor evaluation; partitions it asks for are added, as the daemon does before launching runs."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"corpus": CorpusSource(location=str(corpus_dir))})
    result = corpus_shard_sensor(context)
    added = [key for request in result.dynamic_partitions_requests for key in request.partition_keys]
    instance.add_dynamic_partitions(corpus_shards.name, added)
    return result, added


def test_sensor_adds_and_requests_new_shards_once_and_rewritten_shards_again(tmp_path):
    watched = tmp_path / "incoming"
    watched.mkdir()
    write_shard(watched, "a", ["a1", "a2"])
    write_shard(watched, "b", ["b1"])
    with dg.instance_for_test() as instance:
        first, added = tick(instance, watched, None)
        assert added == ["a", "b"]
        assert sorted(r.partition_key for r in first.run_requests) == ["a", "b"]
        assert set(instance.get_dynamic_partitions(corpus_shards.name)) == {"a", "b"}

        quiet, added = tick(instance, watched, first.cursor)
        assert quiet.run_requests == [] and added == []

        write_shard(watched, "c", ["c1"])
        third, added = tick(instance, watched, quiet.cursor)
        assert added == ["c"] and [r.partition_key for r in third.run_requests] == ["c"]

        write_shard(watched, "a", ["a1", "a2", "a3"])
        rewritten, added = tick(instance, watched, third.cursor)
        assert added == []
        assert [r.partition_key for r in rewritten.run_requests] == ["a"]
        [old_key] = [r.run_key for r in first.run_requests if r.partition_key == "a"]
        assert rewritten.run_requests[0].run_key != old_key

        assert tick(instance, watched, rewritten.cursor)[0].run_requests == []


def test_sensor_skips_when_the_corpus_location_is_missing(tmp_path):
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"corpus": CorpusSource(location=str(tmp_path / "absent"))})
        assert isinstance(corpus_shard_sensor(context), dg.SkipReason)


def ingested(pipeline, tmp_path, monkeypatch, corpus_dir: Path) -> dict:
    """A copy of the trained storage, a persistent instance in tmp, and every shard of `corpus_dir` ingested into it."""
    storage = tmp_path / "storage"
    shutil.copytree(pipeline["storage"], storage)
    resources = {**pipeline["resources"], "storage": Storage(base=str(storage)), "corpus": CorpusSource(location=str(corpus_dir))}
    # Runs in other processes load the definitions from the environment.
    monkeypatch.setenv("EMBEDDING_ASSETS_STORAGE", str(storage))
    monkeypatch.setenv("EMBEDDING_ASSETS_POSITIVE_LABELS", ",".join(NETWORKING_LABELS))
    monkeypatch.setenv("EMBEDDING_ASSETS_CORPUS", str(corpus_dir))
    monkeypatch.setenv("EMBEDDING_ASSETS_MAX_CONCURRENT", "2")
    shards = sorted(resources["corpus"].shards())
    home = tmp_path / "dagster_home"
    # The copied outputs are read once the instance says they passed their gates: its history comes too.
    shutil.copytree(pipeline["instance"].root_directory, home)
    instance = dg.DagsterInstance.local_temp(str(home))
    instance.add_dynamic_partitions(corpus_shards.name, shards)
    for shard in shards:
        assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key=shard, instance=instance, resources=resources).success
    return {"instance": instance, "resources": resources, "storage": storage, "corpus": corpus_dir, "shards": shards}


@pytest.fixture
def sample_shards(pipeline, tmp_path, monkeypatch):
    """Four shards of about 9,000 documents (each sample shard three times over, ids made unique,
    texts made distinct by trailing spaces, which tokenise to nothing: the duplicate gate passes
    and the scores keep the sample's distribution), so that scoring one takes seconds, longer
    than the jitter in starting two runs."""
    corpus_dir = tmp_path / "large"
    corpus_dir.mkdir()
    for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet")):
        table = pq.read_table(path)
        copies = [
            table.set_column(0, "id", pc.binary_join_element_wise(table["id"], pa.scalar(f"copy{i}"), ":"))
            .set_column(1, "text", pc.binary_join_element_wise(table["text"], pa.scalar(" " * i), ""))
            for i in range(3)
        ]
        pq.write_table(pa.concat_tables(copies), corpus_dir / path.name)
    state = ingested(pipeline, tmp_path, monkeypatch, corpus_dir)
    yield state
    state["instance"].dispose()


@pytest.fixture
def small_shards(pipeline, tmp_path, monkeypatch):
    """A writable copy of the small test corpus the model was trained on."""
    corpus_dir = tmp_path / "corpus"
    shutil.copytree(pipeline["resources"]["corpus"].location, corpus_dir)
    state = ingested(pipeline, tmp_path, monkeypatch, corpus_dir)
    yield state
    state["instance"].dispose()


def step_window(instance, run_id: str, step_key: str) -> tuple[float, float]:
    events = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS})
    times = {e.dagster_event.event_type: e.timestamp for e in events if e.step_key == step_key}
    return times[dg.DagsterEventType.STEP_START], times[dg.DagsterEventType.STEP_SUCCESS]


def test_four_shards_score_two_at_a_time_with_the_multiprocess_executor(sample_shards):
    instance, shards, storage = sample_shards["instance"], sample_shards["shards"], sample_shards["storage"]
    assert len(shards) == 4
    runs = run_partitions(instance, "score_corpus", shards, workers=2)
    assert all(run.success for run in runs)
    for run in runs:
        assert instance.get_run_by_id(run.run_id).tags["dagster/partition"] == run.partition
    windows = sorted(step_window(instance, run.run_id, "scored_corpus") for run in runs)
    overlaps = [(a, b) for i, a in enumerate(windows) for b in windows[i + 1 :] if b[0] < a[1]]
    assert overlaps, f"no two scoring steps ran at the same time: {windows}"
    # Never more than two at once: the third starts only after one of the first two finished.
    for start, _ in windows:
        assert sum(1 for s, e in windows if s <= start < e) <= 2
    for shard in shards:
        scored = pq.read_table(stored_file(storage, "scored_corpus", shard))
        raw = pq.read_table(stored_file(storage, "raw_corpus", shard))
        assert scored.num_rows > 8000 and scored["id"].to_pylist() == raw["id"].to_pylist()
        assert shard in instance.get_materialized_partitions(SCORED)


def requested(instance, cursor=None):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return result, {key.to_user_string(): result.get_requested_partitions(key) for key in defs.resolve_all_asset_keys() if result.get_num_requested(key)}


def test_refresh_requests_every_scored_shard_after_retraining_and_nothing_when_unchanged(small_shards):
    instance, resources, shards = small_shards["instance"], small_shards["resources"], small_shards["shards"]

    def materialize(selection, partition=None, run_config=None):
        result = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=selection, partition_key=partition, instance=instance, resources=resources, run_config=run_config or {})
        assert result.success

    materialize(["quality_classifier", "clusters"])
    result, first = requested(instance)  # the first evaluation is the baseline of the next
    for shard in shards:
        materialize(["scored_corpus"], shard)
    # The corpus report follows the scoring.
    result, asked = requested(instance, result.cursor)
    assert asked == {"corpus_report": {None}}, first
    materialize(["corpus_report"])
    result, asked = requested(instance, result.cursor)
    assert asked == {}

    retrain = {"ops": {"distilled_model": {"config": {**TEST_RUN_CONFIG["ops"]["distilled_model"]["config"], "seed": 1}}}}
    materialize(["distilled_model", "quality_classifier"], run_config=retrain)
    result, asked = requested(instance, result.cursor)
    assert asked == {"scored_corpus": set(shards)}

    # Requested once: the next evaluation, with nothing new, asks for nothing.
    result, asked = requested(instance, result.cursor)
    assert asked == {}

    # Once a shard is scored again, the report is asked for, once.
    materialize(["scored_corpus"], shards[0])
    result, asked = requested(instance, result.cursor)
    assert asked == {"corpus_report": {None}}
    result, asked = requested(instance, result.cursor)
    assert asked == {}

    # A new shard, once ingested, is missing from scored_corpus and is the only one requested.
    write_shard(small_shards["corpus"], "zz-late", ["late-1", "late-2"])
    instance.add_dynamic_partitions(corpus_shards.name, ["zz-late"])
    materialize(["raw_corpus"], "zz-late")
    result, asked = requested(instance, result.cursor)
    assert asked == {"scored_corpus": {"zz-late"}}


K8S_PROBE = """
import json
from dagster_k8s.job import get_user_defined_k8s_config
from embedding_assets.definitions import defs
out = {"executors": {}, "k8s": {}, "pools": {}}
# Every job, the implicit asset job too: automation, UI materialisations and backfills run it.
for job in defs.get_repository_def().get_all_jobs():
    out["executors"][job.name] = job.executor_def.name
for name in ("ingest_corpus", "train_embedder", "score_corpus", "refresh_shard"):
    job = defs.resolve_job_def(name)
    for node in job.nodes:
        config = get_user_defined_k8s_config(node.tags)
        out["k8s"][node.name] = {"container_config": config.container_config, "pod_spec_config": config.pod_spec_config}
        out["pools"][node.name] = node.definition.pool
print(json.dumps(out))
"""


def test_kubernetes_executor_and_the_pod_each_asset_asks_for():
    env = {**os.environ, "EMBEDDING_ASSETS_EXECUTOR": "k8s"}
    out = json.loads(subprocess.run([sys.executable, "-c", K8S_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout)
    assert set(out["executors"].values()) == {"k8s"}
    assert {"__ASSET_JOB", "ingest_corpus", "prepare_curation", "train_embedder", "score_corpus", "refresh_shard", "select_corpus"} <= set(out["executors"])
    for gpu_asset in ("teacher_embeddings", "distilled_model"):
        resources = out["k8s"][gpu_asset]["container_config"]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["requests"]["nvidia.com/gpu"] == "1"
        assert resources["limits"]["memory"]
        assert out["pools"][gpu_asset] == "gpu"
    scored = out["k8s"]["scored_corpus"]["container_config"]["resources"]
    assert "nvidia.com/gpu" not in scored["limits"] and scored["limits"]["memory"]
    assert out["k8s"]["raw_corpus"]["container_config"] == {}


def test_deploy_run_config_is_valid_for_the_k8s_executor(monkeypatch):
    monkeypatch.setenv("EMBEDDING_ASSETS_EXECUTOR", "k8s")
    from dagster_k8s import k8s_job_executor

    from embedding_assets.jobs import executor_from_env

    assert executor_from_env() is k8s_job_executor
    job = dg.Definitions(assets=ALL_ASSETS, jobs=[dg.define_asset_job("score", selection=[SCORED], executor_def=k8s_job_executor)], resources=defs.resources).resolve_job_def("score")
    run_config = yaml.safe_load((ROOT / "deploy" / "run_config.yaml").read_text())
    assert dg.validate_run_config(job, run_config)
    values = yaml.safe_load((ROOT / "deploy" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "embedding_assets.definitions"]
    assert any(e["name"] == "EMBEDDING_ASSETS_EXECUTOR" and e["value"] == "k8s" for e in deployment["env"])


def test_multiprocess_executor_limit_comes_from_the_environment(monkeypatch):
    from embedding_assets.jobs import executor_from_env

    monkeypatch.setenv("EMBEDDING_ASSETS_MAX_CONCURRENT", "3")
    executor = executor_from_env()
    assert executor.name == "multiprocess"
    monkeypatch.setenv("EMBEDDING_ASSETS_EXECUTOR", "ray")
    with pytest.raises(ValueError, match="EMBEDDING_ASSETS_EXECUTOR"):
        executor_from_env()
