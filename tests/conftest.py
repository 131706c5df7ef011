import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedding_assets.resources.teacher import default_teacher_dir
from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer_json() -> str:
    return (default_teacher_dir() / "tokenizer.json").read_text()


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    table = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[0])
    return table["text"].to_pylist()


def write_small_corpus(directory: Path, docs_per_shard: int = 200) -> dict[str, list[str]]:
    """Three parquet shards spread across the sample, one jsonl and one txt shard; returns ids per shard.

    The txt shard's last line is the longest document of the first shard with its last word cut:
    a near-duplicate across shards.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {}
    texts: list[str] = []
    for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[:3]:
        table = pq.read_table(path)
        table = table.take(list(range(0, table.num_rows, table.num_rows // docs_per_shard))[:docs_per_shard])
        pq.write_table(table, directory / path.name)
        ids[path.stem] = table["id"].to_pylist()
        texts = texts or table["text"].to_pylist()
    extra = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[3]).to_pylist()[::45][:60]
    with open(directory / "notes.jsonl", "w", encoding="utf-8") as f:
        for row in extra[:40]:
            f.write(json.dumps({"id": row["id"], "text": row["text"], "label": row["label"], "origin": "jsonl"}) + "\n")
    ids["notes"] = [row["id"] for row in extra[:40]]
    lines = [row["text"].replace("\n", " ") for row in extra[40:]]
    lines.append(" ".join(max(texts, key=lambda t: len(t.split())).split()[:-1]))
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
        "distilled_model": {"config": {"epochs": 8, "batch_size": 128, "hidden_dims": [128]}},
        "clusters": {"config": {"k": 8}},
    }
}


def materialize_pipeline(instance: dg.DagsterInstance, resources: dict, shards: list[str], run_config=TEST_RUN_CONFIG):
    """Ingest every shard, train and cluster, score every shard, then select and report, as the jobs and the automation do; returns the run results."""
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
    from embedding_assets.partitions import corpus_shards

    known = set(instance.get_dynamic_partitions(corpus_shards.name))
    instance.add_dynamic_partitions(corpus_shards.name, [s for s in shards if s not in known])
    results = []
    for shard in shards:
        results.append(dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key=shard, instance=instance, resources=resources))
    training = ["corpus_id_index", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier", "clusters"]
    results.append(dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=training, instance=instance, resources=resources, run_config=run_config))
    for shard in shards:
        results.append(dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["scored_corpus"], partition_key=shard, instance=instance, resources=resources))
    results.append(dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["near_duplicates", "selection", "corpus_report"], instance=instance, resources=resources))
    assert all(r.success for r in results)
    return results


def local_resources(corpus_dir: Path, storage_dir: Path, curation=None) -> dict:
    """The resources of a local run: corpus and outputs in directories, the default teacher, CPU;
    curation by the sample's networking labels unless given."""
    from embedding_assets.resources import Compute, CorpusSource, Curation, QualityGates, Storage, Teacher
    from embedding_assets.sample_corpus import NETWORKING_LABELS

    return {
        "corpus": CorpusSource(location=str(corpus_dir)),
        "curation": curation or Curation(positive_labels=list(NETWORKING_LABELS)),
        "storage": Storage(base=str(storage_dir)),
        "teacher": Teacher(),
        "compute": Compute(device="cpu"),
        "gates": QualityGates(),
    }


@pytest.fixture(scope="session")
def pipeline(small_corpus, tmp_path_factory):
    """The whole graph materialised once on the small corpus, into local storage."""
    corpus_dir, ids = small_corpus
    storage_dir = tmp_path_factory.mktemp("storage")
    resources = local_resources(corpus_dir, storage_dir)
    with dg.instance_for_test() as instance:
        # Under the usual umask, so what the storage holds can be checked for group and other readers.
        umask = os.umask(0o022)
        try:
            results = materialize_pipeline(instance, resources, sorted(ids))
        finally:
            os.umask(umask)
        yield {"instance": instance, "resources": resources, "storage": storage_dir, "ids": ids, "results": results}


def stored_file(storage: Path, name: str, shard: str | None = None) -> Path:
    """The newest stored version of an output: stored_file(s, "distilled_model.safetensors"), stored_file(s, "scored_corpus", shard).
    Version folders are named by their UTC time, so the newest sorts last."""
    if shard is not None:
        folder, file = storage / name / shard, f"{shard}.parquet"
    else:
        folder, file = storage / FOLDER_OF.get(name, name.split(".")[0]), name
    found = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    assert found, f"no stored version under {folder}"
    return found[-1] / file


FOLDER_OF = {"teacher_token_sums.safetensors": "teacher_embeddings"}


def stored_key(client, bucket: str, base: str, name: str, shard: str | None = None) -> str:
    """stored_file's S3 twin: the key of the newest stored version under `base` in `bucket`."""
    folder = f"{base}/{name}/{shard}/" if shard is not None else f"{base}/{FOLDER_OF.get(name, name.split('.')[0])}/"
    file = f"{shard}.parquet" if shard is not None else name
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
        for item in page.get("Contents", [])
        if item["Key"].endswith("/" + file) and item["Key"].count("/") == folder.count("/") + 1
    ]
    assert keys, f"no stored version under s3://{bucket}/{folder}"
    return sorted(keys)[-1]


@pytest.fixture(scope="session")
def pipeline_ui(pipeline, tmp_path_factory):
    """A webserver over the instance the small pipeline was materialised into; its base URL and port."""
    from embedding_assets.sample_corpus import NETWORKING_LABELS

    log = tmp_path_factory.mktemp("ui") / "webserver.log"
    env = {"EMBEDDING_ASSETS_STORAGE": str(pipeline["storage"]), "EMBEDDING_ASSETS_POSITIVE_LABELS": ",".join(NETWORKING_LABELS)}
    with running_webserver(Path(pipeline["instance"].root_directory), log, env) as port:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "log": log}


def failure_text(result) -> str:
    """The message of a failed run's first step failure (error and Failure description together)."""
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures, "the run did not fail"
    data = failures[0].step_failure_data
    return " ".join(filter(None, [data.error.message if data.error else None, getattr(data.user_failure_data, "description", None)]))


def step_retries(result) -> int:
    """How many times a run's steps were put up for retry."""
    return sum(1 for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY)


@pytest.fixture
def trained(pipeline, tmp_path):
    """A copy of the materialised pipeline's storage, a fresh corpus directory and a fresh instance."""
    from embedding_assets.resources import CorpusSource, Storage

    storage = tmp_path / "storage"
    shutil.copytree(pipeline["storage"], storage)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    resources = {**pipeline["resources"], "storage": Storage(base=str(storage)), "corpus": CorpusSource(location=str(corpus))}
    # The stored versions are only read once the instance says they passed their gates: copy its history too.
    home = tmp_path / "dagster_home"
    shutil.copytree(pipeline["instance"].root_directory, home)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield {"storage": storage, "corpus": corpus, "resources": resources, "instance": instance, "pipeline_corpus": pipeline["resources"]["corpus"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_webserver(dagster_home: Path, log_path: Path, env: dict[str, str] | None = None):
    """`dagster-webserver -w workspace.yaml` on 127.0.0.1 and a free port, ready when it yields the port."""
    port = free_port()
    full_env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "DAGSTER_DISABLE_TELEMETRY": "yes", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the webserver exited:\n{log_path.read_text()}"
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the webserver did not start in 120 s")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


class MotoS3:
    """moto's S3 server over HTTP on a free local port; it can be stopped and started again
    on the same port, and keeps its buckets in between (moto holds them in this process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url)


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """A real S3 endpoint, with dummy credentials in the environment and no AWS config of the user's."""
    aws_home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_CONFIG_FILE", str(aws_home / "config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_home / "credentials"))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        server = MotoS3()
        server.start()
        try:
            yield server
        finally:
            server.stop()
