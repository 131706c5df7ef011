"""Lineage: staleness follows content, versions are deterministic, and the audit command traces every link."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from conftest import TEST_RUN_CONFIG, local_resources, materialize_pipeline, write_small_corpus, stored_file
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.curation import CurationHead
from embedding_assets.lineage import CODE_VERSIONS, latest_data_version
from embedding_assets.resources import Teacher

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ["corpus_id_index", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier", "clusters"]


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    corpus = tmp_path_factory.mktemp("lineage_corpus")
    ids = write_small_corpus(corpus)
    storage = tmp_path_factory.mktemp("lineage_storage")
    resources = local_resources(corpus, storage)
    instance = dg.DagsterInstance.local_temp(str(home))
    materialize_pipeline(instance, resources, sorted(ids))
    yield {"instance": instance, "home": home, "corpus": corpus, "storage": storage, "resources": resources, "ids": ids}
    instance.dispose()


def statuses(lineage) -> dict[str, StaleStatus]:
    resolver = get_stale_status_resolver(lineage["instance"], ALL_ASSETS)
    out = {}
    for asset in ALL_ASSETS:
        key = asset.key
        name = key.to_user_string()
        if asset.partitions_def is not None:
            for shard in sorted(lineage["ids"]):
                out[f"{name}[{shard}]"] = resolver.get_status(key, shard)
        else:
            out[name] = resolver.get_status(key)
    return out


def needs_refresh(stale: set[str], shards) -> set[str]:
    """Dagster marks an asset STALE when a direct input changed; what must be recomputed is that set
    and everything downstream of it, walked here over the definitions' own dependencies."""
    parents = {a.key.to_user_string(): {k.to_user_string() for k in a.dependency_keys} for a in ALL_ASSETS}
    out = set(stale)
    while True:
        changed = out | ({"scored_corpus"} if any(name.startswith("scored_corpus[") for name in out) else set())
        grown = {name for name, deps in parents.items() if name != "scored_corpus" and deps & changed} - out
        if "quality_classifier" in out:
            grown |= {f"scored_corpus[{shard}]" for shard in shards} - out
        if not grown:
            return out
        out |= grown


def versions(lineage) -> dict[str, str]:
    return {key: latest_data_version(lineage["instance"], key) for key in TRAINING}


def audit(lineage, target: str, tmp_path: Path) -> dict:
    env = {**os.environ, "DAGSTER_HOME": str(lineage["home"]), "EMBEDDING_ASSETS_STORAGE": str(lineage["storage"])}
    out = tmp_path / "audit.json"
    run = subprocess.run(
        [sys.executable, "-m", "embedding_assets.audit", target, "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return {"printed": run.stdout, **json.loads(out.read_text())}


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_1_the_same_inputs_give_the_same_data_versions(lineage):
    before = versions(lineage)
    result = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=TRAINING, instance=lineage["instance"], resources=lineage["resources"], run_config=TEST_RUN_CONFIG)
    assert result.success
    assert versions(lineage) == before
    # The curation inputs of the other modes are never materialised in the labels mode.
    unused = {"reference_set", "annotations"}
    assert all(status == StaleStatus.FRESH for name, status in statuses(lineage).items() if name not in unused)


def test_2_audit_of_a_document_and_a_shard_matches_events_and_files(lineage, tmp_path):
    storage: Path = lineage["storage"]
    doc_id = lineage["ids"]["stdlib-docs-01"][3]
    report = audit(lineage, doc_id, tmp_path)
    document = report["document"]
    scored = pq.read_table(stored_file(storage, "scored_corpus", "stdlib-docs-01")).to_pandas().set_index("id").loc[doc_id]
    classifier = CurationHead.from_bytes((stored_file(storage, "quality_classifier.safetensors")).read_bytes())
    assert document["shard"] == "stdlib-docs-01"
    assert document["score"] == pytest.approx(float(scored["score"]))
    assert document["keep"] == bool(scored["keep"]) == (document["score"] >= classifier.threshold)
    assert ("kept" if document["keep"] else "dropped") in document["why"] and "threshold" in document["why"]
    assert doc_id in report["printed"]

    model = LexicalEmbedder.load(stored_file(storage, "distilled_model.safetensors"))
    instance = lineage["instance"]
    assert report["distilled_model"]["data_version"] == model.version == latest_data_version(instance, "distilled_model")
    assert report["quality_classifier"]["data_version"] == classifier.version == latest_data_version(instance, "quality_classifier")
    assert report["raw_shard"]["data_version"] == latest_data_version(instance, "raw_corpus", "stdlib-docs-01")
    assert report["scored_corpus"]["file_lineage"]["raw_shard_version"] == report["raw_shard"]["data_version"]
    assert report["scored_corpus"]["file_lineage"]["model_version"] == model.version
    assert json.loads(report["scored_corpus"]["file_lineage"]["code_versions"]) == CODE_VERSIONS
    assert report["features"]["data_version"] == sha16(stored_file(storage, "features.safetensors"))
    teacher = json.loads((stored_file(storage, "teacher_model.json")).read_text())
    assert report["teacher_model"]["data_version"] == teacher["sha256"]
    assert report["distilled_model"]["training"]["seed"] == 0
    assert report["distilled_model"]["evaluation"]["student"]["recall_at_10"] > 0
    assert set(report["raw_corpus"]) == set(lineage["ids"])
    for name, link in [("raw_shard", report["raw_shard"]), ("distilled_model", report["distilled_model"]), ("scored_corpus", report["scored_corpus"])]:
        assert link["checks"] and all(c["passed"] for c in link["checks"].values()), name

    shard_report = audit(lineage, "scored_corpus/stdlib-docs-01", tmp_path)
    assert shard_report["scored_corpus"]["data_version"] == report["scored_corpus"]["data_version"]
    assert shard_report["quality_classifier"]["metadata"]["threshold"] == pytest.approx(classifier.threshold, abs=1e-6)


def test_3_a_changed_shard_makes_exactly_its_dependents_stale(lineage):
    path = lineage["corpus"] / "notes.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["text"] += " Revised."
    path.write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key="notes", instance=lineage["instance"], resources=lineage["resources"]).success

    stale = {name for name, status in statuses(lineage).items() if status == StaleStatus.STALE}
    assert stale == {"corpus_id_index", "training_sample", "clusters", "scored_corpus[notes]"}  # what Dagster shows: the direct dependents
    sample_dependent = {"corpus_id_index", "training_sample", "features", "teacher_embeddings", "distilled_model", "quality_classifier"}
    selection = {"clusters", "near_duplicates", "selection"}
    assert needs_refresh(stale, lineage["ids"]) == sample_dependent | selection | {"corpus_report"} | {f"scored_corpus[{s}]" for s in lineage["ids"]}


def test_4_a_changed_teacher_config_makes_the_model_and_every_scored_shard_stale(lineage):
    # Bring the sample and the scored shard back in line with the changed shard first.
    resources = lineage["resources"]
    run_config = {"ops": {"training_sample": TEST_RUN_CONFIG["ops"]["training_sample"]}}
    assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["training_sample"], instance=lineage["instance"], resources=resources, run_config=run_config).success
    changed = {**resources, "teacher": Teacher(max_seq_length=128)}
    assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["teacher_model"], instance=lineage["instance"], resources=changed).success
    stale = {name for name, status in statuses(lineage).items() if status == StaleStatus.STALE}
    assert "teacher_embeddings" in stale and "teacher_model" not in stale
    assert not any(name.startswith("raw_corpus") for name in stale)
    affected = needs_refresh(stale, lineage["ids"])
    assert {"teacher_embeddings", "distilled_model", "quality_classifier"} <= affected
    assert {f"scored_corpus[{shard}]" for shard in lineage["ids"]} <= affected
