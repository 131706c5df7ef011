"""Interoperation with luxical's own `.npz` embedder files, checked against luxical itself."""

import json

import numpy as np
import pyarrow as pa
import pytest

from embedding_assets.engine import ArtifactError, LexicalEmbedder
from embedding_assets.engine.features import build_features
from embedding_assets.engine.network import init_layers

luxical_embedder = pytest.importorskip("luxical.embedder")
from luxical.ngrams import space_saving_ngram_summary  # noqa: E402
from luxical.tokenization import ArrowTokenizer  # noqa: E402


def plain_tokenizer_json(tokenizer_json: str) -> str:
    spec = json.loads(tokenizer_json)
    spec["truncation"] = None
    spec["padding"] = None
    return json.dumps(spec)


@pytest.fixture(scope="module")
def luxical_model(tokenizer_json, sample_texts, tmp_path_factory):
    """A small luxical model built, randomly initialised and saved with luxical's own API."""
    tokenizer = ArrowTokenizer(plain_tokenizer_json(tokenizer_json))
    train = sample_texts[:400]
    tokens = tokenizer.tokenize(pa.array(train), add_special_tokens=False).to_numpy(zero_copy_only=False)
    summary = space_saving_ngram_summary(tokens, max_ngram_length=3, num_top_items=20_000)
    model = luxical_embedder.initialize_embedder_from_ngram_summary(
        summary, tokenizer, sparse_to_dense_embedder_dims=[48, 32, 24], min_ngram_count_multiple=1.0, max_vocabulary_size=5_000
    )
    path = tmp_path_factory.mktemp("luxical") / "model.npz"
    model.save(path)
    return path, luxical_embedder.Embedder.load(path)


@pytest.fixture(scope="module")
def our_model(tokenizer_json, sample_texts):
    texts = sample_texts[:400]
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts], 20_000, 3, 2, 100_000)
    layers = init_layers([feats.vocabulary.size, 32, 16], seed=3)
    return LexicalEmbedder(tokenizer_json, feats.vocabulary, layers, np.ones(16, np.float32) / 4.0, 0.4)


def probe_texts(sample_texts):
    return sample_texts[400:700] + ["", "zzzz qqqq", sample_texts[0] * 20, "Socket SEND recv() ÄÖ 東京"]


def test_from_luxical_encodes_like_luxical(luxical_model, sample_texts):
    path, reference = luxical_model
    texts = probe_texts(sample_texts)
    ours = LexicalEmbedder.from_luxical(path)
    expected = reference(texts)
    got = ours.encode(texts)
    assert ours.dims == [reference.recognized_ngrams.shape[0], 48, 32, 24]
    assert np.abs(got - expected).max() < 1e-5
    # luxical's IDF (a pseudo-IDF from n-gram counts) comes through unchanged in TF-IDF terms.
    lux_tfidf = reference.tfidf_from_bow(reference.bow_from_texts(texts)).toarray()
    our_tfidf = ours.tfidf(texts).toarray()
    assert np.allclose(np.sort(lux_tfidf, axis=1), np.sort(our_tfidf, axis=1), atol=1e-6)
    assert np.count_nonzero(np.abs(got).sum(axis=1)) == len(texts) - 1  # only "" has no n-gram


def test_to_luxical_round_trip(our_model, luxical_model, sample_texts, tmp_path):
    texts = probe_texts(sample_texts)
    exported = tmp_path / "ours.npz"
    our_model.to_luxical(exported)
    theirs = luxical_embedder.Embedder.load(exported)
    known = np.abs(our_model.tfidf(texts)).sum(axis=1).A1 > 0
    assert np.abs(theirs(texts)[known] - our_model.encode(texts)[known]).max() < 1e-5
    back = LexicalEmbedder.from_luxical(exported)
    assert np.array_equal(back.vocabulary.ngrams, our_model.vocabulary.ngrams)
    assert np.abs(back.encode(texts)[known] - our_model.encode(texts)[known]).max() < 1e-6

    path, _ = luxical_model
    again = tmp_path / "again.npz"
    LexicalEmbedder.from_luxical(path).to_luxical(again)
    assert np.abs(luxical_embedder.Embedder.load(again)(texts) - LexicalEmbedder.from_luxical(path).encode(texts)).max() < 1e-5


def test_from_luxical_rejects_pickles_and_broken_files(luxical_model, tmp_path):
    path, _ = luxical_model
    with np.load(path) as npz:
        arrays = dict(npz)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**arrays, "version": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ArtifactError):
        LexicalEmbedder.from_luxical(pickled)
    broken = tmp_path / "broken.npz"
    np.savez(broken, **{k: v for k, v in arrays.items() if k != "idf_values"})
    with pytest.raises(ArtifactError, match="idf_values"):
        LexicalEmbedder.from_luxical(broken)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError):
        LexicalEmbedder.from_luxical(tmp_path / "junk.npz")


def test_to_luxical_refuses_a_network_luxical_cannot_run(our_model, tmp_path):
    single = LexicalEmbedder(our_model.tokenizer_json, our_model.vocabulary, [our_model.layers[0]], np.ones(32, np.float32) / np.sqrt(32), 0.4)
    with pytest.raises(ArtifactError, match="at least two layers"):
        single.to_luxical(tmp_path / "single.npz")
    assert not (tmp_path / "single.npz").exists()
