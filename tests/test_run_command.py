"""The run command end to end on a small corpus: its runs are launched from the code location (so
the UI lists them under their jobs), a first tick of the corpus sensor afterwards requests nothing,
and the terminal gets a short report that ends with the summary table."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, stored_file
from embedding_assets.jobs.launch import LOCATION_NAME
from embedding_assets.jobs.sensors import corpus_shard_sensor
from embedding_assets.resources import CorpusSource
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_CORPUS_DIR

SHARDS = ("alpha", "beta")


def write_corpus(directory: Path) -> None:
    """Two shards of 400 sample documents each, networking ones among them."""
    directory.mkdir(parents=True)
    table = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[1])
    for i, shard in enumerate(SHARDS):
        pq.write_table(table.slice(400 * i, 400), directory / f"{shard}.parquet")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The run command, as `make run` calls it, on the small corpus with a persistent DAGSTER_HOME."""
    tmp = tmp_path_factory.mktemp("run-command")
    corpus, storage, home = tmp / "corpus", tmp / "storage", tmp / "home"
    write_corpus(corpus)
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_ASSETS_DEVICE": "cpu"}
    run = subprocess.run(
        [sys.executable, "-m", "embedding_assets.run", "--corpus", str(corpus), "--storage", str(storage),
         "--positive-labels", ",".join(NETWORKING_LABELS), "--sample-size", "700", "--epochs", "1", "--batch-size", "128"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return {"run": run, "corpus": corpus, "storage": storage, "home": home}


def test_every_run_of_the_run_command_is_a_run_of_its_job_in_the_code_location(made):
    with dg.DagsterInstance.local_temp(str(made["home"])) as instance:
        runs = instance.get_runs()
        jobs = sorted(run.job_name for run in runs)
        assert jobs == sorted(["ingest_corpus"] * 2 + ["train_embedder"] + ["score_corpus"] * 2 + ["select_corpus"])
        for run in runs:
            assert run.status == dg.DagsterRunStatus.SUCCESS
            origin = run.remote_job_origin
            assert origin is not None, run.job_name
            assert origin.location_name == LOCATION_NAME and origin.job_name == run.job_name
        assert sorted(run.tags.get("dagster/partition") for run in runs if run.job_name == "score_corpus") == list(SHARDS)
        # The launched runs' own processes ran the steps with the jobs' multiprocess executor.
        [train] = [run for run in runs if run.job_name == "train_embedder"]
        messages = [entry.message for entry in instance.all_logs(train.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
        assert any("multiprocess executor" in message for message in messages), messages


def test_workspace_yaml_serves_the_location_the_runs_come_from():
    import yaml

    [entry] = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    assert entry["python_module"]["location_name"] == LOCATION_NAME
    assert entry["python_module"]["module_name"] == "embedding_assets.definitions"


def test_after_the_run_command_a_first_sensor_tick_requests_nothing_and_a_rewritten_shard_is_requested(made):
    with dg.DagsterInstance.local_temp(str(made["home"])) as instance:
        corpus = CorpusSource(location=str(made["corpus"]))
        first = corpus_shard_sensor(dg.build_sensor_context(instance=instance, cursor=None, resources={"corpus": corpus}))
        assert first.run_requests == [] and first.dynamic_partitions_requests == []

        table = pq.read_table(made["corpus"] / "beta.parquet")
        pq.write_table(pa.concat_tables([table, table.slice(0, 1).set_column(0, "id", pa.array(["beta-extra"]))]), made["corpus"] / "beta.parquet")
        second = corpus_shard_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"corpus": corpus}))
        assert [request.partition_key for request in second.run_requests] == ["beta"]
        # A cursorless tick (a new deployment of the sensor) asks for the rewritten shard too, and only for it.
        fresh = corpus_shard_sensor(dg.build_sensor_context(instance=instance, cursor=None, resources={"corpus": corpus}))
        assert [request.partition_key for request in fresh.run_requests] == ["beta"]


def test_the_run_command_prints_a_short_report_that_ends_with_the_summary_table(made):
    out = made["run"].stdout + made["run"].stderr
    lines = out.splitlines()
    assert len(lines) < 60, out
    assert "DEBUG" not in out and "STEP_START" not in out and "RUN_START" not in out
    stdout = made["run"].stdout.splitlines()
    header = next(i for i, line in enumerate(stdout) if line.split()[:4] == ["stage", "time", "(s)", "documents"])
    # Nothing but the summary after the table's header: every run's line comes before it.
    assert all(": success in " not in line for line in stdout[header:])
    assert sum(": success in " in line for line in stdout[:header]) == 6
    summary = stdout[header:]
    rows = {line.split()[0]: line.split() for line in summary if line.split()}
    assert rows["raw_corpus"][1:3] == ["(2", "shards)"] and rows["raw_corpus"][4] == "800"
    assert rows["teacher_embeddings"][2] == "700" and rows["training_sample"][2] == "800"
    for shard in SHARDS:
        scored = pq.read_table(stored_file(made["storage"], "scored_corpus", shard))
        kept = sum(scored["keep"].to_pylist())
        assert rows[shard][1:] == [f"{scored.num_rows:,}", f"{kept:,}", f"{kept / scored.num_rows:.3f}"]
    assert summary[-1].startswith("runs, metadata and lineage: DAGSTER_HOME=") and str(made["home"]) in summary[-1]
    assert any(line.startswith("outputs: ") and str(made["storage"]) in line for line in summary)
    kept = sum(pq.read_table(stored_file(made["storage"], "selection.parquet"))["keep"].to_pylist())
    assert any(line.strip().startswith("keep list: ") and f"({kept:,} kept" in line for line in summary)


def test_without_dagster_home_a_temporary_instance_takes_launched_runs_and_is_removed(tmp_path, monkeypatch, capsys):
    from embedding_assets.jobs.launch import code_location, launch, wait
    from embedding_assets.partitions import corpus_shards
    from embedding_assets.run import instance_from_env

    write_corpus(tmp_path / "corpus")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("EMBEDDING_ASSETS_CORPUS", str(tmp_path / "corpus"))
    monkeypatch.setenv("EMBEDDING_ASSETS_STORAGE", str(tmp_path / "storage"))
    with instance_from_env() as instance:
        home = Path(instance.root_directory)
        assert home.is_dir() and os.environ["DAGSTER_HOME"] == str(home)
        instance.add_dynamic_partitions(corpus_shards.name, ["alpha"])
        with code_location(instance, str(tmp_path / "run.log")) as context:
            run = launch(context, "ingest_corpus", partition="alpha")
            ended = wait(instance, [run.run_id], timeout=600)[run.run_id]
        assert ended.status == dg.DagsterRunStatus.SUCCESS and ended.remote_job_origin is not None
    assert not home.exists() and "DAGSTER_HOME" not in os.environ
    assert f"DAGSTER_HOME is not set: this run's history is kept in {home}" in capsys.readouterr().out
    assert "RUN_START" in (tmp_path / "run.log").read_text()  # the run's event lines went to the log, not the terminal


def test_waiting_on_a_launched_run_whose_process_is_killed_ends_with_the_run_failed(tmp_path):
    import signal
    import time

    from embedding_assets.jobs.launch import code_location, launch, wait, worker_pid
    from embedding_assets.partitions import corpus_shards

    write_corpus(tmp_path / "corpus")
    env = {"EMBEDDING_ASSETS_CORPUS": str(tmp_path / "corpus"), "EMBEDDING_ASSETS_STORAGE": str(tmp_path / "storage")}
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        for name, value in env.items():
            patch.setenv(name, value)
        instance.add_dynamic_partitions(corpus_shards.name, ["alpha"])
        with code_location(instance, str(tmp_path / "run.log")) as context:
            run = launch(context, "ingest_corpus", partition="alpha")
            deadline = time.monotonic() + 300
            while (pid := worker_pid(instance, run.run_id)) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            ended = wait(instance, [run.run_id], timeout=120)[run.run_id]
        # Marked failed (by the code server that started the process, or by the wait, whichever sees it
        # first) rather than left STARTED for a wait that never ends.
        assert ended.status == dg.DagsterRunStatus.FAILURE
        assert instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
