"""The quality classifier: logistic regression on student embeddings, and one calibrated keep rule.

Stored as JSON (weights, intercept, threshold), never pickled. The threshold is set once, on
the training sample, so that a target share of documents is kept; every shard is then judged
by that same rule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from embedding_assets.engine.errors import ArtifactError

CLASSIFIER_FORMAT = "embedding_assets.quality_classifier"
CLASSIFIER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class QualityClassifier:
    coef: list[float]
    intercept: float
    threshold: float
    positive_labels: list[str]
    target_keep_fraction: float
    model_version: str
    evaluation: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.coef)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Probability of the positive class, float32 in [0, 1]."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings have shape {embeddings.shape}, the classifier expects (n, {self.dim})")
        logits = embeddings.astype(np.float64) @ np.asarray(self.coef) + self.intercept
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold

    @property
    def version(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(
            {"format": CLASSIFIER_FORMAT, "format_version": CLASSIFIER_FORMAT_VERSION, "version": self.version, **asdict(self)},
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> QualityClassifier:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"classifier is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != CLASSIFIER_FORMAT:
            raise ArtifactError(f"not a quality classifier file (format {data.get('format') if isinstance(data, dict) else None!r})")
        if data.get("format_version", 0) > CLASSIFIER_FORMAT_VERSION:
            raise ArtifactError(f"classifier format version {data['format_version']} is newer than this build reads")
        version = data.pop("version", None)
        data.pop("format"), data.pop("format_version")
        try:
            classifier = cls(**data)
        except TypeError as exc:
            raise ArtifactError(f"classifier file has missing or unknown fields: {exc}") from exc
        if version != classifier.version:
            raise ArtifactError("classifier content hash does not match: the file was modified after it was written")
        return classifier


def fit_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    sample_x: np.ndarray,
    positive_labels: list[str],
    target_keep_fraction: float,
    model_version: str,
    seed: int = 0,
) -> QualityClassifier:
    """Fit on (train_x, train_y) and set the threshold so `target_keep_fraction` of `sample_x` is kept."""
    from sklearn.linear_model import LogisticRegression

    if not 0 < target_keep_fraction <= 1:
        raise ValueError(f"target_keep_fraction must be in (0, 1], got {target_keep_fraction}")
    classes = np.unique(train_y)
    if len(classes) != 2:
        raise ValueError(f"training labels need both classes; found only {classes.tolist()} (positive labels {positive_labels})")
    model = LogisticRegression(max_iter=2000, C=10.0, class_weight="balanced", random_state=seed)
    model.fit(train_x, train_y.astype(int))
    unscored = QualityClassifier(
        coef=[float(c) for c in model.coef_[0]],
        intercept=float(model.intercept_[0]),
        threshold=0.5,
        positive_labels=sorted(positive_labels),
        target_keep_fraction=target_keep_fraction,
        model_version=model_version,
    )
    scores = unscored.score(sample_x)
    threshold = float(np.quantile(scores, 1.0 - target_keep_fraction, method="higher"))
    return QualityClassifier(**{**asdict(unscored), "threshold": threshold})
