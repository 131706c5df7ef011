"""Curation of a corpus with no labels: reference sets, annotations, and no curation at all.

The small corpus's hidden labels say which documents are about networking; the heads never see
them, and the tests use them to check that the heads rank those documents first.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver
from sklearn.metrics import average_precision_score

from conftest import failure_text, stored_file, stored_key, write_small_corpus
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.engine.curation import CurationHead
from embedding_assets.lineage import latest_data_version
from embedding_assets.resources import Curation
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_REFERENCE_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ["lines", "notes", "stdlib-docs-00", "stdlib-docs-01", "stdlib-docs-02"]


def files(storage: Path) -> dict[str, bytes]:
    return {p.relative_to(storage).as_posix(): p.read_bytes() for p in sorted(storage.rglob("*")) if p.is_file()}


def curate(trained, curation: Curation, selection: list[str], partition: str | None = None):
    trained["instance"].add_dynamic_partitions("corpus_shards", SHARDS)
    return dg.materialize(
        ALL_ASSETS + ALL_CHECKS,
        selection=selection,
        partition_key=partition,
        instance=trained["instance"],
        # The shards are the pipeline's: the corpus-wide lookups read the shards its location holds.
        resources={**trained["resources"], "corpus": trained["pipeline_corpus"], "curation": curation},
        raise_on_error=False,
    )


def curate_all(trained, curation: Curation, inputs: list[str]) -> CurationHead:
    result = curate(trained, curation, [*inputs, "quality_classifier"])
    assert result.success, (failure_text(result), [(e.check_name, e.metadata) for e in result.get_asset_check_evaluations() if not e.passed])
    assert all(e.passed for e in result.get_asset_check_evaluations()), [(e.check_name, e.metadata) for e in result.get_asset_check_evaluations()]
    for shard in SHARDS:
        scored = curate(trained, curation, ["scored_corpus"], shard)
        assert scored.success, failure_text(scored)
    return CurationHead.from_bytes((stored_file(trained["storage"], "quality_classifier.safetensors")).read_bytes())


def hidden_labels(storage: Path) -> dict[str, bool]:
    labels = {}
    for shard in SHARDS:
        table = pq.read_table(stored_file(storage, "raw_corpus", shard))
        if "label" in table.column_names:
            labels.update(zip(table["id"].to_pylist(), (label in NETWORKING_LABELS for label in table["label"].to_pylist())))
    return labels


def scored(storage: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(stored_file(storage, "scored_corpus", shard), columns=["id", "score", "keep"]) for shard in SHARDS])


def networking_precision(storage: Path) -> tuple[float, float]:
    """Average precision of the scores for the hidden networking documents, and their base rate."""
    labels = hidden_labels(storage)
    table = scored(storage)
    y = np.array([labels[i] for i in table["id"].to_pylist() if i in labels])
    scores = np.array([s for i, s in zip(table["id"].to_pylist(), table["score"].to_pylist()) if i in labels])
    return float(average_precision_score(y, scores)), float(y.mean())


@pytest.mark.parametrize("mode", ["reference-classifier", "reference-similarity"])
def test_a_reference_set_finds_more_of_its_kind_in_an_unlabelled_corpus(trained, mode):
    curation = Curation(mode=mode, reference=str(SAMPLE_REFERENCE_DIR))
    head = curate_all(trained, curation, ["reference_set"])
    assert head.mode == mode and head.kind == ("logistic" if mode == "reference-classifier" else "similarity")
    assert head.settings["reference_set_version"] == latest_data_version(trained["instance"], "reference_set")
    assert head.evaluation["heldout_auc"] > 0.6
    card = (stored_file(trained["storage"], "quality_classifier.md")).read_text()
    assert f": {mode}" in card and head.settings["reference_set_version"] in card
    precision, base_rate = networking_precision(trained["storage"])
    assert precision > 2 * base_rate, (precision, base_rate)
    table = scored(trained["storage"])
    keep = np.array(table["keep"].to_pylist())
    assert 0.1 < keep.mean() < 0.3  # calibrated to keep 0.2 of documents the head never saw
    meta = pq.read_schema(stored_file(trained["storage"], "scored_corpus", "notes")).metadata
    assert meta[b"curation_mode"].decode() == mode
    assert json.loads(meta[b"curation_settings"])["reference_set_version"] == head.settings["reference_set_version"]


def test_annotations_train_a_head_on_judged_corpus_documents(trained, tmp_path):
    labels = hidden_labels(trained["storage"])
    judged = sorted(labels)[::2]
    path = tmp_path / "judgements.jsonl"
    path.write_text("".join(json.dumps({"id": i, "label": "keep" if labels[i] else "drop"}) + "\n" for i in judged))
    head = curate_all(trained, Curation(mode="annotations", annotations=str(path)), ["annotations"])
    assert head.kind == "logistic" and head.evaluation["annotated_documents"] == len(judged)
    assert head.settings["annotations_version"] == latest_data_version(trained["instance"], "annotations")
    precision, base_rate = networking_precision(trained["storage"])
    assert precision > 2 * base_rate, (precision, base_rate)

    # Scores instead of labels: a regression head, scores within the annotated range.
    graded = tmp_path / "graded.csv"
    graded.write_text("id,score\n" + "".join(f"{i},{3.0 if labels[i] else 1.0}\n" for i in judged))
    head = curate_all(trained, Curation(mode="annotations", annotations=str(graded)), ["annotations"])
    assert head.kind == "ridge" and head.score_range == (1.0, 3.0)
    scores = np.array(scored(trained["storage"])["score"].to_pylist())
    assert scores.min() >= 1.0 and scores.max() <= 3.0


def test_without_curation_every_shard_is_embedded_and_nothing_scored(trained):
    head = curate_all(trained, Curation(), [])
    assert head.mode == "none" and not head.scores
    table = pa.concat_tables([pq.read_table(stored_file(trained["storage"], "scored_corpus", shard)) for shard in SHARDS])
    assert table["score"].null_count == table["keep"].null_count == table.num_rows
    assert table["embedding"].null_count == 0 and table["embedding"].type.list_size == 384


def write_reference(directory: Path, rows: list[dict], name: str = "refs.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def reference_rows(n: int) -> list[dict]:
    table = pq.read_table(SAMPLE_REFERENCE_DIR / "networking.parquet")
    return table.slice(0, n).to_pylist()


BAD_REFERENCES = [
    ("empty", lambda d, corpus_id: (d.mkdir(), d)[1], r"the reference set at .*empty has no documents"),
    ("one-document", lambda d, corpus_id: write_reference(d, reference_rows(1)), r"has 1 document; at least 10 are needed \(QualityGates.min_reference_documents\)"),
    (
        "id-collides-with-corpus",
        lambda d, corpus_id: write_reference(d, [*reference_rows(20), {"id": corpus_id, "text": "a different text under a corpus document's id"}]),
        r"reference id '.*' is also the id of another document in raw_corpus\[stdlib-docs-00\]",
    ),
    ("wrong-columns", lambda d, corpus_id: write_reference(d, [{"id": "a", "body": "no text column"}]), r"refs\.jsonl: missing required column 'text'"),
    ("empty-text", lambda d, corpus_id: write_reference(d, [*reference_rows(15), {"id": "blank", "text": "   "}]), r"file refs, row 16 \(id 'blank'\) has an empty text"),
]


@pytest.mark.parametrize(("name", "write", "message"), BAD_REFERENCES, ids=[case[0] for case in BAD_REFERENCES])
def test_a_bad_reference_set_is_refused_by_name_and_writes_nothing(trained, tmp_path, name, write, message):
    corpus_id = pq.read_table(stored_file(trained["storage"], "raw_corpus", "stdlib-docs-00"))["id"][0].as_py()
    location = write(tmp_path / name, corpus_id)
    before = files(trained["storage"])
    result = curate(trained, Curation(mode="reference-classifier", reference=str(location)), ["reference_set", "quality_classifier"])
    assert not result.success
    assert __import__("re").search(message, failure_text(result)), failure_text(result)
    assert files(trained["storage"]) == before


def test_annotations_of_unknown_documents_are_refused_by_name(trained, tmp_path):
    path = tmp_path / "judgements.jsonl"
    path.write_text(json.dumps({"id": "no-such-document", "label": "true"}) + "\n")
    before = files(trained["storage"])
    result = curate(trained, Curation(mode="annotations", annotations=str(path)), ["annotations"])
    assert "name 1 id(s) that are in no materialised raw_corpus shard, for example ['no-such-document']" in failure_text(result)
    assert files(trained["storage"]) == before


def test_a_mode_with_its_inputs_missing_is_refused_before_any_work(trained, tmp_path):
    before = files(trained["storage"])
    result = curate(trained, Curation(mode="reference-similarity"), ["quality_classifier"])
    assert "curation mode reference-similarity needs a reference set: set --reference" in failure_text(result)
    assert files(trained["storage"]) == before
    run = subprocess.run(
        [sys.executable, "-m", "embedding_assets.run", "--corpus", str(tmp_path), "--storage", str(tmp_path / "out"), "--curation", "annotations"],
        cwd=ROOT, env={**os.environ, "DAGSTER_HOME": ""}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2 and "curation mode annotations needs --annotations" in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_changed_reference_set_makes_the_head_and_every_scored_shard_stale_not_training(trained, tmp_path):
    reference = write_reference(tmp_path / "refs", reference_rows(60))
    curation = Curation(mode="reference-classifier", reference=str(reference))
    assert curate(trained, curation, ["reference_set", "quality_classifier"]).success
    for shard in SHARDS:
        assert curate(trained, curation, ["scored_corpus"], shard).success
    write_reference(reference, reference_rows(80))
    assert curate(trained, curation, ["reference_set"]).success
    resolver = get_stale_status_resolver(trained["instance"], ALL_ASSETS)
    assert resolver.get_status(dg.AssetKey("quality_classifier")) == StaleStatus.STALE
    assert resolver.get_status(dg.AssetKey("reference_set")) == StaleStatus.FRESH
    for key in ("training_sample", "features", "teacher_embeddings", "distilled_model"):
        assert resolver.get_status(dg.AssetKey(key)) != StaleStatus.STALE, key
    assert curate(trained, curation, ["quality_classifier"]).success
    resolver = get_stale_status_resolver(trained["instance"], ALL_ASSETS)
    assert all(resolver.get_status(dg.AssetKey("scored_corpus"), shard) == StaleStatus.STALE for shard in SHARDS)


def unlabelled_corpus(directory: Path) -> Path:
    """The small corpus with its labels taken away, as a web crawl comes."""
    write_small_corpus(directory)
    for path in directory.glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([c for c in ("label",) if c in table.column_names]), path)
    notes = directory / "notes.jsonl"
    rows = [json.loads(line) for line in notes.read_text().splitlines()]
    notes.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "label"}) + "\n" for row in rows))
    return directory


def run_command(args: list[str], home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "embedding_assets.run", *args, "--sample-size", "700", "--epochs", "2"],
        cwd=ROOT, env={**os.environ, "DAGSTER_HOME": str(home), **(env or {})}, capture_output=True, text=True, timeout=900,
    )


def test_the_run_command_curates_an_unlabelled_corpus_from_a_reference_set(tmp_path):
    corpus = unlabelled_corpus(tmp_path / "corpus")
    storage = tmp_path / "storage"
    run = run_command(["--corpus", str(corpus), "--storage", str(storage), "--reference", str(SAMPLE_REFERENCE_DIR), "--curation", "reference-classifier"], tmp_path / "home")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "curation mode: reference-classifier" in run.stdout
    head = CurationHead.from_bytes((stored_file(storage, "quality_classifier.safetensors")).read_bytes())
    assert head.mode == "reference-classifier"
    doc = pq.read_table(stored_file(storage, "scored_corpus", "stdlib-docs-01"))["id"][0].as_py()
    audit = subprocess.run(
        [sys.executable, "-m", "embedding_assets.audit", doc, "--json", str(tmp_path / "audit.json")],
        cwd=ROOT, env={**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "EMBEDDING_ASSETS_STORAGE": str(storage)}, capture_output=True, text=True, timeout=300,
    )
    assert audit.returncode == 0, audit.stderr
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["curation"]["mode"] == "reference-classifier"
    assert report["reference_set"]["data_version"] == head.settings["reference_set_version"]
    assert "curation: mode reference-classifier" in audit.stdout and "reference_set" in audit.stdout


def test_the_run_command_curates_an_unlabelled_corpus_on_s3(tmp_path, moto_s3):
    corpus = unlabelled_corpus(tmp_path / "corpus")
    client = moto_s3.client()
    client.create_bucket(Bucket="crawl")
    for path in sorted(corpus.iterdir()):
        client.upload_file(str(path), "crawl", f"shards/{path.name}")
    client.upload_file(str(SAMPLE_REFERENCE_DIR / "networking.parquet"), "crawl", "examples/networking.parquet")
    env = {"EMBEDDING_ASSETS_S3_ENDPOINT_URL": moto_s3.endpoint_url}
    run = run_command(
        ["--corpus", "s3://crawl/shards", "--storage", "s3://crawl/out", "--reference", "s3://crawl/examples", "--curation", "reference-similarity", "--top-k", "5"],
        tmp_path / "home", env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    import io

    head = CurationHead.from_bytes(client.get_object(Bucket="crawl", Key=stored_key(client, "crawl", "out", "quality_classifier.safetensors"))["Body"].read())
    assert head.mode == "reference-similarity" and head.settings["top_k"] == 5
    shard = pq.read_table(io.BytesIO(client.get_object(Bucket="crawl", Key=stored_key(client, "crawl", "out", "scored_corpus", "notes"))["Body"].read()))
    assert shard["score"].null_count == 0 and shard.schema.metadata[b"curation_mode"] == b"reference-similarity"
