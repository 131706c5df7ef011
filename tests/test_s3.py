"""The pipeline on a real S3 endpoint (moto's server over HTTP): corpus in a bucket, every output
in a bucket, the same values as a local run, and clear errors that lose nothing when S3 fails."""

import io
import re
import threading

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, resources_from_env
from embedding_assets.engine.curation import CurationHead
from embedding_assets.resources import CorpusSource, S3Settings, Storage, StorageError
from embedding_assets.sample_corpus import NETWORKING_LABELS
from conftest import failure_text, materialize_pipeline, step_retries, stored_file, stored_key

BUCKET = "curation-test"
MISSING = "no-such-bucket"


def read_parquet(client, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def snapshot(client, prefix: str) -> dict[str, tuple[str, bytes]]:
    """Every object under the prefix: key -> (ETag, bytes)."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            objects[item["Key"]] = (item["ETag"], body)
    return objects


def materialize_one(s3_pipeline, asset: str, shard: str, **resources):
    return dg.materialize(
        ALL_ASSETS + ALL_CHECKS, selection=[asset], partition_key=shard, instance=s3_pipeline["instance"],
        resources={**s3_pipeline["resources"], **resources}, raise_on_error=False,
    )


def newest(client, name: str, shard: str | None = None) -> str:
    return stored_key(client, BUCKET, "storage", name, shard)


def key_parts(client, name: str, shard: str | None = None) -> tuple[str, ...]:
    """The newest version's path under the storage base, as Storage methods take it."""
    return tuple(newest(client, name, shard).split("/")[1:])


@pytest.fixture(scope="module")
def s3_pipeline(moto_s3, small_corpus):
    """The small corpus uploaded to a bucket, and the whole graph materialised with every output
    in the same bucket, configured the way a deployment is: through environment variables."""
    corpus_dir, ids = small_corpus
    client = moto_s3.client()
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(corpus_dir.iterdir()):
        client.upload_file(str(path), BUCKET, f"corpus/{path.name}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EMBEDDING_ASSETS_CORPUS", f"s3://{BUCKET}/corpus")
        env.setenv("EMBEDDING_ASSETS_STORAGE", f"s3://{BUCKET}/storage/")
        env.setenv("EMBEDDING_ASSETS_POSITIVE_LABELS", ",".join(NETWORKING_LABELS))
        env.setenv("EMBEDDING_ASSETS_S3_ENDPOINT_URL", moto_s3.endpoint_url)
        env.setenv("EMBEDDING_ASSETS_S3_MAX_ATTEMPTS", "2")
        env.setenv("EMBEDDING_ASSETS_DEVICE", "cpu")
        resources = resources_from_env()
    assert sorted(resources["corpus"].shards()) == sorted(ids)
    with dg.instance_for_test() as instance:
        materialize_pipeline(instance, resources, sorted(ids))
        yield {"client": client, "resources": resources, "ids": ids, "server": moto_s3, "instance": instance}


def test_corpus_streams_from_s3_in_record_batches(moto_s3, s3_pipeline):
    corpus = CorpusSource(location=f"s3://{BUCKET}/corpus", batch_size=16, s3=S3Settings(endpoint_url=moto_s3.endpoint_url))
    shards = corpus.shards()
    assert shards["notes"] == f"s3://{BUCKET}/corpus/notes.jsonl"
    for shard, ids in s3_pipeline["ids"].items():
        batches = list(corpus.read(shards[shard]))
        assert len(batches) == -(-len(ids) // 16)
        assert pa.Table.from_batches(batches)["id"].to_pylist() == ids


def test_every_output_lands_in_the_bucket(s3_pipeline):
    keys = set(snapshot(s3_pipeline["client"], "storage/"))
    shards = s3_pipeline["ids"]
    expected = {f"storage/{name.split('.')[0]}/{name}" for name in (
        "training_sample.parquet", "features.safetensors", "teacher_model.json", "teacher_embeddings.parquet",
        "distilled_model.safetensors", "distilled_model.md", "quality_classifier.safetensors", "quality_classifier.md",
        "clusters.safetensors", "near_duplicates.parquet", "selection.parquet", "corpus_id_index.parquet",
    )} | {"storage/teacher_embeddings/teacher_token_sums.safetensors"}
    expected |= {f"storage/{stage}/{shard}/{shard}.parquet" for stage in ("raw_corpus", "scored_corpus") for shard in shards}
    expected |= {f"storage/raw_corpus/{shard}/{shard}.ids.parquet" for shard in shards}
    chunks = {key for key in keys if key.startswith("storage/teacher_chunks/")}
    # Each output in one version folder (its UTC time and run), as each was materialised once.
    versions = {key: re.search(r"/(\d{8}T\d{12}Z-[0-9a-f]{8})/", key) for key in keys - chunks}
    assert all(versions.values()), [k for k, v in versions.items() if not v]
    assert {key.replace(f"/{match.group(1)}/", "/") for key, match in versions.items()} == expected
    # The teacher's chunks are removed once assembled into teacher_embeddings.parquet.
    assert chunks == set()


def test_scored_shards_in_the_bucket_follow_the_contract(s3_pipeline):
    for shard, ids in s3_pipeline["ids"].items():
        table = read_parquet(s3_pipeline["client"], newest(s3_pipeline["client"], "scored_corpus", shard))
        assert table["id"].to_pylist() == ids
        embedding = table.schema.field("embedding").type
        assert embedding.list_size == 384 and embedding.value_type == pa.uint8()
        scores = table["score"].to_numpy()
        assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()


def test_s3_run_gives_the_local_run_values(s3_pipeline, pipeline):
    client = s3_pipeline["client"]
    local_model = (stored_file(pipeline["storage"], "distilled_model.safetensors")).read_bytes()
    assert client.get_object(Bucket=BUCKET, Key=newest(client, "distilled_model.safetensors"))["Body"].read() == local_model
    for shard in s3_pipeline["ids"]:
        remote = read_parquet(client, newest(client, "scored_corpus", shard))
        local = pq.read_table(stored_file(pipeline["storage"], "scored_corpus", shard))
        for column in ("id", "score", "embedding", "keep", "model_version", "classifier_version"):
            assert remote[column].equals(local[column]), f"{shard}: {column} differs"


def test_aws_endpoint_variable_is_enough(moto_s3, s3_pipeline, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    storage = Storage(base=f"s3://{BUCKET}/storage")
    client = s3_pipeline["client"]
    assert storage.exists(*key_parts(client, "quality_classifier.safetensors")) and not storage.exists("nothing.json")
    assert CurationHead.from_bytes(storage.read_bytes(*key_parts(client, "quality_classifier.safetensors"))).scores
    with storage.open_parquet(*key_parts(client, "scored_corpus", "lines")) as parquet:
        assert parquet.metadata.num_rows == len(s3_pipeline["ids"]["lines"])
    assert sorted(CorpusSource(location=f"s3://{BUCKET}/corpus").shards()) == sorted(s3_pipeline["ids"])


def test_missing_bucket_is_named_for_outputs_and_for_the_corpus(moto_s3, s3_pipeline):
    settings = S3Settings(endpoint_url=moto_s3.endpoint_url, max_attempts=2)
    corpus = s3_pipeline["resources"]["corpus"]
    result = materialize_one(s3_pipeline, "raw_corpus", "lines", storage=Storage(base=f"s3://{MISSING}/out", s3=settings))
    assert step_retries(result) == 0  # a missing bucket does not come back by waiting
    message = failure_text(result)
    assert re.search(rf"s3://{MISSING}/out/raw_corpus/lines/[^/ ]+/lines.parquet", message), message
    assert f"bucket '{MISSING}'" in message and re.search(r"key 'out/raw_corpus/lines/[^/ ]+/lines.parquet'", message)
    assert "the bucket does not exist" in message

    message = failure_text(materialize_one(s3_pipeline, "raw_corpus", "lines", corpus=CorpusSource(location=f"s3://{MISSING}/corpus", s3=settings)))
    assert f"s3://{MISSING}/corpus" in message and "does not exist" in message

    storage = Storage(base=f"s3://{MISSING}/out", s3=settings)
    with pytest.raises(StorageError, match=rf"bucket '{MISSING}', key 'out/quality_classifier.safetensors'.*does not exist"):
        storage.read_bytes("quality_classifier.safetensors")
    with pytest.raises(StorageError, match=rf"bucket '{MISSING}'.*does not exist"):
        storage.exists("quality_classifier.safetensors")
    assert corpus.shards()  # the real corpus is still there


def test_a_failed_write_leaves_the_previous_object(s3_pipeline):
    client, storage = s3_pipeline["client"], s3_pipeline["resources"]["storage"]
    before = snapshot(client, "storage/")
    schema = pa.schema([pa.field("id", pa.string())])

    def batches():
        yield pa.record_batch({"id": ["replacement"]}, schema=schema)
        raise RuntimeError("producer failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        storage.write_parquet(batches(), schema, "scored_corpus", "lines.parquet")
    assert snapshot(client, "storage/") == before


def test_endpoint_going_away_is_named_and_loses_nothing(s3_pipeline):
    client, server = s3_pipeline["client"], s3_pipeline["server"]
    storage = s3_pipeline["resources"]["storage"]
    before = snapshot(client, "storage/")
    schema = pa.schema([pa.field("id", pa.string())])

    def batches_then_outage():
        yield pa.record_batch({"id": ["replacement"]}, schema=schema)
        server.stop()  # the endpoint disappears while the new version is being produced

    try:
        with pytest.raises(StorageError) as raised:
            storage.write_parquet(batches_then_outage(), schema, "scored_corpus", "lines.parquet")
        message = str(raised.value)
        assert f"bucket '{BUCKET}', key 'storage/scored_corpus/lines.parquet'" in message
        assert "Could not connect to the endpoint" in message

        # A whole Dagster run against the stopped endpoint is retried by its RetryPolicy, then fails
        # on its first object, by name.
        result = materialize_one(s3_pipeline, "scored_corpus", "lines")
        assert re.search(rf"bucket '{BUCKET}', key 'storage/distilled_model/[^/ ]+/distilled_model.safetensors'", failure_text(result)), failure_text(result)
        assert step_retries(result) == 2
        result = materialize_one(s3_pipeline, "raw_corpus", "lines")
        assert f"s3://{BUCKET}/corpus" in failure_text(result) and "cannot be listed" in failure_text(result)
        assert step_retries(result) == 2
    finally:
        if not server.running:
            server.start()
    assert snapshot(client, "storage/") == before


def test_a_rerun_of_the_teacher_on_s3_reads_its_final_file_and_removes_every_chunk_set(s3_pipeline):
    client, resources = s3_pipeline["client"], s3_pipeline["resources"]
    client.put_object(Bucket=BUCKET, Key="storage/teacher_chunks/0123456789abcdef/000000.parquet", Body=b"an older set")
    before = read_parquet(client, newest(client, "teacher_embeddings.parquet"))
    result = dg.materialize(ALL_ASSETS, selection=["teacher_embeddings"], instance=s3_pipeline["instance"], resources=resources)
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items() if hasattr(v, "value")}
    assert (meta["chunks"], meta["chunks_reused"], meta["chunks_computed"], meta["chunk_folders_removed"]) == (2, 2, 0, 1)
    assert meta["embedded_documents"] == 0
    assert not snapshot(client, "storage/teacher_chunks/")  # the planted set, and the pipeline's own once assembled
    assert read_parquet(client, newest(client, "teacher_embeddings.parquet")).equals(before)


def test_an_endpoint_refusing_connections_for_a_moment_is_retried(s3_pipeline):
    """The endpoint is down when the run starts and back half a second later: the storage client's
    retries (and if they run out, the step's RetryPolicy) carry the run through."""
    client, server = s3_pipeline["client"], s3_pipeline["server"]
    before = read_parquet(client, newest(client, "scored_corpus", "lines"))
    server.stop()
    restart = threading.Timer(0.5, server.start)
    restart.start()
    try:
        result = materialize_one(s3_pipeline, "scored_corpus", "lines")
    finally:
        restart.join()
    assert result.success
    after = read_parquet(client, newest(client, "scored_corpus", "lines"))
    for column in ("id", "embedding", "score", "keep"):
        assert after[column].equals(before[column]), column

    head = key_parts(client, "quality_classifier.safetensors")
    server.stop()
    restart = threading.Timer(0.5, server.start)
    restart.start()
    try:
        storage = Storage(base=f"s3://{BUCKET}/storage", s3=S3Settings(endpoint_url=server.endpoint_url, max_attempts=5))
        assert CurationHead.from_bytes(storage.read_bytes(*head)).scores
    finally:
        restart.join()


def test_the_endpoint_stopped_mid_scoring_and_restarted_loses_nothing(s3_pipeline, tmp_path):
    """The endpoint goes away once the step has scored its first batch of a large shard and comes back
    once the step has failed on it: the retry policy runs the step again, and the shard is scored as an
    undisturbed run scores it, with no partial object left."""
    from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR

    client, server, instance = s3_pipeline["client"], s3_pipeline["server"], s3_pipeline["instance"]
    texts = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[2])["text"].to_pylist()
    size = 24_000  # three record batches
    rows = {"id": [f"big-{i}" for i in range(size)], "text": [f"{texts[i % len(texts)]} (part {i // len(texts)})" for i in range(size)]}
    pq.write_table(pa.table(rows), tmp_path / "big.parquet")
    client.upload_file(str(tmp_path / "big.parquet"), BUCKET, "corpus/big.parquet")
    instance.add_dynamic_partitions("corpus_shards", ["big"])
    assert materialize_one(s3_pipeline, "raw_corpus", "big").success
    assert materialize_one(s3_pipeline, "scored_corpus", "big").success
    undisturbed = read_parquet(client, newest(client, "scored_corpus", "big"))

    outcome = {}
    scoring = threading.Thread(target=lambda: outcome.update(result=materialize_one(s3_pipeline, "scored_corpus", "big")))
    known = {run.run_id for run in instance.get_runs()}
    scoring.start()
    try:
        stopped = None
        while scoring.is_alive() and stopped is None:
            for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                if run.run_id not in known and any(
                    entry.step_key == "scored_corpus" and f"/{size:,} " in (entry.user_message or "") for entry in instance.all_logs(run.run_id)
                ):
                    server.stop()
                    stopped = run.run_id
            threading.Event().wait(0.05)
        assert stopped, "the step ended before it logged its first scored batch"
        while scoring.is_alive() and not instance.all_logs(stopped, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY):
            threading.Event().wait(0.05)
    finally:
        if not server.running:
            server.start()
        scoring.join(timeout=300)
    result = outcome["result"]
    assert result.success
    assert step_retries(result) == 1  # the endpoint's absence failed the step once; the retry found it back
    after = read_parquet(client, newest(client, "scored_corpus", "big"))
    for column in ("id", "embedding", "score", "keep", "model_version", "classifier_version"):
        assert after[column].equals(undisturbed[column]), column
    # Every object under the shard's folder is a whole version: a readable parquet file of every row.
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="storage/scored_corpus/big/"):
        for item in page.get("Contents", []):
            assert item["Key"].endswith("/big.parquet"), item["Key"]
            assert read_parquet(client, item["Key"]).num_rows == size
