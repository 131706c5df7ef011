"""The sparse-to-dense student network, inference side (numpy).

    tf-idf (sparse) -> W0 -> ReLU -> L2 norm -> [W_i -> ReLU -> L2 norm]* -> W_last -> L2 norm

Weights are stored as (in, out) matrices, so the first layer's row j is the vector that
n-gram j contributes. The training module (`distill.py`) computes the same function in torch; this module imports
no torch, so that encoding does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def forward(tfidf: sp.csr_matrix, layers: Sequence[np.ndarray]) -> np.ndarray:
    """Embeddings of TF-IDF rows; rows the network maps to zero stay zero."""
    return finish(np.asarray(tfidf @ layers[0], dtype=np.float32), layers[1:])


def finish(hidden: np.ndarray, layers: Sequence[np.ndarray]) -> np.ndarray:
    """The network after its first layer, given that layer's output (modified in place)."""
    for layer in layers:
        np.maximum(hidden, 0, out=hidden)
        l2_normalize(hidden)
        hidden = hidden @ layer
    return l2_normalize(hidden)


def init_layers(dims: Sequence[int], seed: int) -> list[np.ndarray]:
    """Kaiming-uniform weights for a network with the given layer sizes, input first."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        bound = np.sqrt(6.0 / fan_in)
        layers.append(rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32))
    return layers
