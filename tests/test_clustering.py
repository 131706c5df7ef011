"""The clustering engine: k-means, near-duplicates within blocks against all pairs, representatives, balancing."""

import numpy as np
import pytest

from embedding_assets.engine import clustering
from embedding_assets.engine.errors import ArtifactError
from embedding_assets.engine.quantization import quantize_uint8


def planted(n: int = 600, d: int = 48, copies: int = 60, seed: int = 0):
    """Random unit vectors in a few loose topics, and `copies` near-copies of some of them (cosine about 0.98)."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(6, d))
    x = topics[rng.integers(6, size=n)] + rng.normal(scale=1.0, size=(n, d))
    source = rng.choice(n - copies, copies, replace=False)
    x[n - copies :] = x[source] + rng.normal(scale=0.03 * np.linalg.norm(x[source], axis=1, keepdims=True) / np.sqrt(d), size=(copies, d))
    return clustering.unit_rows(x), source, np.arange(n - copies, n)


def all_pairs(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = x @ x.T
    i, j = np.nonzero(np.triu(sims >= threshold, 1))
    return set(zip(i.tolist(), j.tolist()))


def test_kmeans_is_seeded_and_assignment_is_the_nearest_centroid():
    x, _, _ = planted()
    a = clustering.spherical_kmeans(x, 8, seed=3)
    b = clustering.spherical_kmeans(x, 8, seed=3)
    assert np.array_equal(a, b) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    cluster, cosine = clustering.assign_clusters(x, a)
    sims = x @ a.T
    assert np.array_equal(cluster, sims.argmax(axis=1)) and np.allclose(cosine, sims.max(axis=1), atol=1e-5)
    assert cluster.dtype == np.int32 and cosine.dtype == np.float32
    with pytest.raises(ValueError, match="cluster count 700 is larger than the 600 vectors"):
        clustering.spherical_kmeans(x, 700)


def test_pairs_in_one_block_are_exactly_all_pairs_above_the_threshold():
    x, _, _ = planted()
    left, right, cosine = clustering.pairs_above(x, 0.9)
    assert set(zip(left.tolist(), right.tolist())) == all_pairs(x, 0.9)
    assert np.allclose(cosine, np.einsum("ij,ij->i", x[left], x[right]), atol=1e-5)


def test_blocks_are_bounded_and_keep_near_copies_together():
    x, source, copy = planted(n=3000, copies=200)
    blocks = list(clustering.blocks(x, max_block=256))
    assert max(len(b) for b in blocks) <= 256 and len(blocks) >= 12
    assert np.array_equal(np.sort(np.concatenate(blocks)), np.arange(3000))
    block_of = np.empty(3000, dtype=int)
    for i, b in enumerate(blocks):
        block_of[b] = i
    together = np.mean(block_of[source] == block_of[copy])
    assert together > 0.9
    found = clustering.find_duplicates(x, np.arange(3000), 0.9, max_block=256)
    assert found.compared_pairs < 3000 * 2999 / 2 / 8 and found.largest_block <= 256
    everything = clustering.find_duplicates(x, np.arange(3000), 0.9, max_block=4096)
    assert everything.compared_pairs == 3000 * 2999 // 2
    assert (found.representative >= 0).sum() >= 0.9 * (everything.representative >= 0).sum()


def test_identical_vectors_still_split_into_bounded_blocks():
    x = np.ones((1000, 8), dtype=np.float32)
    assert max(len(b) for b in clustering.blocks(clustering.unit_rows(x), max_block=100)) <= 100


def test_representative_is_the_best_ranked_and_members_are_within_the_threshold():
    x, source, copy = planted()
    scores = np.random.default_rng(1).random(len(x))
    ids = [f"doc{i:04d}" for i in range(len(x))]
    rank = clustering.rank_by_score(scores, ids)
    found = clustering.find_duplicates(x, rank, 0.9)
    for s, c in zip(source, copy):
        assert found.representative[s] == found.representative[c] >= 0
        best = s if scores[s] > scores[c] else c
        if found.representative[s] in (s, c):
            assert found.representative[s] == best
    members = np.flatnonzero(found.representative >= 0)
    sims = np.einsum("ij,ij->i", x[members], x[found.representative[members]])
    assert (sims >= 0.9 - 1e-5).all() and np.allclose(sims, found.cosine[members], atol=1e-5)
    heads = np.unique(found.representative[members])
    assert (found.representative[heads] == heads).all()


def test_rank_prefers_high_scores_then_low_ids_and_missing_scores_last():
    rank = clustering.rank_by_score(np.array([0.5, np.nan, 0.9, 0.5]), ["b", "a", "c", "a2"])
    assert list(np.argsort(rank)) == [2, 3, 0, 1]
    assert list(np.argsort(clustering.rank_by_score(None, ["b", "a", "c"]))) == [1, 0, 2]


def test_threshold_outside_the_unit_interval_is_refused():
    x, _, _ = planted(n=50, copies=5)
    for bad in (0.0, -0.2, 1.01):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
            clustering.find_duplicates(x, np.arange(50), bad)


def test_duplicates_by_cluster_on_uint8_codes_finds_what_float_vectors_give():
    x, source, copy = planted()
    codes = quantize_uint8(x, float(np.abs(x).max()))
    cluster, _ = clustering.assign_clusters(x, clustering.spherical_kmeans(x, 4))
    found = clustering.duplicates_by_cluster(codes, cluster, np.arange(len(x)), 0.9)
    pairs_found = np.mean(found.representative[source] == found.representative[copy])
    assert pairs_found > 0.9 and (found.representative[source] >= 0).mean() > 0.9
    assert found.compared_pairs < len(x) * (len(x) - 1) // 2


def test_balanced_keep_caps_clusters_and_temperature_flattens_sizes():
    cluster = np.repeat(np.arange(3), [100, 30, 10]).astype(np.int32)
    eligible = np.ones(140, dtype=bool)
    eligible[::7] = False
    rank = np.arange(140)
    capped = clustering.balanced_keep(cluster, eligible, rank, 3, cap=20)
    assert list(np.bincount(cluster[capped], minlength=3)) == [20, 20, min(10, eligible[cluster == 2].sum())]
    assert not (capped & ~eligible).any()
    first = np.flatnonzero(eligible & (cluster == 0))[:20]
    assert capped[first].all()  # the best ranked are the ones kept
    assert np.array_equal(clustering.balanced_keep(cluster, eligible, rank, 3, temperature=1.0), eligible)
    flat = clustering.balanced_keep(cluster, eligible, rank, 3, temperature=0.0)
    sizes = np.bincount(cluster[flat], minlength=3)
    assert sizes.max() == sizes.min()
    half = clustering.balanced_keep(cluster, eligible, rank, 3, temperature=0.5)
    assert clustering.size_entropy(cluster[eligible], 3) < clustering.size_entropy(cluster[half], 3) < clustering.size_entropy(cluster[flat], 3) + 1e-9


def test_clusters_file_round_trips_and_refuses_tampering():
    centroids = clustering.unit_rows(np.random.default_rng(0).normal(size=(4, 8)))
    data = clustering.clusters_to_bytes(centroids, np.array([3, 4, 5, 6]), {"model_version": "abc", "k": 4})
    config, back, sizes = clustering.clusters_from_bytes(data)
    assert config["model_version"] == "abc" and np.array_equal(back, centroids.astype(np.float32)) and list(sizes) == [3, 4, 5, 6]
    tampered = bytearray(data)
    tampered[-1] ^= 0xFF
    with pytest.raises(ArtifactError, match="content hash does not match"):
        clustering.clusters_from_bytes(bytes(tampered))


def test_a_row_whose_neighbours_are_all_claimed_is_not_a_group_of_one():
    # 0 ~ 1 and 1 ~ 2, but 0 !~ 2: 0 heads {0, 1}; 2 is near no representative and stays alone.
    representative, cosine = clustering.greedy_groups(3, np.array([0, 1]), np.array([1, 2]), np.array([0.95, 0.93], np.float32), np.arange(3))
    assert list(representative) == [0, 0, -1] and cosine[1] == np.float32(0.95)


def test_top_columns_are_what_sets_a_cluster_apart():
    import scipy.sparse as sp

    # Column 0 is in every row; column 1 only in cluster 0, column 2 only in cluster 1.
    rows = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [1, 0, 1]], dtype=np.float32))
    top = clustering.top_columns(rows, np.array([0, 0, 1, 1]), 2, per_cluster=2)
    assert [t.tolist() for t in top] == [[1], [2]]
