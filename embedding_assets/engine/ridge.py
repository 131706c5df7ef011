"""A closed-form start for the student: the reduced-rank ridge map from TF-IDF to the teacher.

At a budget of tens of thousands of documents, a linear map from TF-IDF to the teacher
vectors, fitted in one solve, already beats a randomly initialised student trained for a few
hundred steps. The student network can compute such a map exactly, so distillation starts
from it instead of from noise:

- the teacher vectors are projected on their top r principal directions P (r = hidden / 2);
- A = argmin |X A - Y P|^2 + alpha |A|^2, solved by conjugate gradients;
- each of the r directions z = x A travels through the hidden layers as a ReLU pair
  (relu(z), relu(-z)), whose difference is z again, and the last layer maps back with P^T.

The L2 norms between layers scale each row by one number, which the final normalisation
removes, so the network's output is exactly normalise(x A P^T).

Given a prior E for the first layer (`prior.py`: [V, d], in the teacher's space), the ridge
shrinks toward it instead of toward zero: A = A0 + argmin |X A' - (Y P - X A0)|^2 + alpha |A'|^2,
with A0 = E M P and M the small [d, d] least-squares map from X E to Y. N-grams the data says
little about keep (roughly) their prior; frequent ones follow the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from embedding_assets.engine.network import init_layers


def bag_sum(indptr: np.ndarray, columns: np.ndarray, weights: np.ndarray, first_layer: torch.Tensor) -> np.ndarray:
    """Rows of `first_layer` summed per document, each scaled by its weight: CSR @ dense.

    torch's EmbeddingBag kernel is multi-threaded and vectorised; scipy's CSR product runs on
    one core and measured about 4x slower here.
    """
    return torch.nn.functional.embedding_bag(
        torch.from_numpy(columns.astype(np.int64, copy=False)),
        first_layer,
        torch.from_numpy(indptr[:-1].astype(np.int64, copy=False)),
        mode="sum",
        per_sample_weights=torch.from_numpy(weights.astype(np.float32, copy=False)),
    ).numpy()


def ridge_fit(x: sp.csr_matrix, y: np.ndarray, alpha: float, iterations: int = 60, tolerance: float = 1e-4) -> np.ndarray:
    """argmin_W |X W - Y|^2 + alpha |W|^2, by Jacobi-preconditioned conjugate gradients, one per column of Y.

    Never forms X^T X; each iteration costs two sparse products with a [V, k] dense block.
    """
    if alpha <= 0:
        raise ValueError(f"ridge alpha must be > 0, got {alpha}")
    x = sp.csr_matrix(x, dtype=np.float32)
    xt = x.T.tocsr()
    # int64 columns once, so bag_sum's cast is free on every iteration.
    rows = (x.indptr, x.indices.astype(np.int64), x.data)
    cols = (xt.indptr, xt.indices.astype(np.int64), xt.data)

    def normal(w: np.ndarray) -> np.ndarray:
        return bag_sum(*cols, torch.from_numpy(bag_sum(*rows, torch.from_numpy(w)))) + np.float32(alpha) * w

    diagonal = (np.asarray(x.multiply(x).sum(axis=0), dtype=np.float32).ravel() + np.float32(alpha))[:, None]
    b = bag_sum(*cols, torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)))
    w = np.zeros_like(b)
    residual = b.copy()
    z = residual / diagonal
    direction = z.copy()
    rz = (residual * z).sum(0)
    b_norm = np.maximum(np.linalg.norm(b, axis=0), 1e-12)
    for _ in range(iterations):
        step_in = normal(direction)
        step = rz / np.maximum((direction * step_in).sum(0), 1e-30)
        w += step * direction
        residual -= step * step_in
        if float((np.linalg.norm(residual, axis=0) / b_norm).max()) < tolerance:
            break
        z = residual / diagonal
        rz_next = (residual * z).sum(0)
        direction = z + (rz_next / np.maximum(rz, 1e-30)) * direction
        rz = rz_next
    return w


def principal_directions(y: np.ndarray, rank: int) -> np.ndarray:
    """[d, rank] top right-singular vectors of Y (uncentred: the map has no bias)."""
    _, _, vt = np.linalg.svd(np.asarray(y, dtype=np.float64), full_matrices=False)
    return vt[:rank].T.astype(np.float32)


def prior_map(x: sp.csr_matrix, y: np.ndarray, prior: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """[d, k] M = argmin |X E M - Y|^2 + alpha |M|^2: the prior E [V, d], turned and scaled to fit the targets Y [n, k]."""
    x = sp.csr_matrix(x, dtype=np.float32)
    xe = bag_sum(x.indptr, x.indices, x.data, torch.from_numpy(np.ascontiguousarray(prior, dtype=np.float32))).astype(np.float64)
    gram = xe.T @ xe + alpha * np.eye(xe.shape[1])
    return np.linalg.solve(gram, xe.T @ np.asarray(y, dtype=np.float64)).astype(np.float32)


def prior_ridge_fit(x: sp.csr_matrix, y: np.ndarray, prior: np.ndarray, alpha: float, iterations: int = 60, tolerance: float = 1e-4) -> np.ndarray:
    """argmin_W |X W - Y|^2 + alpha |W - W0|^2 with W0 = E M, the prior fitted to Y by `prior_map`."""
    start = prior @ prior_map(x, y, prior)
    return start + ridge_fit(x, np.asarray(y, dtype=np.float32) - np.asarray(x @ start, dtype=np.float32), alpha, iterations, tolerance)


def ridge_layers(
    x: sp.csr_matrix, y: np.ndarray, dims: Sequence[int], alpha: float, seed: int, iterations: int = 60, prior: np.ndarray | None = None
) -> list[np.ndarray]:
    """Layers of the given dims whose network computes normalise(x A P^T); extra units get small random weights."""
    if dims[-1] != y.shape[1]:
        raise ValueError(f"a ridge start needs the output dim to equal the teacher's ({y.shape[1]}), got {dims[-1]}")
    hidden = dims[1:-1]
    if not hidden:
        raise ValueError("a ridge start needs at least one hidden layer")
    rank = min(min(hidden) // 2, y.shape[1])
    if rank < 1:
        raise ValueError(f"hidden layers of {list(hidden)} are too small for a ridge start")
    directions = principal_directions(y, rank)
    if prior is None:
        a = ridge_fit(x, y @ directions, alpha, iterations)
    else:
        if prior.shape != (x.shape[1], y.shape[1]):
            raise ValueError(f"the prior has shape {prior.shape}, expected {(x.shape[1], y.shape[1])}")
        a = prior_ridge_fit(x, y @ directions, prior, alpha, iterations)
    # Spare units start small and random, so gradients can still reach them.
    layers = [w * np.float32(0.01) for w in init_layers(dims, seed)]
    identity = np.eye(rank, dtype=np.float32)
    layers[0][:, :rank], layers[0][:, rank : 2 * rank] = a, -a
    for layer in layers[1:-1]:
        layer[:rank, :rank], layer[rank : 2 * rank, :rank] = identity, -identity
        layer[:rank, rank : 2 * rank], layer[rank : 2 * rank, rank : 2 * rank] = -identity, identity
    layers[-1][:rank], layers[-1][rank : 2 * rank] = directions.T, -directions.T
    return layers
