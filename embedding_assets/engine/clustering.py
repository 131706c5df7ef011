"""Clusters of embeddings, semantic near-duplicates within them, and cluster-balanced keeping.

Plain numpy and faiss. Near-duplicates are searched only inside blocks: a cluster larger than
`max_block` is split again by k-means (at most 16 ways per level), so the pairs compared grow
with the corpus times the block size, never with the square of the corpus.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from embedding_assets.engine import artifact

CLUSTERS_FORMAT = "embedding_assets.clusters"

def _faiss():
    import faiss

    return faiss


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """k unit centroids of the unit rows of `vectors`; the same input and seed give the same centroids."""
    if k < 1:
        raise ValueError(f"cluster count must be >= 1, got {k}")
    if k > len(vectors):
        raise ValueError(f"cluster count {k} is larger than the {len(vectors)} vectors to cluster")
    faiss = _faiss()
    x = unit_rows(vectors)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, spherical=True, max_points_per_centroid=1024, min_points_per_centroid=1)
    kmeans.train(x)
    return unit_rows(kmeans.centroids)


def assign_clusters(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid (int32) and its cosine to it (float32)."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(unit_rows(centroids))
    cosine, nearest = index.search(unit_rows(vectors), 1)
    return nearest[:, 0].astype(np.int32), cosine[:, 0].astype(np.float32)


def typical_rows(cluster: np.ndarray, cosine: np.ndarray, k: int, per_cluster: int = 3) -> list[np.ndarray]:
    """For each cluster, the rows closest to its centroid, closest first."""
    order = np.lexsort((-cosine, cluster))
    starts = np.searchsorted(cluster[order], np.arange(k + 1))
    return [order[starts[c] : min(starts[c] + per_cluster, starts[c + 1])] for c in range(k)]


def top_columns(rows, cluster: np.ndarray, k: int, per_cluster: int = 5) -> list[np.ndarray]:
    """For each cluster, the columns of a sparse matrix (e.g. TF-IDF) whose mean in the cluster
    most exceeds their mean over all rows: what sets the cluster apart, not what every row has."""
    import scipy.sparse as sp

    membership = sp.csr_matrix((np.ones(len(cluster), dtype=np.float32), (cluster, np.arange(len(cluster)))), shape=(k, len(cluster)))
    sizes = np.maximum(np.bincount(cluster, minlength=k), 1)[:, None]
    sums = (membership @ rows).toarray()
    lift = sums / sizes - sums.sum(axis=0) / len(cluster)
    tops = np.argsort(-lift, axis=1, kind="stable")[:, :per_cluster]
    return [top[lift[c, top] > 0] for c, top in enumerate(tops)]


def size_entropy(cluster: np.ndarray, k: int) -> float:
    """Entropy (bits) of the cluster sizes of a set of rows: log2(k) when every cluster is equal."""
    sizes = np.bincount(cluster, minlength=k).astype(np.float64)
    p = sizes[sizes > 0] / max(sizes.sum(), 1)
    return float(-(p * np.log2(p)).sum())


def blocks(vectors: np.ndarray, max_block: int = 4096, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of `vectors` (unit rows) in blocks of at most `max_block`, neighbours kept together."""
    pending = [np.arange(len(vectors))]
    faiss = _faiss()
    while pending:
        rows = pending.pop()
        if len(rows) <= max_block:
            if len(rows):
                yield rows
            continue
        # Parts aimed at half the cap: k-means parts are uneven, and this keeps most of them under it
        # without another level of splitting.
        parts = min(16, math.ceil(2 * len(rows) / max_block))
        x = vectors[rows]
        kmeans = faiss.Kmeans(x.shape[1], parts, niter=10, seed=seed, spherical=True, max_points_per_centroid=256, min_points_per_centroid=1)
        kmeans.train(x)
        _, nearest = kmeans.index.search(x, 1)
        nearest = nearest[:, 0]
        if np.bincount(nearest, minlength=parts).max() == len(rows):
            # k-means could not separate them (e.g. all equal): halve by position so the loop ends.
            nearest = (np.arange(len(rows)) >= len(rows) // 2).astype(np.int64)
        pending.extend(rows[nearest == p] for p in range(parts - 1, -1, -1))


def pairs_above(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of unit rows with cosine >= threshold: exact, by a flat inner-product range search."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    # The range search keeps scores strictly above its radius.
    lims, cosine, neighbours = index.range_search(vectors, float(np.nextafter(np.float32(threshold), np.float32(-1))))
    left = np.repeat(np.arange(len(vectors)), np.diff(lims).astype(np.int64))
    upper = neighbours > left
    return left[upper], neighbours[upper], cosine[upper]


def greedy_groups(n: int, left: np.ndarray, right: np.ndarray, cosine: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Representatives from pairs: in rank order (0 first), a row not yet claimed that has
    unclaimed neighbours becomes a representative and claims them. Returns, per row, its representative
    (-1 when it has no near-duplicate; itself for a representative) and its cosine to it."""
    import scipy.sparse as sp

    representative = np.full(n, -1, dtype=np.int64)
    to_representative = np.zeros(n, dtype=np.float32)
    if len(left) == 0:
        return representative, to_representative
    graph = sp.coo_matrix((np.concatenate([cosine, cosine]), (np.concatenate([left, right]), np.concatenate([right, left]))), shape=(n, n)).tocsr()
    in_pair = np.flatnonzero(np.diff(graph.indptr))
    for row in in_pair[np.argsort(rank[in_pair], kind="stable")]:
        if representative[row] != -1:
            continue
        start, end = graph.indptr[row], graph.indptr[row + 1]
        neighbours, similarity = graph.indices[start:end], graph.data[start:end]
        free = representative[neighbours] == -1
        if not free.any():
            # Its near-duplicates all belong to other groups: it is near no representative, so it stays alone.
            continue
        representative[row] = row
        to_representative[row] = 1.0
        representative[neighbours[free]] = row
        to_representative[neighbours[free]] = similarity[free]
    return representative, to_representative


@dataclass
class Duplicates:
    """Per row: its representative (-1: none) and cosine to it; and the pairs compared."""

    representative: np.ndarray
    cosine: np.ndarray
    compared_pairs: int
    largest_block: int


def find_duplicates(vectors: np.ndarray, rank: np.ndarray, threshold: float, max_block: int = 4096, seed: int = 0) -> Duplicates:
    """Near-duplicate groups of `vectors`, searched block by block; `rank` orders the rows for
    representative choice (lower is preferred; it must be a total order)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    x = unit_rows(vectors)
    representative = np.full(len(x), -1, dtype=np.int64)
    cosine = np.zeros(len(x), dtype=np.float32)
    compared = largest = 0
    for rows in blocks(x, max_block, seed):
        if len(rows) < 2:
            continue
        compared += len(rows) * (len(rows) - 1) // 2
        largest = max(largest, len(rows))
        left, right, similarity = pairs_above(x[rows], threshold)
        local_rep, local_cos = greedy_groups(len(rows), left, right, similarity, rank[rows])
        grouped = local_rep >= 0
        representative[rows[grouped]] = rows[local_rep[grouped]]
        cosine[rows[grouped]] = local_cos[grouped]
    return Duplicates(representative, cosine, compared, largest)


def rank_by_score(scores: np.ndarray | None, ids: list[str] | np.ndarray) -> np.ndarray:
    """0 for the preferred row: highest score first (a missing score counts as no score), then lowest id."""
    ids = np.asarray(ids, dtype=object)
    keys = [ids]
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        keys.append(np.where(np.isnan(s), np.inf, -s))
    order = np.lexsort(keys)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def balanced_keep(cluster: np.ndarray, eligible: np.ndarray, rank: np.ndarray, k: int, cap: int | None = None, temperature: float | None = None) -> np.ndarray:
    """Of the eligible rows, those kept once each cluster is limited to its quota, best ranked first.

    The quota is at most `cap` rows per cluster and, with a temperature t in [0, 1], shares of the
    kept set proportional to size**t, as large as the clusters allow without repeating a row:
    t = 1 keeps every eligible row, t = 0 keeps the same number from every cluster.
    """
    keep = eligible.copy()
    sizes = np.bincount(cluster[eligible], minlength=k)
    quota = sizes.copy()
    if temperature is not None:
        # Shares proportional to size**t, scaled as far as the smallest cluster allows (no upsampling).
        present = sizes > 0
        if not present.any():
            return keep
        share = np.where(present, sizes.astype(np.float64) ** temperature, 0.0)
        share /= share.sum()
        total = (sizes[present] / share[present]).min()
        quota = np.minimum(sizes, np.floor(total * share + 1e-9).astype(np.int64))
    if cap is not None:
        quota = np.minimum(quota, cap)
    rows = np.flatnonzero(eligible)
    order = rows[np.lexsort((rank[rows], cluster[rows]))]
    starts = np.searchsorted(cluster[order], np.arange(k))
    position = np.arange(len(order)) - starts[cluster[order]]
    keep[order[position >= quota[cluster[order]]]] = False
    return keep


def centred(codes: np.ndarray) -> np.ndarray:
    """uint8 codes (luxical's symmetric quantisation) as float vectors with the same cosines."""
    return codes.astype(np.float32) - np.float32(127.5)


def duplicates_by_cluster(
    codes: np.ndarray, cluster: np.ndarray, rank: np.ndarray, threshold: float, max_block: int = 4096, seed: int = 0
) -> Duplicates:
    """`find_duplicates` inside each cluster of uint8 embeddings; only one cluster is widened to
    float32 at a time, so memory is the codes plus the largest cluster."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    representative = np.full(len(codes), -1, dtype=np.int64)
    cosine = np.zeros(len(codes), dtype=np.float32)
    compared = largest = 0
    order = np.argsort(cluster, kind="stable")
    bounds = np.flatnonzero(np.diff(cluster[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows) < 2:
            continue
        found = find_duplicates(centred(codes[rows]), rank[rows], threshold, max_block, seed)
        grouped = found.representative >= 0
        representative[rows[grouped]] = rows[found.representative[grouped]]
        cosine[rows[grouped]] = found.cosine[grouped]
        compared += found.compared_pairs
        largest = max(largest, found.largest_block)
    return Duplicates(representative, cosine, compared, largest)


def clusters_to_bytes(centroids: np.ndarray, sample_sizes: np.ndarray, config: dict) -> bytes:
    """Centroids and the sample's cluster sizes as one safetensors file, `config` (model version,
    k, seed...) in its header."""
    tensors = {"centroids": centroids.astype(np.float32), "sample_sizes": sample_sizes.astype(np.int64)}
    return artifact.dump(config, tensors, fmt=CLUSTERS_FORMAT)


def clusters_from_bytes(data: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """(config, centroids, sample sizes), after the format, hash and shape checks."""
    config, tensors = artifact.parse(data, fmt=CLUSTERS_FORMAT)
    centroids = artifact.require(tensors, "centroids", (None, None), np.float32)
    sizes = artifact.require(tensors, "sample_sizes", (centroids.shape[0],), np.int64)
    return config, centroids, sizes
