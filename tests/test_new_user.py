"""What a new user with a new corpus tripped on: signals from scripts, silent defaults, late errors,
names that cannot be partitions, wrong summary numbers, and runs that overlap. Each test is named
after what it checks; the README's "A new corpus" table has a row for each."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, stored_file
from embedding_assets.assets.reference import curation_input_problems
from embedding_assets.corpus import read_shard, scan_location
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, curation_from_env
from embedding_assets.engine.errors import InputError
from embedding_assets.jobs.sensors import corpus_shard_sensor
from embedding_assets.resources import CorpusSource, Curation
from embedding_assets.resources.gates import gates_from_env
from embedding_assets.resources.s3 import S3Settings
from embedding_assets.run_summary import Summary, read_summary, summary_lines
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_CORPUS_DIR


def sample_rows(count: int, start: int = 0, prefix: str = "") -> list[dict]:
    table = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[1]).slice(start, count)
    return [{**row, "id": prefix + row["id"]} for row in table.to_pylist()]


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def run_command(*args: str, home: Path, storage: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_ASSETS_DEVICE": "cpu"}
    command = [sys.executable, "-m", "embedding_assets.run", "--storage", str(storage), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def entries(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


class BackgroundRun:
    """The run command started as a background job of a non-interactive shell, as a script, CI or a
    supervisor starts it: such a job inherits SIGINT ignored."""

    def __init__(self, tmp: Path, corpus: Path, home: Path, storage: Path, name: str):
        self.pid_file = tmp / f"{name}.pid"
        self.log, self.rc_file = tmp / f"{name}.log", tmp / f"{name}.rc"
        command = (
            f"{sys.executable} -m embedding_assets.run --corpus {corpus} --storage {storage} "
            f"--positive-labels {','.join(NETWORKING_LABELS)} --sample-size 700 --epochs 1 > {self.log} 2>&1 & "
            f"echo $! > {self.pid_file}; wait $!; echo $? > {self.rc_file}"
        )
        env = {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_ASSETS_DEVICE": "cpu", "EMBEDDING_ASSETS_CPU_THREADS": "1"}
        self.shell = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, text: str, seconds: float = 300) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.output():
            assert self.shell.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def ignored_signals(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)

    def stop(self, seconds: float = 90) -> tuple[int | None, float]:
        """SIGTERM to the run command; its exit status (None if it did not end) and how long it took."""
        os.kill(self.pid, signal.SIGTERM)
        sent = time.monotonic()
        while not self.rc_file.exists() and time.monotonic() - sent < seconds:
            time.sleep(0.2)
        took = time.monotonic() - sent
        if not self.rc_file.exists():
            os.kill(self.pid, signal.SIGKILL)
            self.shell.wait(30)
            return None, took
        self.shell.wait(30)
        return int(self.rc_file.read_text()), took

    def close(self) -> None:
        """Ends a run command a failed test left going, with the runs it launched."""
        if self.shell.poll() is None and self.pid_file.exists():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.shell.wait(90)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.shell.wait(30)


@pytest.fixture
def background(tmp_path):
    """Starts BackgroundRun's and ends whichever a test leaves going."""
    started: list[BackgroundRun] = []

    def start(*args) -> BackgroundRun:
        started.append(BackgroundRun(tmp_path, *args))
        return started[-1]

    yield start
    for run in started:
        run.close()


@pytest.fixture
def two_shards(tmp_path) -> Path:
    corpus = tmp_path / "corpus"
    for i in range(2):
        write_parquet(corpus / f"part-{i}.parquet", sample_rows(350, 350 * i))
    return corpus


def test_sigterm_stops_the_run_command_started_in_the_background_of_a_script(tmp_path, two_shards, background):
    home, storage = tmp_path / "home", tmp_path / "storage"
    run = background(two_shards, home, storage, "background")
    run.wait_for("curation mode: ")
    assert run.ignored_signals() & (1 << (signal.SIGINT - 1))  # the shell's background job ignores Ctrl-C, as it should
    assert not run.ignored_signals() & (1 << (signal.SIGTERM - 1))
    status, took = run.stop()
    assert status == 130 and took < 60, run.output()
    assert "interrupted" in run.output()
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        assert not [r for r in instance.get_runs() if not r.is_finished]


def test_a_second_run_command_on_the_same_home_is_refused_and_the_first_goes_on(tmp_path, two_shards, background):
    home, storage = tmp_path / "home", tmp_path / "storage"
    first = background(two_shards, home, storage, "first")
    first.wait_for("curation mode: ")
    second = run_command("--corpus", str(two_shards), "--positive-labels", ",".join(NETWORKING_LABELS), home=home, storage=storage)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"another run command (pid {first.pid}) is running on DAGSTER_HOME={home}" in second.stderr
    assert "curation mode" not in second.stdout  # refused before it launched anything
    first.wait_for("ingest_corpus[part-1]: success")
    status, _ = first.stop()
    assert status == 130, first.output()
    # The first one's ingested shards are whole: each is read back as written.
    for shard in ("part-0", "part-1"):
        assert pq.read_table(stored_file(storage, "raw_corpus", shard)).num_rows == 350


def test_keep_fraction_and_top_k_of_0_are_refused_by_name_never_replaced_by_defaults(tmp_path, monkeypatch):
    s3 = S3Settings()
    monkeypatch.setenv("EMBEDDING_ASSETS_KEEP_FRACTION", "0")
    with pytest.raises(ValueError, match=r"keep_fraction \(--keep-fraction, EMBEDDING_ASSETS_KEEP_FRACTION\) must be in \(0, 1\], got 0"):
        curation_from_env("corpus", s3)
    monkeypatch.setenv("EMBEDDING_ASSETS_KEEP_FRACTION", "1")
    monkeypatch.setenv("EMBEDDING_ASSETS_TOP_K", "0")
    with pytest.raises(ValueError, match=r"top_k \(--top-k, EMBEDDING_ASSETS_TOP_K\) must be >= 1, got 0"):
        curation_from_env("corpus", s3)
    monkeypatch.setenv("EMBEDDING_ASSETS_TOP_K", "3")
    assert (curation_from_env("corpus", s3).keep_fraction, curation_from_env("corpus", s3).top_k) == (1.0, 3)
    monkeypatch.delenv("EMBEDDING_ASSETS_KEEP_FRACTION")
    monkeypatch.delenv("EMBEDDING_ASSETS_TOP_K")

    refused = run_command("--corpus", str(SAMPLE_CORPUS_DIR), "--keep-fraction", "0", home=tmp_path / "home", storage=tmp_path / "storage")
    assert refused.returncode == 2 and "bad setting" in refused.stderr and "keep_fraction (--keep-fraction" in refused.stderr, refused.stderr
    assert entries(tmp_path / "home") == [] and not (tmp_path / "storage").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.1"])
def test_gate_thresholds_that_are_not_finite_or_out_of_range_are_refused_by_variable(value):
    for variable in ("EMBEDDING_ASSETS_GATE_MIN_HELDOUT_AUC", "EMBEDDING_ASSETS_GATE_MAX_SCORE_PSI", "EMBEDDING_ASSETS_GATE_NORM_TOLERANCE"):
        with pytest.raises(ValueError, match=f"\\({variable}\\) must be a finite number"):
            gates_from_env({variable: value})
    with pytest.raises(ValueError, match="EMBEDDING_ASSETS_GATE_DRIFT_REFERENCES.*must be in \\[0, 1\\]"):
        gates_from_env({"EMBEDDING_ASSETS_GATE_DRIFT_REFERENCES": f"perl-*={value}"})
    with pytest.raises(ValueError, match="EMBEDDING_ASSETS_GATE_MIN_TEXT_CHARS"):
        gates_from_env({"EMBEDDING_ASSETS_GATE_MIN_TEXT_CHARS": value})
    # In range: taken as given, the edges included.
    assert gates_from_env({"EMBEDDING_ASSETS_GATE_MIN_HELDOUT_AUC": "1", "EMBEDDING_ASSETS_GATE_MIN_SPEARMAN": "-1"}).min_heldout_auc == 1.0


def test_a_bad_reference_set_or_annotations_file_is_refused_before_any_run(tmp_path):
    good = tmp_path / "good"
    write_parquet(good / "refs.parquet", sample_rows(20, 0, "ref-"))
    no_text = tmp_path / "no_text"
    write_parquet(no_text / "refs.parquet", [{"id": r["id"], "body": r["text"]} for r in sample_rows(20, 0, "ref-")])
    few = tmp_path / "few"
    write_parquet(few / "refs.parquet", sample_rows(3, 0, "ref-"))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": r["id"], "label": "postgresql" if i % 2 else "other"}) + "\n" for i, r in enumerate(sample_rows(20))))

    def problems(**settings) -> list[str]:
        return curation_input_problems(Curation(**settings), min_reference_documents=10)

    assert problems(reference=str(good)) == []
    [missing] = problems(reference=str(tmp_path / "nowhere"))
    assert missing.startswith(f"--reference {tmp_path / 'nowhere'}: ") and "does not exist" in missing
    [column] = problems(reference=str(no_text))
    assert "shard refs.parquet: missing required column 'text'" in column
    [size] = problems(reference=str(few))
    assert "has 3 documents; at least 10 are needed" in size
    [negative] = problems(reference=str(good), negative_reference=str(tmp_path / "gone.parquet"))
    assert negative.startswith("--negative-reference ")
    [label] = problems(annotations=str(labels))
    assert "annotation labels ['other', 'postgresql'] are not true/false" in label and "--positive-labels" in label
    assert problems(annotations=str(labels), positive_labels=["postgresql"]) == []
    [one_sided] = problems(annotations=str(labels), positive_labels=["postgresql", "other"])
    assert "every annotated document is wanted" in one_sided
    [absent] = problems(annotations=str(tmp_path / "none.parquet"))
    assert "no parquet, jsonl or csv file there" in absent

    home, storage = tmp_path / "home", tmp_path / "storage"
    refused = run_command("--corpus", str(SAMPLE_CORPUS_DIR), "--reference", str(no_text), home=home, storage=storage)
    assert refused.returncode == 2 and "bad curation input: --reference" in refused.stderr and "missing required column 'text'" in refused.stderr, refused.stderr
    assert "curation mode" not in refused.stdout and entries(home) == [] and not storage.exists()


def test_shard_names_that_cannot_be_partitions_and_links_out_of_the_corpus_are_refused_by_file(tmp_path):
    corpus, outside = tmp_path / "corpus", tmp_path / "outside"
    write_parquet(corpus / "good-00.parquet", sample_rows(3))
    write_parquet(outside / "elsewhere.parquet", sample_rows(3, 3))
    bad = ["new\nline.parquet", "a...b.parquet", ",[1].parquet", "'quoted'.parquet", 'say "x".jsonl']
    for name in bad:
        (corpus / name).write_text('{"id": "x", "text": "y"}\n')
    (corpus / "linked.parquet").symlink_to(outside / "elsewhere.parquet")
    (corpus / "inside.parquet").symlink_to(corpus / "good-00.parquet")
    listing = scan_location(str(corpus))
    assert sorted(listing.shards) == ["good-00", "inside"]
    assert set(listing.refused) == {*bad, "linked.parquet"}
    assert "cannot be a partition key: rename the file" in listing.refused[",[1].parquet"]
    assert f"a symbolic link to {outside / 'elsewhere.parquet'}, outside the corpus location" in listing.refused["linked.parquet"]

    refused = run_command("--corpus", str(corpus), "--positive-labels", "x", home=tmp_path / "home", storage=tmp_path / "storage")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "bad corpus: " in refused.stderr and "shard file 'linked.parquet'" in refused.stderr and "shard file ',[1].parquet'" in refused.stderr
    assert not (tmp_path / "storage").exists()

    # The sensor leaves them out too, and says so.
    with dg.instance_for_test() as instance:
        result = corpus_shard_sensor(dg.build_sensor_context(instance=instance, resources={"corpus": CorpusSource(location=str(corpus))}))
    assert sorted(r.partition_key for r in result.run_requests) == ["good-00", "inside"]


@pytest.mark.parametrize(
    "bad_id, why",
    [("", "id is empty or only whitespace"), ("   ", "id is empty or only whitespace"), ("a\x00b", "holds a control character"),
     ("two\nlines", "holds a control character"), ("x" * 10_000, "id is 10,000 characters long; at most 2,048")],
)
def test_ids_that_are_empty_hold_control_characters_or_are_huge_are_refused_with_their_row(tmp_path, bad_id, why):
    rows = [{"id": f"ok-{i}", "text": "a document"} for i in range(5)]
    rows[3]["id"] = bad_id
    write_parquet(tmp_path / "shard.parquet", rows)
    with pytest.raises(InputError, match=f"shard shard.parquet: row 4: .*{why}"):
        list(read_shard(str(tmp_path / "shard.parquet")))
    (tmp_path / "shard.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(InputError, match=f"shard shard.jsonl: line 4: .*{why}"):
        list(read_shard(str(tmp_path / "shard.jsonl")))


def test_the_run_summary_counts_documents_as_the_stages_counted_them(pipeline, trained):
    results = pipeline["results"]
    summary = read_summary(pipeline["instance"], [r.run_id for r in results])
    sample_rows_stored = pq.read_metadata(stored_file(pipeline["storage"], "training_sample.parquet")).num_rows
    assert summary.stages["quality_classifier"].documents == sample_rows_stored
    assert summary.stages["teacher_embeddings"].documents == sample_rows_stored

    # A re-run whose teacher embeds nothing (its final file is read) shows no documents and no rate.
    again = dg.materialize(ALL_ASSETS, selection=["teacher_embeddings"], instance=trained["instance"], resources=trained["resources"])
    rerun = read_summary(trained["instance"], [again.run_id])
    assert rerun.stages["teacher_embeddings"].documents == 0
    [row] = [line for line in summary_lines(rerun, 10.0, "storage", "home", "log") if line.startswith("teacher_embeddings")]
    assert row.split()[2:] == ["-", "-"], row

    # A run that wrote nothing says so, rather than an empty outputs section.
    lines = summary_lines(Summary(), 1.0, "/data/storage", "home", "log")
    assert "outputs: none; nothing was written to /data/storage" in lines
    assert not any(line.strip() == "outputs: /data/storage" for line in lines)


@pytest.fixture(scope="module")
def every_shard_failed(tmp_path_factory):
    """The run command on a fresh DAGSTER_HOME (no dagster.yaml) and a corpus whose every shard lacks a text column."""
    tmp = tmp_path_factory.mktemp("every-shard-failed")
    corpus, home, storage = tmp / "corpus", tmp / "home", tmp / "storage"
    for i in range(2):
        write_parquet(corpus / f"broken-{i}.parquet", [{"id": f"{i}-{j}", "body": "no text column"} for j in range(5)])
    home.mkdir()
    run = run_command("--corpus", str(corpus), "--positive-labels", "x", home=home, storage=storage, timeout=600)
    return {"run": run, "home": home, "storage": storage}


def test_a_run_in_which_every_shard_failed_trains_nothing_and_writes_no_teacher(every_shard_failed):
    run = every_shard_failed["run"]
    assert run.returncode == 1, run.stdout + run.stderr
    assert "ingest_corpus: every shard failed; nothing more runs" in run.stderr
    assert "train_embedder" not in run.stdout
    assert not (every_shard_failed["storage"] / "teacher_model").exists()
    assert "outputs: none; nothing was written to" in run.stdout


def test_the_run_command_gives_a_fresh_dagster_home_a_minimal_dagster_yaml(every_shard_failed):
    run, home = every_shard_failed["run"], every_shard_failed["home"]
    assert "No dagster instance configuration file" not in run.stdout + run.stderr
    config = (home / "dagster.yaml").read_text()
    assert config.startswith("#")
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        assert len(instance.get_runs()) == 2  # the two ingest runs, in the SQLite history Dagster defaults to


def test_a_swapped_corpus_grown_by_one_shard_is_scored_by_the_sensor_without_retraining(trained, tmp_path):
    instance, storage = trained["instance"], trained["storage"]
    swapped = tmp_path / "swapped"
    write_parquet(swapped / "gamma.parquet", sample_rows(80, 600, "g-"))
    write_parquet(swapped / "delta.parquet", sample_rows(80, 700, "d-"))
    resources = {**trained["resources"], "corpus": CorpusSource(location=str(swapped))}
    trained_versions = {asset: instance.get_latest_materialization_event(dg.AssetKey(asset)).run_id for asset in ("distilled_model", "quality_classifier")}

    sensor_resources = {"corpus": resources["corpus"]}
    first = corpus_shard_sensor(dg.build_sensor_context(instance=instance, cursor=None, resources=sensor_resources))
    assert sorted(r.partition_key for r in first.run_requests) == ["delta", "gamma"]
    for request in first.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for request in first.run_requests:
        done = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus", "scored_corpus"], partition_key=request.partition_key, instance=instance, resources=resources)
        assert done.success
    before = {shard: stored_file(storage, "scored_corpus", shard).read_bytes() for shard in ("gamma", "delta")}

    write_parquet(swapped / "epsilon.parquet", sample_rows(80, 800, "e-"))
    grown = corpus_shard_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=sensor_resources))
    assert [r.partition_key for r in grown.run_requests] == ["epsilon"]
    for request in grown.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    scored = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus", "scored_corpus"], partition_key="epsilon", instance=instance, resources=resources)
    assert scored.success
    table = pq.read_table(stored_file(storage, "scored_corpus", "epsilon"))
    assert table.num_rows == 80 and set(table["id"].to_pylist()) == {r["id"] for r in sample_rows(80, 800, "e-")}
    model = instance.get_latest_materialization_event(dg.AssetKey("distilled_model")).asset_materialization.metadata["model_version"].value
    assert set(table["model_version"].to_pylist()) == {model}
    # Nothing was retrained, and the shards scored before are as they were.
    assert {asset: instance.get_latest_materialization_event(dg.AssetKey(asset)).run_id for asset in trained_versions} == trained_versions
    assert {shard: stored_file(storage, "scored_corpus", shard).read_bytes() for shard in before} == before
    assert not math.isnan(float(table["score"].to_numpy().mean()))
