"""Each gate fails on a deliberately broken input, names what is wrong, and stops the stage after it."""

import shutil

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save_file

from conftest import TEST_RUN_CONFIG, stored_file
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.resources import Teacher
from embedding_assets.resources.teacher import default_teacher_dir


def run(trained, selection, partition=None, run_config=None):
    if partition:
        trained["instance"].add_dynamic_partitions("corpus_shards", [partition])
    return dg.materialize(
        ALL_ASSETS + ALL_CHECKS,
        selection=selection,
        partition_key=partition,
        instance=trained["instance"],
        resources=trained["resources"],
        run_config=run_config or {},
        raise_on_error=False,
    )


def evaluation(result, check_name):
    [found] = [e for e in result.get_asset_check_evaluations() if e.check_name == check_name]
    return found.passed, {k: getattr(v, "value", v) for k, v in found.metadata.items()}


def materialized(result, key, partition=None):
    """Whether the run materialised `key` (and `partition`)."""
    return any(
        e.asset_key == dg.AssetKey(key) and e.partition == partition for e in result.get_asset_materialization_events()
    )


def test_duplicate_ids_and_empty_texts_fail_the_raw_gate_and_block_scoring(trained):
    rows = {"id": ["a", "b", "a", "c", "d"], "text": ["socket data", "   ", "email headers", "", "http server"]}
    pq.write_table(pa.table(rows), trained["corpus"] / "bad.parquet")
    result = run(trained, ["raw_corpus", "scored_corpus"], partition="bad")
    passed, meta = evaluation(result, "raw_corpus_contract")
    assert not passed
    assert meta["duplicate_ids"] == ["a"]
    assert meta["empty_text_ids"] == ["b", "c"]
    # Both rows of the repeated id fail the expectation.
    assert "expect_column_values_to_be_unique[id]: 2 of 5 rows fail; expected every row" in meta["failed_expectations"]
    table = {row.data["measure"]: row.data for row in meta["expectations"].records}
    assert table["expect_column_values_to_be_unique[id]"]["passed"] is False
    assert table["expect_table_row_count_to_be_between"] == {"measure": "expect_table_row_count_to_be_between", "observed": "5", "bound": ">= 1", "passed": True}
    assert materialized(result, "raw_corpus", "bad")
    assert not materialized(result, "scored_corpus", "bad")


def test_ids_shared_with_another_shard_fail_the_index_gate_naming_both_shards(trained):
    from conftest import failure_text

    pq.write_table(pa.table({"id": ["x1", "x2"], "text": ["one text", "two text"]}), trained["corpus"] / "first.parquet")
    pq.write_table(pa.table({"id": ["x2", "x3"], "text": ["three text", "four text"]}), trained["corpus"] / "second.parquet")
    # Each shard's own gate reads its own ids only, so both pass; the index finds what they share.
    assert run(trained, ["raw_corpus"], partition="first").success
    assert run(trained, ["raw_corpus"], partition="second").success
    result = run(trained, ["corpus_id_index", "training_sample"])
    passed, meta = evaluation(result, "corpus_ids_unique_across_shards")
    assert not passed
    assert meta["clashing_ids"] == ["x2"] and meta["clashing_shards"] == ["first", "second"]
    assert [r.data for r in meta["collisions"].records] == [{"id": "x2", "shards": "first, second"}]
    assert meta["clashing_shard_pairs"] == ["first & second"] and meta["ids_indexed"] == 4
    [bound] = meta["bounds"].records
    assert bound.data["observed"] == "1" and bound.data["bound"] == "0" and not bound.data["passed"]
    assert not materialized(result, "training_sample")
    refused = run(trained, ["scored_corpus"], partition="second")
    assert not refused.success
    assert "raw_corpus[first]" in failure_text(refused) and "x2" in failure_text(refused)
    assert not materialized(refused, "scored_corpus", "second")


def test_a_teacher_that_emits_nan_fails_its_gate_and_blocks_training(trained, tmp_path):
    broken = tmp_path / "broken-teacher"
    shutil.copytree(default_teacher_dir(), broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    token_id = 2003  # "is": in most documents
    weights[name][token_id] = np.nan
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    trained["resources"]["teacher"] = Teacher(model=str(broken))
    result = run(trained, ["teacher_model", "teacher_embeddings", "distilled_model"], run_config={"ops": {"distilled_model": TEST_RUN_CONFIG["ops"]["distilled_model"]}})
    passed, meta = evaluation(result, "teacher_embeddings_valid")
    assert not passed
    assert any(f.startswith("vectors with NaN or inf") for f in meta["failed"])
    assert len(meta["non_finite_ids"]) > 0
    assert not materialized(result, "distilled_model")


def test_a_student_trained_for_zero_steps_fails_the_fidelity_gate(trained):
    untrained = {"epochs": 0, "init": "random"}
    config = {"ops": {"distilled_model": {"config": {**TEST_RUN_CONFIG["ops"]["distilled_model"]["config"], **untrained}}}}
    result = run(trained, ["distilled_model", "quality_classifier"], run_config=config)
    passed, meta = evaluation(result, "distilled_model_fidelity")
    assert not passed
    assert any("gain over the untrained network" in f for f in meta["failed"])
    assert meta["recall_at_10"] == meta["untrained_recall_at_10"]
    assert evaluation(result, "distilled_model_artifact")[0]  # the file itself is sound
    assert not materialized(result, "quality_classifier")


def test_a_threshold_that_misses_its_target_fails_calibration_and_blocks_scoring(trained):
    # Nearly all of the corpus is one document, its copies apart only in trailing spaces (the raw
    # gate refuses exact copies): every copy scores the same, so no threshold can keep exactly the
    # target share of the corpus it is calibrated on.
    others = pq.read_table(stored_file(trained["storage"], "training_sample.parquet"), columns=["text"])["text"].to_pylist()[:10]
    texts = others + ["socket connection: open a TCP socket to the server and read the HTTP response" + " " * i for i in range(190)]
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(len(texts))], "text": texts}), trained["corpus"] / "next.parquet")
    try:
        assert run(trained, ["raw_corpus"], partition="next").success
        result = run(trained, ["quality_classifier", "scored_corpus"], partition="next")
        passed, meta = evaluation(result, "quality_classifier_calibration")
        assert not passed
        assert any("calibration keep fraction" in f for f in meta["failed"])
        assert abs(meta["calibration_keep_fraction"] - 0.2) > 0.02
        assert not materialized(result, "scored_corpus", "next")
    finally:
        (trained["corpus"] / "next.parquet").unlink()


def test_every_gate_passes_on_the_good_pipeline(pipeline):
    evaluations = [e for r in pipeline["results"] for e in r.get_asset_check_evaluations()]
    assert {e.check_name for e in evaluations} == {
        "raw_corpus_contract",
        "corpus_ids_unique_across_shards",
        "features_vocabulary",
        "features_coverage",
        "teacher_embeddings_valid",
        "distilled_model_fidelity",
        "distilled_model_artifact",
        "quality_classifier_calibration",
        "scored_corpus_contract",
        "scored_corpus_drift",
        "clusters_not_empty",
        "near_duplicates_groups",
        "selection_explained",
    }
    assert all(e.passed for e in evaluations), [(e.check_name, e.metadata) for e in evaluations if not e.passed]
    # A passing check carries no empty list of failures, and shows what it measured beside its bound.
    assert not [e.check_name for e in evaluations if "failed" in e.metadata or "failed_expectations" in e.metadata]
    assert not [e.check_name for e in evaluations if not {"bounds", "expectations"} & set(e.metadata)]
