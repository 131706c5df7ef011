"""Curation heads: what a team wants more of, learned from examples and applied to every document.

Modes (`MODES`):
- `labels`: logistic regression; positives are documents whose label is one of `positive_labels`.
- `reference-classifier`: logistic regression of a reference set against corpus documents (or a
  negative reference set), as DCLM trains its quality classifier.
- `reference-similarity`: no training; a document's score is the mean of its top-k cosines to
  the reference embeddings.
- `annotations`: a label (classification) or a score (ridge regression) given to some corpus
  documents by a person or a judge model.

A linear head reads the student embedding and, when `lexical` is on, the student's own n-gram
TF-IDF row as well (L2-normalised, as the network's input). Both come from one pass of the
encoder's first-layer kernel, so the lexical term costs no second tokenisation or lookup.
Measured in bench.curation: on technical text the exact n-grams carry much of the signal.

The keep rule is one threshold, calibrated once on corpus documents the head did not train on,
so that a target share of them is kept. A head is one safetensors file (arrays plus a JSON
header), never pickled; its version is the hash of its content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from embedding_assets.engine import artifact
from embedding_assets.engine.errors import ArtifactError

if TYPE_CHECKING:
    from embedding_assets.engine.embedder import LexicalEmbedder

MODES = ("labels", "reference-classifier", "reference-similarity", "annotations")
NONE = "none"  # no curation configured: documents are embedded, not scored
KINDS = ("logistic", "ridge", "similarity", NONE)
HEAD_FORMAT = "embedding_assets.curation_head"
# Exact search holds a block of queries x references cosines at once; past this many references
# an index answers the top-k instead.
EXACT_SEARCH_MAX_REFERENCES = 50_000
_QUERY_BLOCK = 4096


@dataclass(frozen=True)
class CurationHead:
    """A fitted head and its keep rule.

    `kind` is how a score is made: `logistic` (a probability), `ridge` (a predicted annotation
    score) or `similarity` (mean top-k cosine to `references`). `score_range` bounds the scores.
    """

    mode: str
    kind: str
    model_version: str
    settings: dict
    coef: np.ndarray | None = None  # [dim]
    lexical_coef: np.ndarray | None = None  # [vocabulary]
    intercept: float = 0.0
    references: np.ndarray | None = None  # [n, dim], unit rows
    threshold: float = math.inf
    target_keep_fraction: float = 0.2
    score_range: tuple[float, float] = (0.0, 1.0)
    evaluation: dict = field(default_factory=dict)

    @property
    def lexical(self) -> bool:
        return self.lexical_coef is not None

    @property
    def scores(self) -> bool:
        return self.kind != NONE

    def score(self, embeddings: np.ndarray, lexical_products: np.ndarray | None = None) -> np.ndarray:
        """Scores of documents from their embeddings (and, for a lexical head, `lexical_products`
        from `encode(..., lexical=head.lexical_weights)`), float32; NaN with no curation."""
        if self.kind == NONE:
            return np.full(len(embeddings), np.nan, dtype=np.float32)
        if self.kind == "similarity":
            return reference_similarity(embeddings, self.references, int(self.settings["top_k"]))
        if embeddings.ndim != 2 or embeddings.shape[1] != len(self.coef):
            raise ValueError(f"embeddings have shape {embeddings.shape}, the head expects (n, {len(self.coef)})")
        logits = embeddings.astype(np.float64) @ self.coef.astype(np.float64) + self.intercept
        if self.lexical:
            if lexical_products is None:
                raise ValueError("this head reads lexical features too; score it with score_texts")
            logits += lexical_products[:, 0]
        if self.kind == "ridge":
            return np.clip(logits, *self.score_range).astype(np.float32)
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)

    def score_texts(self, embedder: LexicalEmbedder, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and scores of texts, from one encoder pass."""
        if self.lexical:
            embeddings, products = embedder.encode(texts, lexical=self.lexical_weights)
            return embeddings, self.score(embeddings, products)
        embeddings = embedder.encode(texts)
        return embeddings, self.score(embeddings)

    @property
    def lexical_weights(self) -> np.ndarray:
        """The lexical coefficients as the [vocabulary, 1] matrix the encoder multiplies TF-IDF rows by."""
        return np.ascontiguousarray(self.lexical_coef, dtype=np.float32)[:, None]

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold

    def calibrated(self, scores: np.ndarray, target_keep_fraction: float) -> CurationHead:
        """The head with its threshold set so `target_keep_fraction` of `scores` is kept."""
        if not 0 < target_keep_fraction <= 1:
            raise ValueError(f"keep fraction must be in (0, 1], got {target_keep_fraction}")
        if len(scores) == 0:
            raise ValueError("no documents to calibrate the keep threshold on")
        threshold = float(np.quantile(scores, 1.0 - target_keep_fraction, method="higher"))
        return replace(self, threshold=threshold, target_keep_fraction=target_keep_fraction)

    def _config(self) -> dict:
        return {
            "mode": self.mode,
            "kind": self.kind,
            "model_version": self.model_version,
            "settings": self.settings,
            "intercept": self.intercept,
            "threshold": self.threshold,
            "target_keep_fraction": self.target_keep_fraction,
            "score_range": list(self.score_range),
            "evaluation": self.evaluation,
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        named = {"coef": self.coef, "lexical_coef": self.lexical_coef, "references": self.references}
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in named.items() if v is not None}

    @property
    def version(self) -> str:
        return artifact.content_hash(self._config(), self._tensors())[:16]

    def to_bytes(self) -> bytes:
        return artifact.dump(self._config(), self._tensors(), HEAD_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes) -> CurationHead:
        config, tensors = artifact.parse(data, HEAD_FORMAT)
        try:
            mode, kind = config["mode"], config["kind"]
            head = cls(
                mode=mode,
                kind=kind,
                model_version=str(config["model_version"]),
                settings=dict(config["settings"]),
                coef=tensors.get("coef"),
                lexical_coef=tensors.get("lexical_coef"),
                intercept=float(config["intercept"]),
                references=tensors.get("references"),
                threshold=float(config["threshold"]),
                target_keep_fraction=float(config["target_keep_fraction"]),
                score_range=tuple(float(x) for x in config["score_range"]),
                evaluation=dict(config.get("evaluation") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"curation head config is missing or has a bad value for {exc}") from exc
        if mode not in (*MODES, NONE) or kind not in KINDS:
            raise ArtifactError(f"unknown curation mode {mode!r} or head kind {kind!r}")
        needed = {"similarity": ("references",), NONE: ()}.get(kind, ("coef",))
        for name in needed:
            artifact.require(tensors, name, (None,) * (2 if name == "references" else 1), np.float32)
        if kind == "similarity" and "top_k" not in head.settings:
            raise ArtifactError("a similarity head needs a top_k setting")
        return head


SCORE_MEANINGS = {
    "logistic": "the probability that a document is one of the wanted kind",
    "ridge": "the predicted annotation score",
    "similarity": "the mean cosine of a document to its top-k nearest references",
}


def head_card(head: CurationHead) -> str:
    """A markdown card for the curation head: what it learned from, how it scores, how well it ranks."""
    if not head.scores:
        return (
            f"# Curation head `{head.version}`: none\n\nNo curation is configured, so documents are embedded "
            f"(student `{head.model_version}`) and not scored. Set a reference set, annotations or positive labels.\n"
        )
    features = "the student embedding and its n-gram TF-IDF features" if head.lexical else "the student embedding"
    how = f"{len(head.references):,} reference embeddings" if head.kind == "similarity" else f"{head.kind} regression on {features}"
    lines = [
        f"# Curation head `{head.version}`: {head.mode}",
        "",
        f"- student model `{head.model_version}`; {how}",
        f"- score: {SCORE_MEANINGS[head.kind]}, in [{head.score_range[0]:g}, {head.score_range[1]:g}]",
        f"- keep: score >= {head.threshold:.6g}, calibrated to keep {head.target_keep_fraction:g} of held-out sample documents; empty texts are never kept",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(head.settings.items())],
        "",
        "| held-out measure | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(head.evaluation.items())],
    ]
    return "\n".join(lines) + "\n"


def no_head(model_version: str) -> CurationHead:
    """What scoring uses when no curation is configured: every document embedded, none scored."""
    return CurationHead(mode=NONE, kind=NONE, model_version=model_version, settings={"mode": NONE}, score_range=(0.0, 0.0))


def lexical_features(embedder: LexicalEmbedder, texts: Sequence[str]) -> sp.csr_matrix:
    """Each text's L2-normalised TF-IDF row over the student's vocabulary (CSR): the lexical head's input."""
    return embedder.tfidf(texts)


def fit_logistic(x, y: np.ndarray, c: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression on dense or sparse features: (coef, intercept)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        raise ValueError(f"a classifier needs positive and negative documents; got {int(y.sum())} positive of {len(y)}")
    model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced", random_state=seed)
    model.fit(x, y.astype(int))
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def fit_ridge(x, y: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Ridge regression of annotation scores on dense or sparse features: (coef, intercept)."""
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha, random_state=0)
    model.fit(x, np.asarray(y, dtype=np.float64))
    return np.asarray(model.coef_, dtype=np.float64).ravel(), float(model.intercept_)


def linear_head(
    mode: str,
    kind: str,
    model_version: str,
    settings: dict,
    embeddings: np.ndarray,
    targets: np.ndarray,
    lexical: sp.csr_matrix | None = None,
) -> CurationHead:
    """A logistic or ridge head fitted on student embeddings, and on lexical features when given."""
    dim = embeddings.shape[1]
    x = embeddings if lexical is None else sp.hstack([sp.csr_matrix(embeddings), lexical], format="csr")
    c = float(settings.get("c", 1.0))
    if kind == "ridge":
        coef, intercept = fit_ridge(x, targets, alpha=1.0 / c)
        low, high = float(np.min(targets)), float(np.max(targets))
        score_range = (low, high)
    else:
        coef, intercept = fit_logistic(x, targets, c=c, seed=int(settings.get("seed", 0)))
        score_range = (0.0, 1.0)
    return CurationHead(
        mode=mode,
        kind=kind,
        model_version=model_version,
        settings=settings,
        coef=coef[:dim].astype(np.float32),
        lexical_coef=None if lexical is None else coef[dim:].astype(np.float32),
        intercept=intercept,
        score_range=score_range,
    )


def similarity_head(model_version: str, settings: dict, references: np.ndarray) -> CurationHead:
    top_k = int(settings["top_k"])
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    refs = np.ascontiguousarray(references, dtype=np.float32)
    return CurationHead(
        mode="reference-similarity",
        kind="similarity",
        model_version=model_version,
        settings={**settings, "top_k": min(top_k, len(refs))},
        references=refs,
        score_range=(-1.0, 1.0),
    )


def reference_similarity(queries: np.ndarray, references: np.ndarray, top_k: int) -> np.ndarray:
    """Mean of each query's top-k cosines to the references (rows are unit vectors), float32.

    Exact, in blocks of queries, up to `EXACT_SEARCH_MAX_REFERENCES` references; an exact faiss
    inner-product index beyond, which finds the top-k without holding a block's full cosine matrix.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    references = np.ascontiguousarray(references, dtype=np.float32)
    k = min(top_k, len(references))
    if len(references) > EXACT_SEARCH_MAX_REFERENCES:
        import faiss

        index = faiss.IndexFlatIP(references.shape[1])
        index.add(references)
        return index.search(queries, k)[0].mean(axis=1).astype(np.float32)
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _QUERY_BLOCK):
        cosines = queries[start : start + _QUERY_BLOCK] @ references.T
        top = np.partition(cosines, cosines.shape[1] - k, axis=1)[:, -k:] if k < cosines.shape[1] else cosines
        out[start : start + len(cosines)] = top.mean(axis=1)
    return out
