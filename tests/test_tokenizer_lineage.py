"""Features and the teacher share a tokenizer: the edge is declared, and a second tokenizer is refused by hash."""

import json
import os
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from conftest import failure_text, local_resources, stored_file, write_small_corpus
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS
from embedding_assets.engine.features import Features
from embedding_assets.engine.tokenization import load_tokenizer
from embedding_assets.resources import QualityGates, Teacher
from embedding_assets.resources.teacher import default_teacher_dir

SMALL_SAMPLE = {"ops": {"training_sample": {"config": {"size": 120, "heldout_fraction": 0.25}}, "features": {"config": {"vocabulary_size": 20_000}}}}


def teacher_with_swapped_tokens(directory: Path, first: str = "the", second: str = "of") -> Path:
    """The packaged teacher with two vocabulary entries swapped in tokenizer.json and vocab.txt:
    the same weights, a tokenizer that gives other ids to two common words."""
    source = default_teacher_dir()
    for path in source.rglob("*"):
        target = directory / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name not in ("tokenizer.json", "vocab.txt"):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
    spec = json.loads((source / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    lines = (source / "vocab.txt").read_text().split("\n")
    i, j = lines.index(first), lines.index(second)
    lines[i], lines[j] = lines[j], lines[i]
    (directory / "vocab.txt").write_text("\n".join(lines))
    return directory


def test_features_depend_on_the_teacher_model():
    graph = {asset.key.to_user_string(): {k.to_user_string() for k in asset.dependency_keys} for asset in ALL_ASSETS}
    assert "teacher_model" in graph["features"]
    assert "training_sample" in graph["distilled_model"]
    assert {"scored_corpus", "clusters", "distilled_model"} <= graph["selection"]


def test_a_teacher_with_another_tokenizer_is_refused_by_distilled_model(tmp_path):
    other = teacher_with_swapped_tokens(tmp_path / "other-teacher")
    first, second = Teacher(), Teacher(model=str(other))
    assert load_tokenizer(first.tokenizer_json()).token_to_id("the") == load_tokenizer(second.tokenizer_json()).token_to_id("of")
    assert first.tokenizer_sha256() != second.tokenizer_sha256()

    corpus = tmp_path / "corpus"
    shards = sorted(write_small_corpus(corpus, docs_per_shard=60))
    storage = tmp_path / "storage"
    # A small sample keeps the teacher quick; its vocabulary is small too, so the floor is lowered.
    resources = {**local_resources(corpus, storage), "gates": QualityGates(min_vocabulary_size=100)}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus_shards", shards)
        for shard in shards:
            assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["raw_corpus"], partition_key=shard, instance=instance, resources=resources).success
        selection = ["corpus_id_index", "training_sample", "teacher_model", "features", "teacher_embeddings"]
        assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=selection, instance=instance, resources=resources, run_config=SMALL_SAMPLE).success
        feats = Features.from_bytes(stored_file(storage, "features.safetensors").read_bytes())
        assert (feats.tokenizer_model, feats.tokenizer_sha256) == (first.model, first.tokenizer_sha256())
        features_event = instance.fetch_materializations(dg.AssetKey("features"), limit=1).records[0].asset_materialization
        assert features_event.metadata["tokenizer_sha256"].value == first.tokenizer_sha256()

        # The teacher is swapped for one with another vocabulary, and only its own assets are rebuilt.
        swapped = {**resources, "teacher": second}
        assert dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["teacher_model", "teacher_embeddings"], instance=instance, resources=swapped).success
        stored = pq.read_schema(stored_file(storage, "teacher_embeddings.parquet")).metadata
        assert stored[b"tokenizer_sha256"].decode() == second.tokenizer_sha256()
        resolver = get_stale_status_resolver(instance, ALL_ASSETS)
        assert resolver.get_status(dg.AssetKey("features")) == StaleStatus.STALE

        result = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["distilled_model"], instance=instance, resources=swapped, raise_on_error=False)
        assert not result.success
        message = failure_text(result)
        for named in (first.model, first.tokenizer_sha256(), str(other), second.tokenizer_sha256()):
            assert named in message, (named, message)
        assert not (storage / "distilled_model").exists()

        # Features rebuilt with the second teacher agree with its embeddings again.
        rebuilt = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["features"], instance=instance, resources=swapped, run_config={"ops": {"features": SMALL_SAMPLE["ops"]["features"]}})
        assert rebuilt.success
        assert Features.from_bytes(stored_file(storage, "features.safetensors").read_bytes()).tokenizer_sha256 == second.tokenizer_sha256()


@pytest.mark.parametrize("spacing", [None, 2])
def test_the_tokenizer_hash_ignores_layout_truncation_and_padding(spacing):
    from embedding_assets.engine.tokenization import tokenizer_sha256

    text = (default_teacher_dir() / "tokenizer.json").read_text()
    spec = json.loads(text)
    spec["truncation"], spec["padding"] = {"max_length": 64, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}, None
    assert tokenizer_sha256(json.dumps(spec, indent=spacing)) == tokenizer_sha256(text)
    spec["model"]["vocab"]["zebra"], spec["model"]["vocab"]["the"] = spec["model"]["vocab"]["the"], spec["model"]["vocab"]["zebra"]
    assert tokenizer_sha256(json.dumps(spec)) != tokenizer_sha256(text)
