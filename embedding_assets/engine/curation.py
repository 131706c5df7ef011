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

A logistic head is fitted as two: one on the embedding, one on the lexical rows (n-grams without
punctuation marks), blended with equal weight on their logits scaled to unit spread, at the C
where the two agree most on corpus documents neither was fitted on (out-of-fold, folds by a
hash of the document id); see `blended_logistic` for why not the out-of-fold AP. The blend of two
linear heads on the same features is one linear head: scoring stays one pass.

Cross-fitting: the corpus documents a head was fitted on (the reference classifier's negatives,
the labelled or annotated documents) would score lower than unseen ones if the head that saw
them judged them. The head keeps their id hashes and the fold heads fitted without each fold,
and such a document is scored by the fold head that never saw it (`score_documents`); every
other document is scored by the full head in one pass.

The keep rule is one threshold, calibrated once on the scores (cross-fitted where needed) of
corpus documents, so that a target share of them is kept. A head is one safetensors file
(arrays plus a JSON header), never pickled; its version is the hash of its content.
"""

from __future__ import annotations

import hashlib
import math
import string
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
FOLDS = 5
# Inverse penalties tried for the two halves of a logistic head.
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


# The map of the student's training documents' scores: quantile levels, and the fewest documents on each side.
QUANTILES = 1001
MIN_MAPPED = 100


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


def document_keys(ids: Sequence[str]) -> np.ndarray:
    """A uint64 per document id, stable across runs: what a head records of the documents it was fitted on."""
    return np.array([int.from_bytes(hashlib.blake2b(b"curation:" + str(i).encode(), digest_size=8).digest(), "little") for i in ids], dtype=np.uint64)


def folds_of(keys: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    return (np.asarray(keys, dtype=np.uint64) % np.uint64(folds)).astype(np.int64)


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
    # Cross-fitting: id hashes (sorted) of the corpus documents the head was fitted on, the fold of
    # each, and per fold the head fitted without it ([folds, dim], [folds, vocabulary], [folds]).
    fitted_keys: np.ndarray | None = None
    fitted_folds: np.ndarray | None = None
    fold_coef: np.ndarray | None = None
    fold_lexical_coef: np.ndarray | None = None
    fold_intercepts: np.ndarray | None = None
    # The student was fitted to its training documents, which then score unlike the rest of the
    # corpus: their id hashes (sorted), and the quantiles of their scores (row 0) and of the other
    # calibration documents' scores (row 1) at the same levels, which map the first onto the second.
    sample_keys: np.ndarray | None = None
    sample_quantiles: np.ndarray | None = None

    @property
    def cross_fitted(self) -> bool:
        return self.fitted_keys is not None and len(self.fitted_keys) > 0

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
            scores = reference_similarity(embeddings, self.references, int(self.settings["top_k"]))
            if self.lexical:
                if lexical_products is None:
                    raise ValueError("this head reads lexical features too; score it with score_texts")
                scores = (scores + lexical_products[:, 0]).astype(np.float32)
            return scores
        if embeddings.ndim != 2 or embeddings.shape[1] != len(self.coef):
            raise ValueError(f"embeddings have shape {embeddings.shape}, the head expects (n, {len(self.coef)})")
        logits = embeddings.astype(np.float64) @ self.coef.astype(np.float64) + self.intercept
        if self.lexical:
            if lexical_products is None:
                raise ValueError("this head reads lexical features too; score it with score_texts")
            logits += lexical_products[:, 0]
        return self._link(logits)

    def score_texts(self, embedder: LexicalEmbedder, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and scores of texts, from one encoder pass (the full head: for documents it never saw)."""
        if self.lexical:
            embeddings, products = embedder.encode(texts, lexical=self.lexical_weights)
            return embeddings, self.score(embeddings, products)
        embeddings = embedder.encode(texts)
        return embeddings, self.score(embeddings)

    def fitted_fold(self, ids: Sequence[str], keys: np.ndarray | None = None) -> np.ndarray:
        """Per document, the fold it was fitted in (-1: a document the head never saw)."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if not self.cross_fitted or len(ids) == 0:
            return out
        keys = document_keys(ids) if keys is None else keys
        at = np.minimum(np.searchsorted(self.fitted_keys, keys), len(self.fitted_keys) - 1)
        hit = self.fitted_keys[at] == keys
        out[hit] = self.fitted_folds[at[hit]]
        return out

    def score_documents(self, embedder: LexicalEmbedder, ids: Sequence[str], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and scores of corpus documents: one pass of the full head, the documents the
        head was fitted on scored again by the fold head that did not see them, and the student's
        training documents' scores mapped onto the distribution of the others'."""
        keys = document_keys(ids) if self.cross_fitted or self.sample_keys is not None else None
        embeddings, scores = self.score_unmapped(embedder, ids, texts, keys)
        return embeddings, self.mapped(ids, scores, keys)

    def mapped(self, ids: Sequence[str], scores: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Scores with those of the student's training documents mapped by quantile onto the others'."""
        if self.sample_keys is None or len(self.sample_keys) == 0 or len(ids) == 0:
            return scores
        inside = _member(self.sample_keys, document_keys(ids) if keys is None else keys)
        if not inside.any():
            return scores
        scores = scores.copy()
        scores[inside] = np.interp(scores[inside], self.sample_quantiles[0], self.sample_quantiles[1]).astype(np.float32)
        return scores

    def score_unmapped(self, embedder: LexicalEmbedder, ids: Sequence[str], texts: Sequence[str],
                       keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`score_documents` before the map of the student's training documents' scores: what calibration fits that map on."""
        embeddings, scores = self.score_texts(embedder, texts)
        folds = self.fitted_fold(ids, keys)
        seen = np.flatnonzero(folds >= 0)
        if len(seen):
            rows = embeddings[seen].astype(np.float64)
            logits = np.einsum("nd,nd->n", rows, self.fold_coef[folds[seen]].astype(np.float64)) + self.fold_intercepts[folds[seen]]
            if self.lexical:
                weights = np.ascontiguousarray(self.fold_lexical_coef.T, dtype=np.float32)
                products = embedder.encode([texts[i] for i in seen], lexical=weights)[1]
                logits += products[np.arange(len(seen)), folds[seen]]
            scores = scores.copy()
            scores[seen] = self._link(logits)
        return embeddings, scores

    def _link(self, logits: np.ndarray) -> np.ndarray:
        if self.kind == "ridge":
            return np.clip(logits, *self.score_range).astype(np.float32)
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)

    @property
    def lexical_weights(self) -> np.ndarray:
        """The lexical coefficients as the [vocabulary, 1] matrix the encoder multiplies TF-IDF rows by."""
        return np.ascontiguousarray(self.lexical_coef, dtype=np.float32)[:, None]

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold

    def calibrated_on_corpus(self, embedder: LexicalEmbedder, ids: Sequence[str], texts: Sequence[str], sample_ids: Sequence[str],
                             target_keep_fraction: float) -> tuple[CurationHead, np.ndarray]:
        """The head calibrated on corpus documents (all of a corpus, or a draw of it) and their scores
        as `score_documents` will give them: first the map of the student's training documents'
        (`sample_ids`) scores onto the others', then the threshold. Empty texts score -inf: never kept."""
        scores = self.score_unmapped(embedder, ids, texts)[1].astype(np.float64)
        return self.calibrated_on_scores(ids, scores, [not t.strip() for t in texts], sample_ids, target_keep_fraction)

    def calibrated_on_scores(self, ids: Sequence[str], scores: np.ndarray, blank, sample_ids: Sequence[str],
                             target_keep_fraction: float) -> tuple[CurationHead, np.ndarray]:
        """`calibrated_on_corpus` from the unmapped scores of `score_documents` (cross-fitted, not mapped)."""
        scores = np.asarray(scores, dtype=np.float64).copy()
        blank = np.asarray(blank, dtype=bool)
        sample_keys = np.unique(document_keys(sample_ids))
        inside = _member(sample_keys, document_keys(ids)) & ~blank
        outside = ~inside & ~blank
        head = replace(self, sample_keys=None, sample_quantiles=None)
        if inside.sum() >= MIN_MAPPED and outside.sum() >= MIN_MAPPED:
            levels = np.linspace(0.0, 1.0, QUANTILES)
            quantiles = np.stack([np.quantile(scores[inside], levels), np.quantile(scores[outside], levels)]).astype(np.float32)
            head = replace(head, sample_keys=sample_keys, sample_quantiles=quantiles)
            scores[inside] = np.interp(scores[inside].astype(np.float32), quantiles[0], quantiles[1]).astype(np.float32)
        scores[blank] = -np.inf
        return head.calibrated(scores, target_keep_fraction), scores

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
        named = {"coef": self.coef, "lexical_coef": self.lexical_coef, "references": self.references,
                 "fold_coef": self.fold_coef, "fold_lexical_coef": self.fold_lexical_coef, "fold_intercepts": self.fold_intercepts}
        out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in named.items() if v is not None}
        if self.fitted_keys is not None:
            out["fitted_keys"] = np.ascontiguousarray(self.fitted_keys, dtype=np.uint64)
            out["fitted_folds"] = np.ascontiguousarray(self.fitted_folds, dtype=np.uint8)
        if self.sample_keys is not None:
            out["sample_keys"] = np.ascontiguousarray(self.sample_keys, dtype=np.uint64)
            out["sample_quantiles"] = np.ascontiguousarray(self.sample_quantiles, dtype=np.float32)
        return out

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
                fitted_keys=tensors.get("fitted_keys"),
                fitted_folds=None if "fitted_folds" not in tensors else tensors["fitted_folds"].astype(np.int64),
                fold_coef=tensors.get("fold_coef"),
                fold_lexical_coef=tensors.get("fold_lexical_coef"),
                fold_intercepts=None if "fold_intercepts" not in tensors else tensors["fold_intercepts"].astype(np.float64),
                sample_keys=tensors.get("sample_keys"),
                sample_quantiles=tensors.get("sample_quantiles"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"curation head config is missing or has a bad value for {exc}") from exc
        if mode not in (*MODES, NONE) or kind not in KINDS:
            raise ArtifactError(f"unknown curation mode {mode!r} or head kind {kind!r}")
        needed = {"similarity": ("references",), NONE: ()}.get(kind, ("coef",))
        for name in needed:
            artifact.require(tensors, name, (None,) * (2 if name == "references" else 1), np.float32)
        if "fitted_keys" in tensors:
            # Older heads have no fold heads, and score every document with the full head.
            count = len(tensors["fitted_keys"])
            artifact.require(tensors, "fitted_keys", (count,), np.uint64)
            artifact.require(tensors, "fitted_folds", (count,), np.uint8)
            folds = tensors["fold_intercepts"].shape[0] if "fold_intercepts" in tensors else 0
            artifact.require(tensors, "fold_intercepts", (folds,), np.float32)
            artifact.require(tensors, "fold_coef", (folds, len(head.coef)), np.float32)
            if head.lexical:
                artifact.require(tensors, "fold_lexical_coef", (folds, len(head.lexical_coef)), np.float32)
            if count and (int(tensors["fitted_folds"].max()) >= folds or np.any(tensors["fitted_keys"][1:] <= tensors["fitted_keys"][:-1])):
                raise ArtifactError("curation head: fitted_folds name a fold it has no head for, or fitted_keys are not sorted and distinct")
        if "sample_keys" in tensors:
            keys = artifact.require(tensors, "sample_keys", (None,), np.uint64)
            quantiles = artifact.require(tensors, "sample_quantiles", (2, None), np.float32)
            if np.any(keys[1:] <= keys[:-1]) or np.any(np.diff(quantiles, axis=1) < 0):
                raise ArtifactError("curation head: sample_keys are not sorted and distinct, or sample_quantiles are not ascending")
        if kind == "similarity" and "top_k" not in head.settings:
            raise ArtifactError("a similarity head needs a top_k setting")
        return head


SCORE_MEANINGS = {
    "logistic": "the probability that a document is one of the wanted kind",
    "ridge": "the predicted annotation score",
    "similarity": "the mean cosine of a document to its top-k nearest references (plus the weighted lexical cosine to their centroid, when the head has one)",
}


def head_card(head: CurationHead) -> str:
    """A markdown card for the curation head: what it learned from, how it scores, how well it ranks."""
    if not head.scores:
        return (
            f"# Curation head `{head.version}`: none\n\nNo curation is configured, so documents are embedded "
            f"(student `{head.model_version}`) and not scored. Set a reference set, annotations or positive labels.\n"
        )
    features = "the student embedding and its n-gram TF-IDF features" if head.lexical else "the student embedding"
    if head.kind == "similarity":
        how = f"{len(head.references):,} reference embeddings" + (
            f", plus {head.settings.get('lexical_weight')} x the TF-IDF cosine to the references' centroid" if head.lexical else "")
    else:
        how = f"{head.kind} regression on {features}"
    lines = [
        f"# Curation head `{head.version}`: {head.mode}",
        "",
        f"- student model `{head.model_version}`; {how}",
        f"- score: {SCORE_MEANINGS[head.kind]}, in [{head.score_range[0]:g}, {head.score_range[1]:g}]",
        f"- keep: score >= {head.threshold:.6g}, calibrated to keep {head.target_keep_fraction:g} of the corpus's documents; empty texts are never kept",
        *([f"- the {len(head.fitted_keys):,} corpus documents it was fitted on are scored by the one of its {len(head.fold_intercepts)} fold heads that did not see them"]
          if head.cross_fitted else []),
        *([f"- the scores of the student's {len(head.sample_keys):,} training documents are mapped by quantile onto those of the other corpus documents"]
          if head.sample_keys is not None else []),
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


PUNCTUATION = string.punctuation + "‘’“”«»‹›–—…•·§¶†‡°′″¡¿"


def word_ngrams(embedder: LexicalEmbedder) -> np.ndarray:
    """Per vocabulary n-gram, whether none of its tokens is a punctuation mark.

    The lexical halves of the heads read only these. N-grams with punctuation are about half of a
    WordPiece vocabulary, and on technical text they carry the markup of a source (reST roles,
    backquotes, HTML leftovers) more than its subject: a reference set from another source is
    then told apart by its format, which no corpus document of the wanted kind shares
    (bench.curation: the student's lexical rows ranked at scikit-learn word TF-IDF's level once
    they were left out, and well below it with them)."""
    ids, _ = embedder.front_end.tokenize([" ".join(PUNCTUATION)])
    marks = np.unique(np.asarray(ids, dtype=np.uint32))
    ngrams = embedder.vocabulary.ngrams
    return ~np.isin(ngrams, marks).any(axis=1)


def _masked(lexical, mask: np.ndarray | None):
    return lexical if lexical is None or mask is None else (lexical @ sp.diags(mask.astype(np.float32))).tocsr()


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


@dataclass
class _CrossFit:
    """A linear fit at one C: out-of-fold logits of every row, the fold fits, and the full fit."""

    oof: np.ndarray
    fold_coef: np.ndarray  # [folds, features]
    fold_intercepts: np.ndarray  # [folds]
    coef: np.ndarray | None = None
    intercept: float = 0.0


def _cross_fit(x, targets: np.ndarray, folds: np.ndarray, count: int, fit) -> _CrossFit:
    oof = np.zeros(len(targets))
    coefs, intercepts = [], []
    for k in range(count):
        held = folds == k
        coef, intercept = fit(x[~held], targets[~held])
        coefs.append(coef)
        intercepts.append(intercept)
        oof[held] = np.asarray(x[held] @ coef).ravel() + intercept
    return _CrossFit(oof, np.array(coefs), np.array(intercepts))


def _full(run: _CrossFit, x, targets: np.ndarray, fit) -> _CrossFit:
    run.coef, run.intercept = fit(x, targets)
    return run


def blended_logistic(embeddings: np.ndarray, lexical, targets: np.ndarray, folds: np.ndarray, count: int, agreement_rows: np.ndarray,
                     c: float = 1.0, c_grid: Sequence[float] = C_GRID, seed: int = 0) -> dict:
    """Logistic heads on the embedding and on the lexical rows at one C, blended with equal weight
    on their logits scaled to unit spread, then rescaled (Platt, on the out-of-fold blend) so the
    score reads as a probability.

    C is the one at which the two halves' out-of-fold logits agree most (Spearman) on the corpus
    documents among the examples (`agreement_rows`). Not the out-of-fold AP of the references
    against those documents: with references from another source than the corpus's wanted
    documents, that AP rises with C while the corpus ranking falls (each half learns the source
    as C grows; bench.curation), whereas what both views of a document share is its subject.
    Without lexical rows, the embedding head at `c`.

    Returns the blended full head and fold heads: coef, lexical_coef, intercept, fold_coef,
    fold_lexical_coef, fold_intercepts, and `choice` (C, the agreement, the halves' scales and
    out-of-fold APs)."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    y = np.asarray(targets, dtype=bool)

    def fitted(x, at: float) -> _CrossFit:
        return _full(_cross_fit(x, y, folds, count, lambda a, b: fit_logistic(a, b, at, seed)), x, y, lambda a, b: fit_logistic(a, b, at, seed))

    if lexical is None:
        dense, lex, scales, choice = fitted(embeddings, c), None, (1.0, 0.0), {"chosen_c": c}
    else:
        dense_runs = {at: _cross_fit(embeddings, y, folds, count, lambda a, b, at=at: fit_logistic(a, b, at, seed)) for at in c_grid}
        lexical_runs = {at: _cross_fit(lexical, y, folds, count, lambda a, b, at=at: fit_logistic(a, b, at, seed)) for at in c_grid}
        agreement = {at: float(np.nan_to_num(spearmanr(dense_runs[at].oof[agreement_rows], lexical_runs[at].oof[agreement_rows]).statistic, nan=-1.0))
                     for at in c_grid}
        c = max(c_grid, key=lambda at: (round(agreement[at], 4), -at))
        dense = _full(dense_runs[c], embeddings, y, lambda a, b: fit_logistic(a, b, c, seed))
        lex = _full(lexical_runs[c], lexical, y, lambda a, b: fit_logistic(a, b, c, seed))
        spread = [float(np.std(run.oof[agreement_rows])) or 1.0 for run in (dense, lex)]
        scales = (1.0 / spread[0], 1.0 / spread[1])
        choice = {"chosen_c": c, "view_agreement": round(agreement[c], 4), "oof_ap_lexical": round(float(average_precision_score(y, lex.oof)), 4)}
    choice["oof_ap_dense"] = round(float(average_precision_score(y, dense.oof)), 4)
    blend = scales[0] * dense.oof + (0.0 if lex is None else scales[1] * lex.oof)
    choice["oof_ap"] = round(float(average_precision_score(y, blend)), 4)
    platt = LogisticRegression(C=1e4, class_weight="balanced", max_iter=1000).fit(blend[:, None], y.astype(int))
    a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    wd, wl = a * scales[0], a * scales[1]
    return {
        "coef": wd * dense.coef,
        "fold_coef": wd * dense.fold_coef,
        "intercept": wd * dense.intercept + (0.0 if lex is None else wl * lex.intercept) + b,
        "fold_intercepts": wd * dense.fold_intercepts + (0.0 if lex is None else wl * lex.fold_intercepts) + b,
        "lexical_coef": None if lex is None else wl * lex.coef,
        "fold_lexical_coef": None if lex is None else wl * lex.fold_coef,
        "choice": choice,
    }


def cross_fitted_head(
    mode: str,
    kind: str,
    model_version: str,
    settings: dict,
    embeddings: np.ndarray,
    targets: np.ndarray,
    lexical: sp.csr_matrix | None,
    ids: Sequence[str],
    in_corpus: np.ndarray,
    folds: int = FOLDS,
    lexical_mask: np.ndarray | None = None,
) -> CurationHead:
    """A linear head (a blended logistic one, or ridge) whose training rows that are corpus
    documents (`in_corpus`, by `ids`) are later scored by fold heads that never saw them.

    Folds go by a hash of the id. With too few examples for every fold to hold both classes,
    the plain head of `linear_head`, and no fold heads."""
    keys = document_keys(ids)
    fold = folds_of(keys, folds)
    y = np.asarray(targets)
    lexical = _masked(lexical, lexical_mask)
    if kind == "logistic" and (min(int(y.sum()), int((~y.astype(bool)).sum())) < 2 * folds
                               or not all(len(set(y[fold != k].tolist())) == 2 for k in range(folds))):
        return linear_head(mode, kind, model_version, settings, embeddings, targets, lexical)
    if kind == "ridge":
        x = embeddings if lexical is None else sp.hstack([sp.csr_matrix(embeddings), lexical], format="csr")
        c = float(settings.get("c", 1.0))
        run = _full(_cross_fit(x, y.astype(np.float64), fold, folds, lambda a, b: fit_ridge(a, b, 1.0 / c)), x, y.astype(np.float64),
                    lambda a, b: fit_ridge(a, b, 1.0 / c))
        dim = embeddings.shape[1]
        parts = {"coef": run.coef[:dim], "lexical_coef": None if lexical is None else run.coef[dim:], "intercept": run.intercept,
                 "fold_coef": run.fold_coef[:, :dim], "fold_lexical_coef": None if lexical is None else run.fold_coef[:, dim:],
                 "fold_intercepts": run.fold_intercepts}
        score_range = (float(np.min(y)), float(np.max(y)))
    else:
        in_corpus = np.asarray(in_corpus, dtype=bool)
        agreement_rows = in_corpus if in_corpus.sum() >= 50 else ~y.astype(bool)
        parts = blended_logistic(embeddings, lexical, y.astype(bool), fold, folds, agreement_rows, c=float(settings.get("c", 1.0)),
                                 seed=int(settings.get("seed", 0)))
        settings = {**settings, **{k: v for k, v in parts["choice"].items() if not k.startswith("oof_")}}
        score_range = (0.0, 1.0)
    if lexical is not None and lexical_mask is not None:
        settings = {**settings, "lexical_ngrams": "without punctuation marks"}
    corpus_keys, first = np.unique(keys[np.asarray(in_corpus, dtype=bool)], return_index=True)
    corpus_folds = fold[np.asarray(in_corpus, dtype=bool)][first]

    def f32(a):
        return None if a is None else np.asarray(a, dtype=np.float32)

    head = CurationHead(
        mode=mode,
        kind=kind,
        model_version=model_version,
        settings={**settings, "cross_fitted_folds": folds},
        coef=f32(parts["coef"]),
        lexical_coef=f32(parts["lexical_coef"]),
        intercept=float(parts["intercept"]),
        score_range=score_range,
        fitted_keys=corpus_keys.astype(np.uint64),
        fitted_folds=corpus_folds.astype(np.int64),
        fold_coef=f32(parts["fold_coef"]),
        fold_lexical_coef=f32(parts["fold_lexical_coef"]),
        fold_intercepts=np.asarray(parts["fold_intercepts"], dtype=np.float32).astype(np.float64),
    )
    if kind == "logistic":
        head = replace(head, evaluation={f"cross_validated_{k}": v for k, v in parts["choice"].items() if k.startswith("oof_")})
    return head


def similarity_head(model_version: str, settings: dict, references: np.ndarray, lexical_centroid: np.ndarray | None = None) -> CurationHead:
    """Mean top-k cosine to the reference embeddings, plus, with `lexical_centroid` (the weighted
    unit centroid of the references' TF-IDF rows), a document's TF-IDF cosine to it."""
    top_k = int(settings["top_k"])
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    refs = np.ascontiguousarray(references, dtype=np.float32)
    weight = 0.0 if lexical_centroid is None else float(np.linalg.norm(lexical_centroid))
    return CurationHead(
        mode="reference-similarity",
        kind="similarity",
        model_version=model_version,
        settings={**settings, "top_k": min(top_k, len(refs))},
        references=refs,
        lexical_coef=None if lexical_centroid is None else np.asarray(lexical_centroid, dtype=np.float32),
        score_range=(-1.0, 1.0 + weight),
    )


SIMILARITY_LEXICAL_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def unit_centroid(rows) -> np.ndarray:
    centroid = np.asarray(rows.mean(axis=0)).ravel().astype(np.float64)
    norm = np.linalg.norm(centroid)
    return centroid / norm if norm > 0 else centroid


def lexical_similarity_head(model_version: str, settings: dict, references: np.ndarray, reference_lexical, reference_ids: Sequence[str],
                            documents: np.ndarray, document_lexical, folds: int = FOLDS,
                            weights: Sequence[float] = SIMILARITY_LEXICAL_WEIGHTS, lexical_mask: np.ndarray | None = None) -> CurationHead:
    """A similarity head whose lexical weight is the one under which held-out references rank best
    against corpus documents (`documents`, their embeddings and TF-IDF rows), references in folds
    by a hash of their id: each fold's references are scored by a head built from the others."""
    from sklearn.metrics import average_precision_score

    top_k = int(settings["top_k"])
    reference_lexical, document_lexical = _masked(reference_lexical, lexical_mask), _masked(document_lexical, lexical_mask)
    if lexical_mask is not None:
        settings = {**settings, "lexical_ngrams": "without punctuation marks"}
    fold = folds_of(document_keys(reference_ids), folds)
    if min(np.bincount(fold, minlength=folds)) < 2 or len(documents) < 2:
        return similarity_head(model_version, settings, references)
    doc_dense = documents.astype(np.float32)
    gains = {w: [] for w in weights}
    for k in range(folds):
        held, rest = fold == k, fold != k
        centroid = unit_centroid(reference_lexical[rest])
        dense = np.r_[reference_similarity(references[held], references[rest], top_k), reference_similarity(doc_dense, references[rest], top_k)]
        lexical = np.r_[np.asarray(reference_lexical[held] @ centroid).ravel(), np.asarray(document_lexical @ centroid).ravel()]
        y = np.r_[np.ones(int(held.sum()), bool), np.zeros(len(doc_dense), bool)]
        for w in weights:
            gains[w].append(average_precision_score(y, dense + w * lexical))
    weight = max(weights, key=lambda w: (round(float(np.mean(gains[w])), 6), -w))
    settings = {**settings, "lexical_weight": weight, "cross_validated_ap": round(float(np.mean(gains[weight])), 4),
                "cross_validated_ap_dense_only": round(float(np.mean(gains[weights[0]])), 4) if weights[0] == 0 else None}
    if weight == 0:
        return similarity_head(model_version, settings, references)
    return similarity_head(model_version, settings, references, weight * unit_centroid(reference_lexical))


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
