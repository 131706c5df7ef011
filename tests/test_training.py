"""Training as one engine call: the asset and the fidelity bench give the same student; the model card; the shared config."""

import numpy as np
import pytest

from embedding_assets import paths
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.config import DistillConfig
from embedding_assets.engine.features import Features
from embedding_assets.engine.model_card import render
from embedding_assets.engine.prior import TokenSums
from embedding_assets.resources import Storage
from embedding_assets.stored import read_embeddings, read_sample
from tests.conftest import TEST_RUN_CONFIG, stored_file
from embedding_assets.versions import resolve_published


def test_asset_and_bench_train_the_same_weights(pipeline):
    """bench.fidelity's `train_ours`, given the pipeline's inputs and run config, reproduces the stored model bit for bit."""
    from bench.fidelity import Corpus, Recipe, train_ours

    storage = Storage(base=str(pipeline["storage"]))
    instance = pipeline["instance"]
    feats = Features.from_bytes(storage.read_bytes(*resolve_published(instance, "features").file(paths.FEATURES_FILE)))
    embedded = resolve_published(instance, "teacher_embeddings")
    _, teacher, _ = read_embeddings(storage, *embedded.file(paths.TEACHER_EMBEDDINGS_FILE))
    sums = TokenSums.from_bytes(storage.read_bytes(*embedded.file(paths.TEACHER_TOKEN_SUMS_FILE)))
    sample = read_sample(storage, resolve_published(instance, "training_sample"), ["text", "label", "split"])
    corpus = Corpus("pipeline sample", sample["text"].to_pylist(), sample["label"].to_pylist(), np.array(sample["split"].to_pylist()) != "train")
    config = DistillConfig(**TEST_RUN_CONFIG["ops"]["distilled_model"]["config"])

    ours, info = train_ours(corpus, teacher, Recipe(distill=config), feats.tokenizer_json, sums, features=feats)
    stored = LexicalEmbedder.load(storage.uri(*resolve_published(instance, "distilled_model").file(paths.MODEL_FILE)))
    assert info["steps"] == stored.provenance["training"]["steps"] > 0
    mine, theirs = ours._tensors(), stored._tensors()
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert np.array_equal(mine[name], theirs[name]), name
    # Seeds matter: another seed gives other weights, so the equality above is not vacuous.
    other, _ = train_ours(corpus, teacher, Recipe(distill=config.replace(seed=config.seed + 1)), feats.tokenizer_json, sums, features=feats)
    assert not np.array_equal(other._tensors()["layers.1"], theirs["layers.1"])


def test_model_card_is_rendered_from_the_models_provenance(pipeline):
    model = LexicalEmbedder.load(stored_file(pipeline["storage"], "distilled_model.safetensors"))
    card = render(model)
    stored = (stored_file(pipeline["storage"], "distilled_model.md")).read_text()
    assert card == stored
    training, evaluation = model.provenance["training"], model.provenance["evaluation"]
    assert f"`{model.version}`" in card
    assert f"| student | {evaluation['student']['recall_at_10']} | {evaluation['student']['spearman']} |" in card
    assert f"{training['epochs']} epochs ({training['steps']} steps)" in card
    assert " -> ".join(map(str, model.dims)) in card
    assert "$" not in card  # every placeholder filled


def test_one_config_class_serves_the_engine_and_the_run_config():
    import dagster as dg

    from embedding_assets.assets.training import DistillationConfig, settings

    assert issubclass(DistillationConfig, DistillConfig)
    assert set(DistillationConfig.model_fields) == set(DistillConfig.model_fields) >= {"first_layer_dtype", "probe_labels"}
    for name, field in DistillConfig.model_fields.items():
        assert DistillationConfig.model_fields[name].default == field.default, name
        assert field.description, f"{name} has no description for the launchpad"
    assert settings(DistillationConfig(epochs=2)) == DistillConfig(epochs=2)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        DistillConfig(batch_size=1)
    with pytest.raises(dg.Failure, match="bad distillation config.*batch_size must be >= 2"):
        settings(DistillationConfig(batch_size=1))
