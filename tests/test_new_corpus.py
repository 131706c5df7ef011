"""What a new user on a new corpus meets: each case either gives the right answer or says what is
wrong (naming the shard, row, file or setting) before the expensive work, and writes nothing.

The numbers in the test names are the findings of the report these tests answer; the README's
reliability table has one row for each.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, failure_text, step_retries, stored_file, stored_key
from embedding_assets.corpus import read_shard, scan_location
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.engine.evaluation import probe_labels
from embedding_assets.resources import CorpusSource, Curation, QualityGates, S3Settings, Storage
from embedding_assets.resources.gates import gates_from_env
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_CORPUS_DIR


def files(storage: Path) -> dict[str, bytes]:
    return {p.relative_to(storage).as_posix(): p.read_bytes() for p in sorted(storage.rglob("*")) if p.is_file()}


def materialize(instance, resources, selection, partition=None, run_config=None, checks=True):
    if partition:
        instance.add_dynamic_partitions("corpus_shards", [partition])
    return dg.materialize(
        ALL_ASSETS + (ALL_CHECKS if checks else []), selection=selection, partition_key=partition, instance=instance,
        resources=resources, run_config=run_config or {}, raise_on_error=False,
    )


def evaluation(result, name):
    [found] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return found, {k: getattr(v, "value", v) for k, v in found.metadata.items()}


def sample_rows(count: int, start: int = 0, prefix: str = "", labels=None) -> list[dict]:
    """Rows of the built-in sample (optionally only those with one of `labels`), ids prefixed."""
    table = pq.read_table(sorted(SAMPLE_CORPUS_DIR.glob("*.parquet"))[1])
    rows = [r for r in table.to_pylist() if labels is None or r["label"] in labels][start : start + count]
    return [{**r, "id": prefix + r["id"]} for r in rows]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


def sample_ids(storage: Path) -> set[str]:
    return set(pq.read_table(stored_file(storage, "training_sample.parquet"))["id"].to_pylist())


# --- 1: a second corpus on the same instance -------------------------------------------------


def ingest_two_corpora(trained, old: dict, new: dict, old_location: str, new_location: str, resources_for):
    """Ingest `old` shards from the old location, then `new` shards from the new one, on one instance."""
    for shard in old:
        assert materialize(trained["instance"], resources_for(old_location), ["raw_corpus"], shard).success
    for shard in new:
        assert materialize(trained["instance"], resources_for(new_location), ["raw_corpus"], shard).success


def test_1_a_second_corpus_on_the_same_instance_is_sampled_alone(trained, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    write_rows(old / "first.parquet", sample_rows(60, 0, "old-"))
    write_rows(old / "second.parquet", sample_rows(60, 60, "old-"))
    write_rows(new / "perl.jsonl", sample_rows(70, 200, "new-"))
    write_rows(new / "debian.parquet", sample_rows(70, 300, "new-"))

    def resources_for(location):
        return {**trained["resources"], "corpus": CorpusSource(location=location)}

    ingest_two_corpora(trained, ["first", "second"], ["perl", "debian"], str(old), str(new), resources_for)
    result = materialize(trained["instance"], resources_for(str(new)), ["training_sample"], run_config={"ops": {"training_sample": {"config": {"size": 1000}}}})
    assert result.success, failure_text(result)
    ids = sample_ids(trained["storage"])
    assert ids == {r["id"] for r in sample_rows(70, 200, "new-") + sample_rows(70, 300, "new-")}
    metadata = result.asset_materializations_for_node("training_sample")[0].metadata
    # The instance also knows the shards of the corpus the model was trained on: departed too.
    assert set(metadata["departed_shards"].value) == {"first", "second"} | set(trained["pipeline_corpus"].shards())

    # A shard of the new location named like an old partition, not yet ingested from there: refused, nothing written.
    write_rows(new / "first.parquet", sample_rows(30, 400, "new-"))
    before = files(trained["storage"])
    refused = materialize(trained["instance"], resources_for(str(new)), ["training_sample"])
    message = failure_text(refused)
    assert "raw_corpus[first] was read from" in message and str(new / "first.parquet") in message and "re-materialise raw_corpus[first]" in message
    assert step_retries(refused) == 0
    assert files(trained["storage"]) == before


def test_1_a_corpus_on_s3_after_a_local_one_is_sampled_alone(trained, moto_s3, tmp_path):
    bucket = "second-corpus"
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    for name, rows in {"perl.jsonl": sample_rows(70, 200, "s3-"), "debian.parquet": sample_rows(70, 300, "s3-")}.items():
        write_rows(tmp_path / name, rows)
        client.upload_file(str(tmp_path / name), bucket, f"corpus/{name}")
    old = tmp_path / "old"
    write_rows(old / "stdlib-docs-00.parquet", sample_rows(60, 0, "old-"))
    s3 = S3Settings(endpoint_url=moto_s3.endpoint_url)
    on_s3 = {**trained["resources"], "corpus": CorpusSource(location=f"s3://{bucket}/corpus", s3=s3), "storage": Storage(base=f"s3://{bucket}/storage", s3=s3)}
    assert materialize(trained["instance"], {**trained["resources"], "corpus": CorpusSource(location=str(old))}, ["raw_corpus"], "stdlib-docs-00").success
    for shard in ("perl", "debian"):
        assert materialize(trained["instance"], on_s3, ["raw_corpus"], shard).success
    result = materialize(trained["instance"], on_s3, ["training_sample"], run_config={"ops": {"training_sample": {"config": {"size": 1000}}}})
    assert result.success, failure_text(result)
    import io

    body = client.get_object(Bucket=bucket, Key=stored_key(client, bucket, "storage", "training_sample.parquet"))["Body"].read()
    ids = set(pq.read_table(io.BytesIO(body))["id"].to_pylist())
    assert ids == {r["id"] for r in sample_rows(70, 200, "s3-") + sample_rows(70, 300, "s3-")}
    departed = result.asset_materializations_for_node("training_sample")[0].metadata["departed_shards"].value
    assert "stdlib-docs-00" in departed and not {"perl", "debian"} & set(departed)


# --- 2: drift against a shard's own history, or a reference per source ---------------------------


def score(trained, shard, gates=None):
    resources = {**trained["resources"], "gates": gates} if gates else trained["resources"]
    return materialize(trained["instance"], resources, ["raw_corpus", "scored_corpus"], shard)


def test_2_a_shard_of_one_topic_is_compared_with_its_own_history_or_its_reference(trained):
    write_rows(trained["corpus"] / "networking.parquet", sample_rows(150, 0, "", set(NETWORKING_LABELS)))
    first = score(trained, "networking")
    assert first.success
    check, meta = evaluation(first, "scored_corpus_drift")
    keep_fraction = meta["keep_fraction"]
    assert keep_fraction > 0.45  # beyond 0.2 ± 0.25, the old corpus-wide rule, and right for this source
    assert check.passed and meta["compared_with"].startswith("nothing: first scoring")

    again = score(trained, "networking")
    check, meta = evaluation(again, "scored_corpus_drift")
    assert check.passed and meta["compared_with"].startswith("its previous scoring") and meta["score_psi"] == 0.0

    # A reference for the source that says 0.2: the shard drifts. warn (the default) lets the run succeed ...
    warn = score(trained, "networking", QualityGates(drift_references={"net*": 0.2}))
    check, meta = evaluation(warn, "scored_corpus_drift")
    assert warn.success and not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert f"keep fraction {keep_fraction:.4f} is not 0.2" in meta["failed"][0] and "drift reference 'net*'" in meta["failed"][0]
    # ... block fails it.
    block = score(trained, "networking", QualityGates(drift_references={"net*": 0.2}, drift_severity="block"))
    check, _ = evaluation(block, "scored_corpus_drift")
    assert not block.success and not check.passed and check.severity == dg.AssetCheckSeverity.ERROR


def test_2_gate_thresholds_and_drift_settings_come_from_the_environment():
    gates = gates_from_env({
        "EMBEDDING_ASSETS_GATE_MAX_SCORE_PSI": "0.5",
        "EMBEDDING_ASSETS_GATE_MIN_ROWS_FOR_DRIFT": "1000",
        "EMBEDDING_ASSETS_GATE_DRIFT_SEVERITY": "block",
        "EMBEDDING_ASSETS_GATE_DRIFT_REFERENCES": "perl-*=0.05, debian-*=0.3",
    })
    assert (gates.max_score_psi, gates.min_rows_for_drift, gates.drift_severity) == (0.5, 1000, "block")
    assert gates.drift_reference("debian-01") == ("debian-*", 0.3) and gates.drift_reference("other") is None
    with pytest.raises(ValueError, match="EMBEDDING_ASSETS_GATE_MAX_SCORE_PSI='lots': expected a number"):
        gates_from_env({"EMBEDDING_ASSETS_GATE_MAX_SCORE_PSI": "lots"})
    with pytest.raises(ValueError, match=r"drift_severity \(EMBEDDING_ASSETS_GATE_DRIFT_SEVERITY\) must be one of"):
        gates_from_env({"EMBEDDING_ASSETS_GATE_DRIFT_SEVERITY": "panic"})


def test_2_the_run_command_scores_every_shard_and_then_reports_each_failure(trained, capsys, monkeypatch):
    from embedding_assets.jobs import score_corpus
    from embedding_assets.jobs.launch import code_location
    from embedding_assets.run import run_jobs

    write_rows(trained["corpus"] / "alpha.parquet", sample_rows(120, 0, "", set(NETWORKING_LABELS)))
    write_rows(trained["corpus"] / "beta.parquet", sample_rows(120, 500, "b-"))
    resources = {**trained["resources"], "gates": QualityGates(drift_references={"alpha": 0.2}, drift_severity="block")}
    for shard in ("alpha", "beta"):
        assert materialize(trained["instance"], resources, ["raw_corpus"], shard).success
    # The launched runs load the code location from the environment, as the run command sets it.
    settings = {
        "CORPUS": str(trained["corpus"]), "STORAGE": str(trained["storage"]), "POSITIVE_LABELS": ",".join(NETWORKING_LABELS),
        "DEVICE": "cpu", "GATE_DRIFT_REFERENCES": "alpha=0.2", "GATE_DRIFT_SEVERITY": "block",
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"EMBEDDING_ASSETS_{name}", value)
    defs = dg.Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=[score_corpus], resources=resources)
    with code_location(trained["instance"]) as context:
        failures, run_ids = run_jobs(defs, context, [(score_corpus, None)], ["alpha", "beta"], {})
    assert len(failures) == 1 and failures[0].startswith("score_corpus[alpha]: ")
    assert "scored_corpus_drift failed: keep fraction" in failures[0] and "drift reference 'alpha'" in failures[0]
    assert (stored_file(trained["storage"], "scored_corpus", "beta")).exists()  # scored after alpha failed
    assert "scored_corpus_drift failed" in capsys.readouterr().err
    runs = [trained["instance"].get_run_by_id(run_id) for run_id in run_ids]
    assert [run.tags["dagster/partition"] for run in runs] == ["alpha", "beta"] and all(run.remote_job_origin for run in runs)


# --- 3: empty and whitespace-only texts ------------------------------------------------------------


def test_3_empty_and_whitespace_texts_are_scored_never_kept_and_counted(trained):
    rows = sample_rows(40, 0, "", set(NETWORKING_LABELS)) + [{"id": "blank", "text": "", "label": "socket"}, {"id": "spaces", "text": " \n\t ", "label": "socket"}]
    write_rows(trained["corpus"] / "blanks.parquet", rows)
    # With the raw gate's floor on text length lowered to 0, so that empty texts pass it and are scored.
    allow_empty = {**trained["resources"], "gates": QualityGates(min_text_chars=0)}
    result = materialize(trained["instance"], allow_empty, ["raw_corpus", "scored_corpus"], "blanks")
    assert result.success, failure_text(result)
    scored = pq.read_table(stored_file(trained["storage"], "scored_corpus", "blanks")).to_pandas().set_index("id")
    assert not scored.loc["blank", "keep"] and not scored.loc["spaces", "keep"]
    assert scored.loc[["blank", "spaces"], "score"].notna().all()  # scored as such
    assert scored["keep"].sum() > 0  # the real networking documents are kept
    assert result.asset_materializations_for_node("scored_corpus")[0].metadata["empty_texts"].value == 2


# --- 4 and 12: jsonl columns, and where rows are counted from ---------------------------------------


def test_4_jsonl_columns_come_from_every_line_not_the_first_of_a_batch(tmp_path):
    lines = [{"id": "1", "text": "no label here"}, {"id": "2", "text": "labelled", "label": "socket"}]
    lines += [{"id": str(i), "text": f"text {i}"} for i in range(3, 8200)]
    lines.append({"id": "8200", "text": "late key", "source": "perl-doc"})
    (tmp_path / "late.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = pa.Table.from_batches(list(read_shard(str(tmp_path / "late.jsonl"))))
    assert table.num_rows == 8200 and table.column_names == ["id", "text", "label", "source"]
    assert table["label"].to_pylist()[:3] == [None, "socket", None]
    assert table["source"].to_pylist()[-1] == "perl-doc" and table["source"].null_count == 8199


def test_12_parquet_rows_and_jsonl_lines_both_count_from_1(tmp_path):
    from embedding_assets.engine.errors import InputError

    pq.write_table(pa.table({"id": [None, "b"], "text": ["x", "y"]}), tmp_path / "first.parquet")
    with pytest.raises(InputError, match=r"first\.parquet: row 1: id is null"):
        list(read_shard(str(tmp_path / "first.parquet")))
    (tmp_path / "first.jsonl").write_text('{"id": null, "text": "x"}\n{"id": "b", "text": "y"}\n')
    with pytest.raises(InputError, match=r"first\.jsonl: line 1: id is null"):
        list(read_shard(str(tmp_path / "first.jsonl")))
    (tmp_path / "types.jsonl").write_text('{"id": "a", "text": "x", "n": "one"}\n\n{"id": "b", "text": "y", "n": 2}\n')
    with pytest.raises(InputError, match=r"types\.jsonl: line 3: column 'n' mixes types across lines \(string on line 1, integer on line 3\)"):
        list(read_shard(str(tmp_path / "types.jsonl")))


# --- 5 and 12: shards whose gates failed are not sampled --------------------------------------------


def test_5_a_shard_that_failed_its_gate_is_left_out_of_the_sample(trained):
    write_rows(trained["corpus"] / "good.parquet", sample_rows(80, 0))
    write_rows(trained["corpus"] / "holes.parquet", sample_rows(40, 100) + [{"id": "e1", "text": "", "label": "x"}, {"id": "e2", "text": "  ", "label": "x"}])
    assert materialize(trained["instance"], trained["resources"], ["raw_corpus"], "good").success
    assert not materialize(trained["instance"], trained["resources"], ["raw_corpus"], "holes").success
    result = materialize(trained["instance"], trained["resources"], ["training_sample"])
    assert result.success, failure_text(result)
    assert sample_ids(trained["storage"]) == {r["id"] for r in sample_rows(80, 0)}
    excluded = {row.data["shard"]: row.data["reason"] for row in result.asset_materializations_for_node("training_sample")[0].metadata["excluded_shards"].records}
    assert list(excluded) == ["holes"] and "raw_corpus_contract failed" in excluded["holes"] and "'e1', 'e2'" in excluded["holes"]


def test_12_both_shards_that_share_ids_are_left_out_and_the_terminal_says_why(trained):
    from embedding_assets.run import failure_reasons

    write_rows(trained["corpus"] / "good.parquet", sample_rows(80, 0))
    write_rows(trained["corpus"] / "first.parquet", sample_rows(30, 100))
    write_rows(trained["corpus"] / "second.parquet", sample_rows(30, 120))  # ten ids of first again
    for shard in ("good", "first", "second"):
        assert materialize(trained["instance"], trained["resources"], ["raw_corpus"], shard).success
    indexed = materialize(trained["instance"], trained["resources"], ["corpus_id_index", "training_sample"])
    assert not indexed.success
    reasons = " ".join(failure_reasons(indexed))
    shared = sorted(r["id"] for r in sample_rows(10, 120))
    assert "corpus_ids_unique_across_shards failed" in reasons and "clashing_shards ['first', 'second']" in reasons and shared[0] in reasons
    result = materialize(trained["instance"], trained["resources"], ["training_sample"])
    assert result.success, failure_text(result)
    assert sample_ids(trained["storage"]) == {r["id"] for r in sample_rows(80, 0)}
    excluded = {row.data["shard"]: row.data["reason"] for row in result.asset_materializations_for_node("training_sample")[0].metadata["excluded_shards"].records}
    assert sorted(excluded) == ["first", "second"] and "shares ids with raw_corpus[second]" in excluded["first"]
    assert "shares ids with raw_corpus[first]" in excluded["second"]


# --- 6: what would fail after the teacher is refused before it --------------------------------------

TRAIN = ["training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier"]


def refused_before_the_teacher(trained, resources, run_config) -> str:
    before = files(trained["storage"])
    result = materialize(trained["instance"], resources, TRAIN, run_config=run_config)
    assert not result.success and step_retries(result) == 0
    started = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START}
    assert "training_sample" in started and not started & {"features", "teacher_embeddings", "distilled_model"}
    # teacher_model depends on nothing and runs beside the sample: its identity file is a new version, nothing else.
    assert {k: v for k, v in files(trained["storage"]).items() if not k.startswith("teacher_model/")} == {k: v for k, v in before.items() if not k.startswith("teacher_model/")}
    return failure_text(result)


@pytest.fixture
def ingested(trained):
    write_rows(trained["corpus"] / "plain.parquet", sample_rows(300, 0))
    assert materialize(trained["instance"], trained["resources"], ["raw_corpus"], "plain").success
    return trained


def test_6_a_sample_smaller_than_one_batch_is_refused_before_the_teacher(ingested):
    message = refused_before_the_teacher(ingested, ingested["resources"], {"ops": {"training_sample": {"config": {"size": 200}}}})
    assert "fewer than one batch of 512" in message and "--sample-size" in message and "--batch-size" in message


def test_6_the_run_command_refuses_impossible_sizes_before_anything_runs(tmp_path):
    home, storage = tmp_path / "home", tmp_path / "storage"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_ASSETS_STORAGE": str(storage)}
    for args, expected in [
        (["--sample-size", "300"], "--sample-size 300 leaves about 255 training documents (15% are held out), fewer than one batch of 512 (--batch-size): raise --sample-size to at least 603"),
        (["--sample-size", "300", "--batch-size", "1"], "--batch-size 1: a batch needs at least 2 documents"),
    ]:
        run = subprocess.run([sys.executable, "-m", "embedding_assets.run", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and expected in run.stderr, run.stderr
    assert not storage.exists() and list(home.iterdir()) == []


def test_6_labels_curation_without_a_label_column_or_with_one_label_is_refused_before_the_teacher(trained):
    write_rows(trained["corpus"] / "unlabelled.parquet", [{"id": r["id"], "text": r["text"]} for r in sample_rows(300, 0)])
    assert materialize(trained["instance"], trained["resources"], ["raw_corpus"], "unlabelled").success
    small = {"ops": {"training_sample": {"config": {"size": 300}}, "distilled_model": {"config": {"batch_size": 64}}}}
    message = refused_before_the_teacher(trained, trained["resources"], small)
    assert "curation mode labels needs a label column ('label', training_sample label_column)" in message and "--reference" in message

    one_label = {**trained["resources"], "curation": Curation(mode="labels", positive_labels=["socket"])}
    (trained["corpus"] / "unlabelled.parquet").unlink()
    write_rows(trained["corpus"] / "sockets.parquet", [{**r, "label": "socket"} for r in sample_rows(300, 0)])
    assert materialize(trained["instance"], one_label, ["raw_corpus"], "sockets").success
    message = refused_before_the_teacher(trained, one_label, small)
    assert "every training document has one of the positive labels ['socket'] (--positive-labels)" in message


def test_6_a_corpus_with_one_label_has_no_probe_rather_than_a_failure():
    assert all(label is None for label in probe_labels(["only"] * 50 + [None], 20))
    assert list(probe_labels(["a", "b", "a", None], 20)) == ["a", "b", "a", None]


# --- 8: the audit finds the storage from any directory ---------------------------------------------


def test_8_audit_works_from_another_directory_and_names_a_wrong_storage(pipeline, tmp_path):
    home = pipeline["instance"].root_directory
    env = {k: v for k, v in os.environ.items() if k != "EMBEDDING_ASSETS_STORAGE"}
    env["DAGSTER_HOME"] = home
    doc = pipeline["ids"]["stdlib-docs-00"][0]

    def audit(*args):
        return subprocess.run([sys.executable, "-m", "embedding_assets.audit", *args, "--json", str(tmp_path / "a.json")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    found = audit(doc)
    assert found.returncode == 0, found.stderr
    assert f"document {doc} in shard stdlib-docs-00" in found.stdout
    for target in (doc, "scored_corpus/stdlib-docs-00", "distilled_model"):
        wrong = audit(target, "--storage", str(tmp_path / "elsewhere"))
        assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr
        assert str(tmp_path / "elsewhere") in wrong.stderr and "--storage" in wrong.stderr


# --- 9: what counts as a shard ------------------------------------------------------------------------


def test_9_only_files_directly_in_the_location_are_shards_and_the_rest_are_named(tmp_path):
    write_rows(tmp_path / "a.parquet", sample_rows(2))
    write_rows(tmp_path / "B.PARQUET", sample_rows(2, 2))
    write_rows(tmp_path / ".trash" / "old.parquet", sample_rows(2, 4))
    write_rows(tmp_path / "sub" / "nested.parquet", sample_rows(2, 6))
    (tmp_path / "blank.jsonl").write_text('{"id": "j", "text": "x"}\n')
    (tmp_path / "blank.txt").write_text("x\n")
    (tmp_path / "packed.jsonl.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "table.csv").write_text("id,text\n1,x\n")
    listing = scan_location(str(tmp_path))
    assert sorted(listing.shards) == ["B", "a", "blank.jsonl", "blank.txt"]
    assert set(listing.skipped) == {"sub/", "packed.jsonl.gz", "table.csv"}
    assert "not a shard file type" in listing.skipped["table.csv"] and "subdirectory" in listing.skipped["sub/"]
    assert pa.Table.from_batches(list(read_shard(listing.shards["B"]))).num_rows == 2


# --- 12: a run killed with kill -9 does not stay STARTED ----------------------------------------------


def test_12_a_run_whose_process_died_is_marked_failed(tmp_path):
    from embedding_assets.run import HOST_TAG, PID_TAG, fail_dead_runs
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with dg.instance_for_test() as instance:
        dead = instance.add_run(dg.DagsterRun(job_name="train_embedder", run_id="d" * 8 + "-0000-0000-0000-000000000000", status=dg.DagsterRunStatus.STARTED, tags={PID_TAG: str(gone.pid), HOST_TAG: socket.gethostname()}))
        alive = instance.add_run(dg.DagsterRun(job_name="train_embedder", run_id="a" * 8 + "-0000-0000-0000-000000000000", status=dg.DagsterRunStatus.STARTED, tags={PID_TAG: str(os.getppid()), HOST_TAG: socket.gethostname()}))
        assert fail_dead_runs(instance) == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED


# --- 7: teacher settings ------------------------------------------------------------------------------


def test_7_a_teacher_that_cannot_work_is_refused_by_name_before_anything_is_written(trained, tmp_path):
    import pydantic

    from embedding_assets.resources import Teacher
    from embedding_assets.resources.teacher import default_teacher_dir

    no_weights = tmp_path / "no-weights"
    shutil.copytree(default_teacher_dir(), no_weights)
    (no_weights / "model.safetensors").unlink()
    for model, message in [
        (str(tmp_path / "missing"), f"teacher '{tmp_path / 'missing'}' (EMBEDDING_ASSETS_TEACHER) is not a directory"),
        ("sentence-transformers/all-MiniLM-L6-v2", "model names are not looked up, nothing is downloaded at run time"),
        (str(no_weights), "has no model weights (model.safetensors or pytorch_model.bin)"),
    ]:
        with pytest.raises(pydantic.ValidationError, match=re.escape(message)):
            Teacher(model=model)

    # A directory that loses its weights after the settings were read: refused when the run starts
    # its resources, before any step; nothing retried, and teacher_model.json keeps the teacher it recorded.
    later = tmp_path / "later"
    shutil.copytree(default_teacher_dir(), later)
    teacher = Teacher(model=str(later))
    (later / "model.safetensors").unlink()
    before = files(trained["storage"])
    result = materialize(trained["instance"], {**trained["resources"], "teacher": teacher}, ["teacher_model", "teacher_embeddings"])
    errors = " ".join(e.event_specific_data.error.to_string() for e in result.all_events if getattr(e.event_specific_data, "error", None))
    assert not result.success and "has no model weights" in errors
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START] and step_retries(result) == 0
    assert files(trained["storage"]) == before

    home, storage = tmp_path / "run-home", tmp_path / "run-storage"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_ASSETS_STORAGE": str(storage), "EMBEDDING_ASSETS_TEACHER": str(tmp_path / "missing")}
    run = subprocess.run([sys.executable, "-m", "embedding_assets.run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 2 and "bad setting" in run.stderr and "is not a directory" in run.stderr, run.stderr
    assert not storage.exists() and list(home.iterdir()) == []


# --- 11: Ctrl-C and SIGTERM during the teacher ------------------------------------------------------


def interrupt_during_the_teacher(corpus: Path, storage: Path, home: Path, sig: int, ready) -> tuple[subprocess.CompletedProcess, float]:
    """Start the run command, send `sig` once `ready(chunks stored since the start, output so far)`, and
    return how it ended and how many seconds it took to stop."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMBEDDING_ASSETS_DEVICE": "cpu", "EMBEDDING_ASSETS_CPU_THREADS": "1"}
    before = set((storage / "teacher_chunks").rglob("*.parquet")) if (storage / "teacher_chunks").exists() else set()
    log = home / f"run-{sig}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedding_assets.run", "--corpus", str(corpus), "--storage", str(storage), "--positive-labels", ",".join(NETWORKING_LABELS), "--sample-size", "700", "--epochs", "1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and process.poll() is None:
            chunks = set((storage / "teacher_chunks").rglob("*.parquet")) if (storage / "teacher_chunks").exists() else set()
            if ready(chunks - before, log.read_text()):
                break
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()
        process.send_signal(sig)
        sent = time.monotonic()
        process.wait(timeout=120)
        stopped = time.monotonic() - sent
    return subprocess.CompletedProcess(process.args, process.returncode, log.read_text()), stopped


def test_11_ctrl_c_and_sigterm_stop_the_teacher_at_once_and_its_chunks_are_reused(tmp_path):
    corpus, storage, home = tmp_path / "corpus", tmp_path / "storage", tmp_path / "home"
    home.mkdir()
    for i in range(2):
        write_rows(corpus / f"part-{i}.parquet", sample_rows(350, 350 * i))
    # 700 documents: two chunks of up to 512. Ctrl-C once the first chunk is stored ...
    first, seconds = interrupt_during_the_teacher(corpus, storage, home, signal.SIGINT, lambda new, out: bool(new))
    assert first.returncode == 130, first.stdout
    assert seconds < 20 and "Exceeded max_retries" not in first.stdout and "STEP_UP_FOR_RETRY" not in first.stdout
    assert "teacher_embeddings was interrupted" in first.stdout
    [key] = [p.name for p in (storage / "teacher_chunks").iterdir()]
    kept = sorted(p.name for p in (storage / "teacher_chunks" / key).glob("*.parquet"))
    assert kept and not (storage / "teacher_embeddings").exists()

    # ... then SIGTERM as soon as the next run's teacher has said what it reuses.
    second, seconds = interrupt_during_the_teacher(corpus, storage, home, signal.SIGTERM, lambda new, out: "to embed" in out)
    assert second.returncode == 130, second.stdout
    assert seconds < 20 and "STEP_UP_FOR_RETRY" not in second.stdout
    assert f"in 2 chunks under teacher_chunks/{key}, {2 - len(kept)} to embed" in second.stdout  # the first run's chunks were reused
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        runs = instance.get_runs()
        assert not [r for r in runs if r.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)]
        retries = [e for r in runs for e in instance.all_logs(r.run_id) if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert not retries
