"""The curation head in the engine: the scoring path agrees with the training features, heads
round-trip through their file and refuse a tampered one, and similarity search is exact."""

from dataclasses import replace

import numpy as np
import pytest

from embedding_assets.engine import ArtifactError, LexicalEmbedder
from embedding_assets.engine.curation import (
    C_GRID,
    FOLDS,
    CurationHead,
    cross_fitted_head,
    lexical_features,
    linear_head,
    reference_similarity,
    similarity_head,
)
from embedding_assets.engine.features import build_features
from embedding_assets.engine.network import init_layers


@pytest.fixture(scope="module")
def embedder(tokenizer_json, sample_texts) -> LexicalEmbedder:
    texts = sample_texts[:400]
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts], 20_000, 3, 2, 100_000)
    layers = init_layers([feats.vocabulary.size, 32, 16], seed=3)
    return LexicalEmbedder(tokenizer_json, feats.vocabulary, layers, np.ones(16, np.float32) / 4.0, 0.4, first_layer_dtype="float16")


@pytest.fixture(scope="module")
def lexical_head(embedder, sample_texts) -> CurationHead:
    texts = sample_texts[:300]
    y = np.array(["socket" in t.lower() or "connection" in t.lower() for t in texts])
    return linear_head("reference-classifier", "logistic", embedder.version, {"c": 1.0}, embedder.encode(texts), y, lexical_features(embedder, texts))


def test_the_encoder_pass_scores_exactly_what_the_head_was_fitted_on(embedder, lexical_head, sample_texts):
    texts = sample_texts[300:700] + ["", "   ", "zzzzqqq"]
    embeddings, scores = lexical_head.score_texts(embedder, texts)
    features = lexical_features(embedder, texts)
    logits = embedder.encode(texts) @ lexical_head.coef.astype(np.float64) + features @ lexical_head.lexical_coef.astype(np.float64) + lexical_head.intercept
    assert np.allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-5)
    assert np.array_equal(embeddings, embedder.encode(texts))
    # Split across threads and batches, the same answer.
    again = lexical_head.score_texts(embedder, texts)[1]
    single = np.concatenate([lexical_head.score(*embedder.encode([t], threads=1, lexical=lexical_head.lexical_weights)) for t in texts])
    assert np.array_equal(scores, again) and np.allclose(scores, single, atol=1e-6)


def test_a_head_round_trips_and_a_tampered_one_is_refused(lexical_head, embedder, sample_texts):
    head = lexical_head.calibrated(lexical_head.score_texts(embedder, sample_texts[:500])[1], 0.25)
    again = CurationHead.from_bytes(head.to_bytes())
    assert again.version == head.version and again.threshold == head.threshold and again.lexical
    assert np.array_equal(again.score_texts(embedder, sample_texts[:50])[1], head.score_texts(embedder, sample_texts[:50])[1])
    assert head.keep(head.score_texts(embedder, sample_texts[:500])[1]).mean() == pytest.approx(0.25, abs=0.01)
    data = bytearray(head.to_bytes())
    data[-5] ^= 0xFF
    with pytest.raises(ArtifactError, match="content hash does not match"):
        CurationHead.from_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="format is 'embedding_assets.lexical_embedder'"):
        CurationHead.from_bytes(embedder.to_bytes())


def test_reference_similarity_is_the_mean_of_the_exact_top_k(embedder, sample_texts):
    queries, references = embedder.encode(sample_texts[:300]), embedder.encode(sample_texts[300:420])
    cosines = queries @ references.T
    expected = np.sort(cosines, axis=1)[:, -7:].mean(axis=1)
    assert np.allclose(reference_similarity(queries, references, 7), expected, atol=1e-6)
    head = similarity_head(embedder.version, {"top_k": 500}, references)
    assert head.settings["top_k"] == len(references)  # k is capped at the reference count
    assert np.allclose(head.score(queries), cosines.mean(axis=1), atol=1e-6)


def test_a_calibration_keep_fraction_outside_the_unit_interval_is_refused(lexical_head):
    with pytest.raises(ValueError, match=r"keep fraction must be in \(0, 1\]"):
        lexical_head.calibrated(np.array([0.1, 0.2], np.float32), 1.5)


@pytest.fixture(scope="module")
def cross_fitted(embedder, sample_texts):
    """A reference-classifier head as quality_classifier fits it: references (not corpus
    documents) against corpus documents drawn as negatives, cross-fitted."""
    texts = sample_texts[:1200]
    wanted = np.array(["socket" in t.lower() or "connection" in t.lower() or "http" in t.lower() for t in texts])
    refs = [t for t, w in zip(texts[:800], wanted[:800]) if w]
    negatives = list(range(800, 1200))
    train_texts = refs + [texts[i] for i in negatives]
    ids = [f"ref-{i}" for i in range(len(refs))] + [f"doc-{i}" for i in negatives]
    y = np.r_[np.ones(len(refs), bool), np.zeros(len(negatives), bool)]
    in_corpus = np.r_[np.zeros(len(refs), bool), np.ones(len(negatives), bool)]
    head = cross_fitted_head("reference-classifier", "logistic", embedder.version, {"c": 1.0}, embedder.encode(train_texts), y,
                             lexical_features(embedder, train_texts), ids, in_corpus)
    return head, texts


def test_documents_a_head_was_fitted_on_are_scored_by_the_fold_head_that_never_saw_them(embedder, cross_fitted):
    head, texts = cross_fitted
    assert head.cross_fitted and len(head.fitted_keys) == 400 and head.fold_coef.shape == (FOLDS, embedder.dim)
    assert head.settings["chosen_c"] in C_GRID and -1 <= head.settings["view_agreement"] <= 1
    ids = [f"doc-{i}" for i in range(len(texts))]
    embeddings, scores = head.score_documents(embedder, ids, texts)
    full = head.score_texts(embedder, texts)[1]
    folds = head.fitted_fold(ids)
    assert (folds[:800] == -1).all() and (folds[800:] >= 0).all() and set(folds[800:].tolist()) == set(range(FOLDS))
    # Unseen documents: the full head, from the same one pass.
    assert np.array_equal(scores[:800], full[:800]) and np.array_equal(embeddings, embedder.encode(texts))
    # Seen documents: each by its fold's head, which is the full head's form with the fold's weights.
    features = lexical_features(embedder, texts[800:])
    k = folds[800:]
    logits = (np.einsum("nd,nd->n", embeddings[800:].astype(np.float64), head.fold_coef[k].astype(np.float64))
              + np.asarray(features.multiply(head.fold_lexical_coef[k].astype(np.float64)).sum(axis=1)).ravel() + head.fold_intercepts[k])
    assert np.allclose(scores[800:], 1 / (1 + np.exp(-logits)), atol=1e-5)
    # The head saw them as negatives: judged by it, they score lower than by a head that never saw them.
    assert full[800:].mean() < scores[800:].mean()
    # One document at a time, or in any batch, the same scores.
    single = np.concatenate([head.score_documents(embedder, [i], [t])[1] for i, t in zip(ids[790:810], texts[790:810])])
    assert np.allclose(single, scores[790:810], atol=1e-6)


def test_a_cross_fitted_head_round_trips_and_a_bad_fold_table_is_refused(embedder, cross_fitted):
    head, texts = cross_fitted
    ids = [f"doc-{i}" for i in range(len(texts))]
    again = CurationHead.from_bytes(head.to_bytes())
    assert again.version == head.version and again.settings == head.settings
    assert np.array_equal(again.score_documents(embedder, ids, texts)[1], head.score_documents(embedder, ids, texts)[1])
    broken = replace(head, fold_coef=head.fold_coef[:2])
    with pytest.raises(ArtifactError, match="fold_coef"):
        CurationHead.from_bytes(broken.to_bytes())
    # A head written before cross-fitting (no fold tensors) still loads, and scores every document with the full head.
    plain = replace(head, fitted_keys=None, fitted_folds=None, fold_coef=None, fold_lexical_coef=None, fold_intercepts=None)
    loaded = CurationHead.from_bytes(plain.to_bytes())
    assert not loaded.cross_fitted
    assert np.array_equal(loaded.score_documents(embedder, ids, texts)[1], head.score_texts(embedder, texts)[1])


def test_the_students_training_documents_are_kept_as_often_as_the_others(embedder, cross_fitted):
    head, texts = cross_fitted
    ids = [f"doc-{i}" for i in range(len(texts))]
    # Documents 800 and on stand for the student's training documents: shift their scores down,
    # as a student fitted to them shifts them.
    raw = head.score_documents(embedder, ids, texts)[1].astype(np.float64)
    raw[800:] -= 0.2
    sample_ids = ids[800:]
    calibrated, scores = head.calibrated_on_scores(ids, raw, [not t.strip() for t in texts], sample_ids, 0.25)
    kept = calibrated.keep(scores)
    assert kept.mean() == pytest.approx(0.25, abs=0.003)
    assert abs(kept[800:].mean() - kept[:800].mean()) < 0.02
    assert head.calibrated(raw, 0.25).keep(raw)[800:].mean() < 0.15  # without the map, far fewer of them
    # Scoring maps the same documents the same way, one at a time or all at once, and after a round trip.
    again = CurationHead.from_bytes(calibrated.to_bytes())
    assert again.version == calibrated.version
    shifted = raw.astype(np.float32)
    assert np.array_equal(again.mapped(ids, shifted), calibrated.mapped(ids, shifted))
    assert np.array_equal(calibrated.mapped(ids[:800], shifted[:800]), shifted[:800])  # unseen documents are not mapped
    assert np.allclose(calibrated.mapped(ids, shifted), scores.astype(np.float32), atol=1e-6)
    single = np.concatenate([calibrated.mapped([i], shifted[[k]]) for k, i in enumerate(ids[795:805], start=795)])
    assert np.array_equal(single, calibrated.mapped(ids, shifted)[795:805])
