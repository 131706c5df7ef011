"""Write, audit, publish: a version that failed a blocking check is never read by a later run of
any kind, and the last good version stays where it was."""

import shutil

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from dagster._core.utils import make_new_run_id

from conftest import TEST_RUN_CONFIG, failure_text, stored_file
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, defs
from embedding_assets import versions
from embedding_assets.resources import CorpusSource, QualityGates, Storage
from embedding_assets.versions import latest_version

SHARD = "stdlib-docs-00"


def run(trained, selection, partition=None, run_config=None, **resources):
    return dg.materialize(
        ALL_ASSETS + ALL_CHECKS,
        selection=selection,
        partition_key=partition,
        instance=trained["instance"],
        resources={**trained["resources"], **resources},
        run_config=run_config or {},
        raise_on_error=False,
    )


def requested(instance, cursor=None):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return result, {key.to_user_string() for key in defs.resolve_all_asset_keys() if result.get_num_requested(key)}


def scored_snapshot(trained) -> tuple[str, bytes]:
    path = stored_file(trained["storage"], "scored_corpus", SHARD)
    return path.parent.name, path.read_bytes()


def test_a_classifier_that_failed_calibration_is_not_used_by_later_scoring_runs(trained):
    instance = trained["instance"]
    good = latest_version(instance, "quality_classifier")
    before = scored_snapshot(trained)
    cursor, _ = requested(instance)

    # An AUC floor no head reaches: the new head is written, its gate fails.
    strict = QualityGates(min_heldout_auc=0.9999)
    failed_run = run(trained, ["quality_classifier"], gates=strict, storage=Storage(base=str(trained["storage"]), keep_versions=1))
    assert not failed_run.success
    bad = latest_version(instance, "quality_classifier")
    assert bad.name != good.name
    # The new version is there, and so is the good one: pruning never removes the last good version.
    assert (trained["storage"] / "quality_classifier" / bad.name).is_dir()
    assert (trained["storage"] / "quality_classifier" / good.name / "quality_classifier.safetensors").is_file()

    # Automation: the scored shards depend on the head, but nothing is requested while its gate is failed.
    cursor, asked = requested(instance, cursor.cursor)
    assert "scored_corpus" not in asked

    # A run launched by hand (or by the sensor's refresh job) refuses the failed head, naming the check and the version.
    scoring = run(trained, ["scored_corpus"], partition=SHARD)
    assert not scoring.success
    message = failure_text(scoring)
    assert "quality_classifier_calibration" in message and bad.name in message and good.name in message
    assert scored_snapshot(trained) == before

    # Once a head passes again, scoring reads it.
    assert run(trained, ["quality_classifier"]).success
    assert run(trained, ["scored_corpus"], partition=SHARD).success
    assert scored_snapshot(trained)[0] != before[0]


def test_a_model_that_failed_its_fidelity_gate_is_not_used_downstream(trained):
    instance = trained["instance"]
    good = latest_version(instance, "distilled_model")
    before = scored_snapshot(trained)
    untrained = {"ops": {"distilled_model": {"config": {**TEST_RUN_CONFIG["ops"]["distilled_model"]["config"], "epochs": 0, "init": "random"}}}}
    assert not run(trained, ["distilled_model"], run_config=untrained).success
    bad = latest_version(instance, "distilled_model")
    assert bad.name != good.name

    for selection, partition in ((["quality_classifier"], None), (["scored_corpus"], SHARD), (["clusters"], None)):
        result = run(trained, selection, partition=partition)
        assert not result.success
        message = failure_text(result)
        assert "distilled_model_fidelity" in message and bad.name in message, message
    assert scored_snapshot(trained) == before
    assert stored_file(trained["storage"], "distilled_model.safetensors").parent.name == bad.name
    assert (trained["storage"] / "distilled_model" / good.name / "distilled_model.safetensors").is_file()


def test_pruning_spares_the_folder_a_run_in_progress_is_writing_and_removes_it_once_that_run_failed(trained):
    instance, storage = trained["instance"], trained["storage"]
    resources = {"corpus": trained["pipeline_corpus"], "storage": Storage(base=str(storage), keep_versions=1)}
    writer = dg.DagsterRun(job_name="select_corpus", run_id=make_new_run_id(), status=dg.DagsterRunStatus.STARTED)
    instance.add_run(writer)
    folder = storage / "corpus_id_index"
    older = latest_version(instance, "corpus_id_index").name
    writing = folder / f"20261201T000000000000Z-{writer.run_id[:8]}"
    killed = folder / "20261201T000000000001Z-0badc0de"
    for partial in (writing, killed):
        partial.mkdir()
        (partial / "corpus_id_index.parquet.tmp").write_bytes(b"half written")

    # Pruning runs before the new version's checks: the older one is still the last good one.
    assert run(trained, ["corpus_id_index"], **resources).success
    newest = latest_version(instance, "corpus_id_index").name
    assert sorted(p.name for p in folder.iterdir()) == sorted([older, newest, writing.name])

    instance.report_run_failed(writer)
    assert run(trained, ["corpus_id_index"], **resources).success
    assert sorted(p.name for p in folder.iterdir()) == sorted([newest, latest_version(instance, "corpus_id_index").name])


def test_the_gates_of_many_shards_are_read_in_a_few_queries_and_agree_with_each_shards_own(trained):
    instance = trained["instance"]
    shards = sorted(trained["instance"].get_dynamic_partitions("corpus_shards"))
    latest = versions.latest_versions(instance, "raw_corpus", shards)
    assert sorted(latest) == shards and all(latest[s] == versions.latest_version(instance, "raw_corpus", s) for s in shards)
    assert versions.gate_problems_by_partition(instance, latest) == {}

    # One shard whose newest version failed its contract, one whose newest version was never checked.
    shutil.copytree(trained["pipeline_corpus"].location, trained["corpus"], dirs_exist_ok=True)
    resources = {**trained["resources"], "corpus": CorpusSource(location=str(trained["corpus"]))}
    table = pq.read_table(trained["corpus"] / f"{SHARD}.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", pa.array([""] * table.num_rows)), trained["corpus"] / f"{SHARD}.parquet")
    assert not dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key=SHARD, instance=instance, resources=resources, raise_on_error=False).success
    assert dg.materialize(ALL_ASSETS, selection=["raw_corpus"], partition_key="notes", instance=instance, resources=resources).success
    latest = versions.latest_versions(instance, "raw_corpus", shards)
    found = versions.gate_problems_by_partition(instance, latest)
    assert found == {shard: versions.gate_problems(instance, latest[shard]) for shard in (SHARD, "notes")}
    assert "raw_corpus_contract" in found[SHARD] and "has no result for this version" in found["notes"]["raw_corpus_contract"]
