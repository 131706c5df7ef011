"""Crash safety and resume: a materialisation killed with SIGKILL in the middle of writing leaves
the previous files whole and no partial file under a final name, and the re-run completes with
the results of an uninterrupted run; teacher_embeddings re-embeds only the chunks it lacks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load as load_safetensors

from conftest import local_resources, stored_file
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.partitions import corpus_shards
from embedding_assets.resources import Teacher
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_CORPUS_DIR

# The materialisation that gets killed runs in its own process, configured as a deployment is.
CHILD = """
import json, sys
import dagster as dg
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, resources_from_env
from embedding_assets.partitions import corpus_shards
asset, partition, run_config = sys.argv[1], sys.argv[2] or None, json.loads(sys.argv[3])
instance = dg.DagsterInstance.get()
if partition:
    instance.add_dynamic_partitions(corpus_shards.name, [partition])
dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=[asset], partition_key=partition, instance=instance, resources=resources_from_env(), run_config=run_config)
"""


@pytest.fixture
def workspace(pipeline, small_corpus, tmp_path):
    """A copy of the materialised pipeline's storage, with the corpus and a copy of its Dagster home beside it."""
    storage = tmp_path / "storage"
    shutil.copytree(pipeline["storage"], storage)
    home = tmp_path / "home"
    shutil.copytree(pipeline["instance"].root_directory, home)
    return {"storage": storage, "corpus": small_corpus[0], "home": home, "resources": local_resources(small_corpus[0], storage)}


def start_child(workspace, asset: str, partition: str | None, run_config: dict) -> subprocess.Popen:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(workspace["home"]),
        "EMBEDDING_ASSETS_STORAGE": str(workspace["storage"]),
        "EMBEDDING_ASSETS_POSITIVE_LABELS": ",".join(NETWORKING_LABELS),
        "EMBEDDING_ASSETS_CORPUS": str(workspace["corpus"]),
        "EMBEDDING_ASSETS_DEVICE": "cpu",
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, asset, partition or "", json.dumps(run_config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_when(child: subprocess.Popen, ready, timeout: float = 180) -> None:
    """SIGKILL the child as soon as `ready()` holds; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            pytest.fail(f"the run ended (rc {child.returncode}) before the point to kill it:\n{child.stdout.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            pytest.fail("the run never reached the point to kill it")
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(30)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def final_files(storage: Path) -> dict[str, bytes]:
    """Every file under a final name (temporary files are hidden), with its bytes."""
    return {p.relative_to(storage).as_posix(): p.read_bytes() for p in sorted(storage.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def temp_files(storage: Path) -> list[Path]:
    return [p for p in storage.rglob(".*.tmp")]


def assert_every_file_reads(storage: Path) -> None:
    for name, data in final_files(storage).items():
        if name.endswith(".parquet"):
            pq.read_table(storage / name)
        elif name.endswith(".json"):
            json.loads(data)
        elif name.endswith(".safetensors"):
            load_safetensors(data)


def materialize(workspace, selection, partition=None, run_config=None, resources=None):
    """A run on the workspace's Dagster home, the one its killed child runs on too."""
    with dg.instance_for_test(temp_dir=str(workspace["home"])) as instance:
        if partition:
            instance.add_dynamic_partitions(corpus_shards.name, [partition])
        result = dg.materialize(
            ALL_ASSETS + ALL_CHECKS, selection=selection, partition_key=partition, instance=instance, resources=resources or workspace["resources"], run_config=run_config or {}
        )
    assert result.success
    return result


def metadata(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def chunk_files(storage: Path) -> dict[str, list[str]]:
    folder = storage / "teacher_chunks"
    return {d.name: sorted(p.name for p in d.glob("*.parquet")) for d in sorted(folder.iterdir())} if folder.exists() else {}


def small_sample(storage: Path, home: Path, size: int) -> None:
    """A training sample of `size` short documents from a sample shard (only the teacher reads it
    here), stored as a version and reported to the instance as training_sample's materialisation."""
    rows = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[0]).slice(0, size)
    sample = pa.table({"id": rows["id"], "text": pc.utf8_slice_codeunits(rows["text"], 0, 200), "label": rows["label"], "shard": ["s"] * size, "split": ["train"] * size})
    folder = storage / "training_sample" / "20260101T000000000000Z-00000000"
    folder.mkdir(parents=True)
    pq.write_table(sample, folder / "training_sample.parquet")
    home.mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("training_sample", metadata={"stored_at": f"training_sample/{folder.name}"}))


def chunking(size: int) -> dict:
    return {"ops": {"teacher_embeddings": {"config": {"chunk_size": size}}}}


def test_teacher_embeddings_killed_mid_run_keeps_the_previous_file_and_resumes(small_corpus, tmp_path):
    storage = tmp_path / "storage"
    small_sample(storage, tmp_path / "home", 96)
    workspace = {"storage": storage, "corpus": small_corpus[0], "home": tmp_path / "home", "resources": local_resources(small_corpus[0], storage)}
    materialize(workspace, ["teacher_model", "teacher_embeddings"], run_config=chunking(8))  # the previous materialisation
    before = final_files(storage)
    assert chunk_files(storage) == {}  # once the final file is written, its chunks are removed

    # Another chunk size is another set of chunks: the killed run has all 16 to embed.
    child = start_child(workspace, "teacher_embeddings", None, chunking(6))

    def two_new_chunks_stored():
        return any(len(names) >= 2 for names in chunk_files(storage).values())

    kill_when(child, two_new_chunks_stored)
    after_kill = final_files(storage)
    assert {k: v for k, v in after_kill.items() if not k.startswith("teacher_chunks/")} == {
        k: v for k, v in before.items() if not k.startswith("teacher_chunks/")
    }  # teacher_embeddings.parquet and every other final file untouched
    assert_every_file_reads(storage)
    [new_key] = list(chunk_files(storage))
    stored = chunk_files(storage)[new_key]
    assert 2 <= len(stored) < 16
    for name in stored:
        assert pq.read_metadata(storage / "teacher_chunks" / new_key / name).num_rows == 6

    result = materialize(workspace, ["teacher_embeddings"], run_config=chunking(6))
    meta = metadata(result, "teacher_embeddings")
    assert meta["chunks"] == 16
    assert (meta["chunks_reused"], meta["chunks_computed"]) == (len(stored), 16 - len(stored))
    assert chunk_files(storage) == {}  # assembled into the final file, the resumed chunks are removed too
    assert meta["chunk_folders_removed"] == 1
    assert not temp_files(storage)

    [stored_before] = [name for name in before if name.endswith("/teacher_embeddings.parquet")]
    previous = pq.read_table(pa.BufferReader(before[stored_before]))
    resumed = pq.read_table(stored_file(storage, "teacher_embeddings.parquet"))
    assert resumed["id"].equals(previous["id"])
    # Same documents, other chunk boundaries: the teacher batches them differently, so allow float noise.
    assert np.abs(vectors(resumed) - vectors(previous)).max() < 1e-5


def vectors(table: pa.Table) -> np.ndarray:
    return table["embedding"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)


def write_big_shard(corpus: Path, documents: int) -> None:
    texts = pa.concat_tables([pq.read_table(p, columns=["text"]) for p in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))])["text"]
    texts = pc.utf8_slice_codeunits(texts, 0, 300)
    texts = pa.concat_arrays([texts.combine_chunks()] * -(-documents // len(texts)))[:documents]
    # Each copy numbered, so the shard passes its gate on repeated texts.
    texts = pc.binary_join_element_wise(texts, pa.array([f" ({i})" for i in range(documents)]), "")
    pq.write_table(pa.table({"id": [f"big:{i}" for i in range(documents)], "text": texts}), corpus / "big.parquet")


def test_scored_corpus_killed_mid_write_keeps_the_previous_shard_and_reruns_to_the_same_result(workspace, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(workspace["corpus"], corpus)
    write_big_shard(corpus, 24_000)
    workspace["corpus"] = corpus
    resources = local_resources(corpus, workspace["storage"])
    materialize(workspace, ["raw_corpus"], partition="big", resources=resources)
    materialize(workspace, ["scored_corpus"], partition="big", resources=resources)
    storage = workspace["storage"]
    before = final_files(storage)
    target = stored_file(storage, "scored_corpus", "big")

    child = start_child(workspace, "scored_corpus", "big", {})

    def first_batches_written():
        # The parquet header is 4 bytes; more means record batches are going into the temporary file.
        return any(p.stat().st_size > 4 for p in target.parent.parent.glob("*/.big.parquet.*.tmp"))

    kill_when(child, first_batches_written)
    leftovers = temp_files(storage)
    # Killed before the rename, in a new version folder: the write was cut short, the stored version untouched.
    assert len(leftovers) == 1 and leftovers[0].parent.parent == target.parent.parent and leftovers[0].parent != target.parent
    assert final_files(storage) == before
    assert_every_file_reads(storage)
    # The killed run is still "started" for the instance, and pruning spares the folder of a run in
    # progress; terminating it in the UI (or run monitoring, where the launcher checks its workers) marks it failed.
    with dg.instance_for_test(temp_dir=str(workspace["home"])) as instance:
        [killed] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert leftovers[0].parent.name.endswith(killed.run_id[:8])
        instance.report_run_failed(killed)

    result = materialize(workspace, ["scored_corpus"], partition="big", resources=resources)
    assert metadata(result, "scored_corpus")["dagster/row_count"] == 24_000
    assert not temp_files(storage)  # the re-run removed what the killed writer left
    rerun = pq.read_table(stored_file(storage, "scored_corpus", "big"))
    previous = pq.read_table(pa.BufferReader(before[target.relative_to(storage).as_posix()]))
    for column in ("id", "embedding", "score", "keep", "model_version", "classifier_version"):
        assert rerun[column].equals(previous[column]), column


def test_chunks_of_another_sample_or_teacher_are_never_reused(tmp_path, small_corpus):
    storage = tmp_path / "storage"
    small_sample(storage, tmp_path / "home", 24)
    resources = local_resources(small_corpus[0], storage)
    config = chunking(8)
    workspace = {"resources": resources, "home": tmp_path / "home"}

    def run(resources=resources):
        result = materialize(workspace, ["teacher_model", "teacher_embeddings"], run_config=config, resources=resources)
        return metadata(result, "teacher_embeddings")

    first = run()
    assert (first["chunks"], first["chunks_reused"], first["chunks_computed"]) == (3, 0, 3)
    again = run()
    assert (again["chunks_reused"], again["chunks_computed"], again["chunk_key"]) == (3, 0, first["chunk_key"])
    assert again["device"] == "none"  # nothing to embed: the teacher was not even loaded

    # One changed text is a new sample version: no chunk of the old one is read.
    sample = pq.read_table(stored_file(storage, "training_sample.parquet")).to_pydict()
    sample["text"][20] = "a document that the previous chunks never saw"
    pq.write_table(pa.table(sample), stored_file(storage, "training_sample.parquet"))
    changed = run()
    assert changed["chunk_key"] != first["chunk_key"]
    assert (changed["chunks_reused"], changed["chunks_computed"]) == (0, 3)
    assert chunk_files(storage) == {}

    previous = vectors(pq.read_table(stored_file(storage, "teacher_embeddings.parquet")))
    shorter_reads = {**resources, "teacher": Teacher(max_seq_length=16)}  # another teacher identity
    other = run(shorter_reads)
    assert other["chunk_key"] != changed["chunk_key"]
    assert (other["chunks_reused"], other["chunks_computed"]) == (0, 3)
    assert np.abs(vectors(pq.read_table(stored_file(storage, "teacher_embeddings.parquet"))) - previous).max() > 0.01


def test_assembled_teacher_chunks_are_removed_and_a_rerun_with_the_same_key_reads_the_final_file(tmp_path, small_corpus):
    storage = tmp_path / "storage"
    small_sample(storage, tmp_path / "home", 24)
    workspace = {"resources": local_resources(small_corpus[0], storage), "home": tmp_path / "home"}
    first = metadata(materialize(workspace, ["teacher_model", "teacher_embeddings"], run_config=chunking(8)), "teacher_embeddings")
    assert first["chunks_computed"] == 3 and first["embedded_documents"] == 24
    assert chunk_files(storage) == {} and first["chunk_folders_removed"] == 1
    written = pq.read_table(stored_file(storage, "teacher_embeddings.parquet"))

    again = metadata(materialize(workspace, ["teacher_embeddings"], run_config=chunking(8)), "teacher_embeddings")
    assert (again["chunk_key"], again["chunks_computed"], again["embedded_documents"], again["device"]) == (first["chunk_key"], 0, 0, "none")
    assert chunk_files(storage) == {}
    assert pq.read_table(stored_file(storage, "teacher_embeddings.parquet")).equals(written)
