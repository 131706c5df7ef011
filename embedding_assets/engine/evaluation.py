"""Held-out fidelity of a student to its teacher, and linear probes on labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr


def neighbour_recall(student: np.ndarray, teacher: np.ndarray, k: int = 10, block: int = 1024) -> float:
    """Mean share of each document's k nearest teacher neighbours found among its k nearest student ones."""
    n = len(student)
    if n <= k:
        raise ValueError(f"need more than k={k} documents, got {n}")
    hits = 0
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        found = []
        for x in (student, teacher):
            sims = x[rows] @ x.T
            sims[np.arange(len(rows)), rows] = -np.inf
            found.append(np.argpartition(-sims, k, axis=1)[:, :k])
        for s, t in zip(*found):
            hits += len(np.intersect1d(s, t, assume_unique=True))
    return hits / (n * k)


def cosine_spearman(student: np.ndarray, teacher: np.ndarray, pairs: int = 20_000, seed: int = 0) -> float:
    """Spearman correlation of student and teacher cosines over random distinct pairs."""
    rng = np.random.default_rng(seed)
    n = len(student)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n
    s = np.einsum("ij,ij->i", student[i], student[j])
    t = np.einsum("ij,ij->i", teacher[i], teacher[j])
    return float(spearmanr(s, t).statistic)


def probe_labels(labels: Sequence[str | None], top: int) -> np.ndarray:
    """Keep the `top` most frequent labels; others (and missing ones) become None. With fewer than
    two distinct labels there is nothing to probe, and every label becomes None."""
    values, counts = np.unique([lab for lab in labels if lab is not None], return_counts=True)
    if len(values) < 2:
        return np.array([None] * len(labels), dtype=object)
    kept = set(values[np.lexsort((values, -counts))][:top])
    return np.array([lab if lab in kept else None for lab in labels], dtype=object)


def probe_accuracy(train_x, train_y: np.ndarray, test_x, test_y: np.ndarray, seed: int = 0) -> float:
    """Accuracy of a logistic regression fitted on the train split, on the test split."""
    from sklearn.linear_model import LogisticRegression

    train_mask = np.array([y is not None for y in train_y])
    test_mask = np.array([y is not None for y in test_y])
    model = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    model.fit(train_x[train_mask], train_y[train_mask].astype(str))
    return float(np.mean(model.predict(test_x[test_mask]) == test_y[test_mask].astype(str)))


def tfidf_probe_accuracy(train_texts, train_y, test_texts, test_y, seed: int = 0) -> float:
    """The same probe on plain scikit-learn word TF-IDF: the baseline a student must earn its keep against."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
    return probe_accuracy(vectorizer.fit_transform(train_texts), train_y, vectorizer.transform(test_texts), test_y, seed)


def hybrid_probe_accuracy(train_x: np.ndarray, train_texts, train_y, test_x: np.ndarray, test_texts, test_y, seed: int = 0) -> float:
    """The probe on embeddings and plain word TF-IDF side by side: dense semantics plus exact rare terms."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
    train = sp.hstack([sp.csr_matrix(train_x), vectorizer.fit_transform(train_texts)]).tocsr()
    test = sp.hstack([sp.csr_matrix(test_x), vectorizer.transform(test_texts)]).tocsr()
    return probe_accuracy(train, train_y, test, test_y, seed)
