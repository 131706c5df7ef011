"""Training: the ridge start, the loss terms, determinism, and what each knob refuses."""

import numpy as np
import pytest
import scipy.sparse as sp

from embedding_assets.engine.distill import DistillConfig, distill
from embedding_assets.engine.evaluation import cosine_spearman, neighbour_recall
from embedding_assets.engine.features import build_features
from embedding_assets.engine.network import forward, l2_normalize
from embedding_assets.engine.ngrams import PAD, ngram_keys
from embedding_assets.engine.prior import TokenSums, unigram_prior
from embedding_assets.engine.ridge import principal_directions, prior_map, prior_ridge_fit, ridge_fit, ridge_layers
from embedding_assets.engine.tfidf import Vocabulary


@pytest.fixture(scope="module")
def problem(tokenizer_json, sample_texts):
    """Real TF-IDF rows of sample texts and a teacher-like target: a map of their common n-grams, plus noise."""
    texts = sample_texts[:600]
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts], 20_000, 3, 2, 100_000)
    rng = np.random.default_rng(7)
    common = (feats.document_frequency >= 5)[:, None]
    target = feats.tfidf @ (rng.normal(size=(feats.vocabulary.size, 24)) * common).astype(np.float32)
    target = l2_normalize(np.asarray(target + 0.05 * rng.normal(size=target.shape), dtype=np.float32))
    return feats.tfidf, target


def test_ridge_fit_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = sp.random(200, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    y = rng.normal(size=(200, 5)).astype(np.float32)
    dense = x.toarray().astype(np.float64)
    exact = np.linalg.solve(dense.T @ dense + 0.5 * np.eye(300), dense.T @ y)
    assert np.abs(ridge_fit(x, y, 0.5, iterations=500, tolerance=1e-7) - exact).max() < 1e-4


def test_ridge_start_is_exactly_the_reduced_rank_linear_map(problem):
    x, y = problem
    layers = ridge_layers(x, y, [x.shape[1], 16, 16, 24], alpha=1.0, seed=0, iterations=200)
    directions = principal_directions(y, 8)
    linear = l2_normalize(np.asarray(x @ ridge_fit(x, y @ directions, 1.0, 200), dtype=np.float32) @ directions.T)
    assert np.abs(forward(x, layers) - linear).max() < 1e-3


def test_ridge_start_beats_random_and_training_improves_on_it(problem):
    x, y = problem
    train, held = slice(0, 500), slice(500, 600)
    start = DistillConfig(hidden_dims=(32, 32), epochs=0, batch_size=100, seed=1)
    trained = DistillConfig(hidden_dims=(32, 32), epochs=20, batch_size=100, seed=1)
    random_start = DistillConfig(hidden_dims=(32, 32), epochs=0, batch_size=100, seed=1, init="random")

    def spearman(config):
        layers, _ = distill(x[train], y[train], config)
        return cosine_spearman(forward(x[held], layers), y[held], pairs=3000)

    s_random, s_start, s_trained = spearman(random_start), spearman(start), spearman(trained)
    assert s_start > s_random + 0.2
    assert s_trained > s_start


def test_same_seed_and_data_give_the_same_weights(problem):
    x, y = problem
    config = DistillConfig(hidden_dims=(32, 32), epochs=3, batch_size=100, seed=5)
    layers_a, history_a = distill(x, y, config)
    layers_b, history_b = distill(x, y, config)
    assert all(np.array_equal(a, b) for a, b in zip(layers_a, layers_b))
    assert history_a.epoch_loss == history_b.epoch_loss
    layers_c, _ = distill(x, y, DistillConfig(hidden_dims=(32, 32), epochs=3, batch_size=100, seed=6))
    assert not np.array_equal(layers_a[0], layers_c[0])
    assert neighbour_recall(forward(x, layers_a), y) > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"init": "teacher"}, "init must be one of"),
        ({"ridge_alpha": 0.0}, "ridge_alpha must be > 0"),
        ({"cosine_weight": -1.0}, "cosine_weight >= 0"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"hidden_dims": (0,)}, "layer sizes must be >= 1"),
    ],
)
def test_bad_training_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kwargs)


def test_cosine_term_and_ridge_start_need_the_teachers_dim(problem):
    x, y = problem
    with pytest.raises(ValueError, match="cosine term needs the output dim"):
        distill(x, y, DistillConfig(hidden_dims=(16,), output_dim=8, epochs=1, batch_size=100))
    with pytest.raises(ValueError, match="ridge start needs the output dim"):
        distill(x, y, DistillConfig(hidden_dims=(16,), output_dim=8, epochs=1, batch_size=100, cosine_weight=0.0))
    layers, _ = distill(x, y, DistillConfig(hidden_dims=(16,), output_dim=8, epochs=1, batch_size=100, cosine_weight=0.0, init="random"))
    assert layers[-1].shape == (16, 8)


def test_prior_ridge_matches_its_closed_form():
    """argmin |X W - Y|^2 + alpha |W - E M|^2 = (X^T X + alpha I)^-1 (X^T Y + alpha E M)."""
    rng = np.random.default_rng(0)
    x = sp.random(200, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    y = rng.normal(size=(200, 5)).astype(np.float32)
    prior = rng.normal(size=(300, 7)).astype(np.float32)
    dense = x.toarray().astype(np.float64)
    m = np.linalg.solve((dense @ prior).T @ (dense @ prior) + 1e-2 * np.eye(7), (dense @ prior).T @ y)
    assert np.abs(prior_map(x, y, prior) - m).max() < 1e-3
    start = prior @ m
    exact = np.linalg.solve(dense.T @ dense + 0.5 * np.eye(300), dense.T @ y + 0.5 * start)
    assert np.abs(prior_ridge_fit(x, y, prior, 0.5, iterations=500, tolerance=1e-7) - exact).max() < 1e-3


def test_an_ngrams_weight_tends_to_its_prior_as_its_count_drops():
    rng = np.random.default_rng(3)
    n, v, d = 400, 40, 4
    rare = v - 1
    truth = rng.normal(size=(v, d))
    prior = (truth + 0.1 * rng.normal(size=(v, d))).astype(np.float32)
    prior[rare] = truth[rare] + 2.0  # this n-gram's prior is off; the data know better, when they have it
    common = (rng.uniform(size=(n, v)) < 0.2) * rng.uniform(0.5, 1, size=(n, v))
    toward_data = []
    for count in (200, 20, 2, 0):
        x = common.copy()
        x[:, rare] = 0.0
        x[:count, rare] = 1.0
        x = sp.csr_matrix(x, dtype=np.float32)
        y = np.asarray(x @ truth, dtype=np.float32)
        fitted = prior_ridge_fit(x, y, prior, alpha=1.0, iterations=500, tolerance=1e-8)
        start = prior @ prior_map(x, y, prior)
        gap = truth[rare] - start[rare]
        toward_data.append(float((fitted[rare] - start[rare]) @ gap / (gap @ gap)))  # 0: the prior, 1: the truth
    assert toward_data == sorted(toward_data, reverse=True)
    assert toward_data[0] > 0.95 and toward_data[-1] == 0.0  # never seen: exactly the prior


def test_ridge_start_with_a_prior_is_still_exactly_the_linear_map(problem):
    x, y = problem
    prior = np.random.default_rng(2).normal(size=(x.shape[1], y.shape[1])).astype(np.float32)
    layers = ridge_layers(x, y, [x.shape[1], 16, 16, 24], alpha=1.0, seed=0, iterations=200, prior=prior)
    directions = principal_directions(y, 8)
    linear = l2_normalize(np.asarray(x @ prior_ridge_fit(x, y @ directions, prior, 1.0, 200), dtype=np.float32) @ directions.T)
    assert np.abs(forward(x, layers) - linear).max() < 1e-3
    without, _ = distill(x, y, DistillConfig(hidden_dims=(16, 16), epochs=0, batch_size=100, token_prior=False), prior=prior)
    plain = ridge_layers(x, y, [x.shape[1], 16, 16, 24], alpha=1.0, seed=0)
    assert np.array_equal(without[0], plain[0])


def test_token_sums_merge_round_trip_and_give_the_unigram_prior():
    a = TokenSums.of([np.array([5, 2, 5])], [np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])], 2)
    b = TokenSums.of([np.array([2]), np.array([9])], [np.array([[0.0, 4.0]]), np.array([[1.0, 1.0]])], 2)
    merged = TokenSums.from_bytes(TokenSums.merge([a, b], 2).to_bytes())
    assert merged.ids.tolist() == [2, 5, 9] and merged.counts.tolist() == [2, 2, 1]
    assert np.allclose(merged.sums, [[0, 6], [4, 0], [1, 1]])
    ngrams = np.full((4, 2), PAD, dtype=np.uint32)
    ngrams[:, 0] = [2, 5, 7, 2]
    ngrams[3, 1] = 5  # the bigram (2, 5)
    vocabulary = Vocabulary(ngrams[np.argsort(ngram_keys(ngrams))], np.array([1.0, 2.0, 4.0, 8.0], np.float32))
    prior = unigram_prior(vocabulary, merged)
    for row, (ids, idf) in enumerate(zip(vocabulary.ngrams, vocabulary.idf)):
        expected = {2: [0, 3], 5: [2, 0]}.get(int(ids[0]), [0, 0]) if ids[1] == PAD else [0, 0]
        assert np.allclose(prior[row], np.array(expected) / idf), (ids, prior[row])
