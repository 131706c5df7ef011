"""Thresholds of the data-quality gates between stages, with defaults that suit the sample corpus.

Every field is also an environment variable, `EMBEDDING_ASSETS_GATE_<FIELD>` (`gates_from_env`).
"""

import math
import os
from fnmatch import fnmatchcase

import dagster as dg
from pydantic import Field, ValidationError, field_validator

DRIFT_SEVERITIES = ("warn", "block")
# Allowed range of each numeric threshold; a share or a rate lies in [0, 1], a rank correlation in [-1, 1].
SHARE = (0.0, 1.0)
CORRELATION = (-1.0, 1.0)
BOUNDS = {
    "min_text_chars": (0, math.inf), "max_text_chars": (1, math.inf), "max_duplicate_text_ratio": SHARE,
    "min_vocabulary_size": (0, math.inf), "max_vocabulary_size": (1, math.inf), "min_coverage": SHARE,
    "norm_tolerance": (0.0, math.inf), "max_clipped_share": SHARE,
    "min_recall_at_10": SHARE, "min_spearman": CORRELATION, "min_recall_gain": CORRELATION,
    "min_reference_documents": (1, math.inf), "min_heldout_auc": SHARE, "min_heldout_spearman": CORRELATION,
    "sample_keep_tolerance": SHARE, "shard_keep_tolerance": SHARE, "max_score_psi": (0.0, math.inf),
    "min_rows_for_drift": (0, math.inf), "failing_ids_cap": (0, math.inf),
}


def variable(name: str) -> str:
    return f"EMBEDDING_ASSETS_GATE_{name.upper()}"


class QualityGates(dg.ConfigurableResource):
    # raw_corpus
    min_text_chars: int = Field(default=1, description="Shortest text allowed, in characters after stripping whitespace.")
    max_text_chars: int = Field(default=1_000_000, description="Longest text allowed, in characters.")
    max_duplicate_text_ratio: float = Field(default=0.2, description="Most share of a shard's texts that may repeat an earlier text.")
    # features
    min_vocabulary_size: int = Field(default=1_000, description="Fewest n-grams in the vocabulary.")
    max_vocabulary_size: int = Field(default=5_000_000, description="Most n-grams in the vocabulary.")
    min_coverage: float = Field(default=0.95, description="Least share of sample documents with at least one known n-gram.")
    # teacher_embeddings
    norm_tolerance: float = Field(default=1e-3, description="Largest |norm - 1| of a teacher vector.")
    max_clipped_share: float = Field(default=1e-3, description="Most share of teacher values outside the uint8 quantisation limit.")
    # distilled_model
    min_recall_at_10: float = Field(default=0.15, description="Floor of held-out neighbour recall@10 against the teacher.")
    min_spearman: float = Field(default=0.2, description="Floor of held-out Spearman of pairwise cosines against the teacher.")
    min_recall_gain: float = Field(default=0.05, description="Least recall@10 above the same network untrained.")
    # reference_set
    min_reference_documents: int = Field(default=10, description="Fewest documents in a reference set (and in a negative reference set).")
    # quality_classifier
    min_heldout_auc: float = Field(default=0.6, description="Floor of the head's held-out ROC AUC (classifier and similarity modes).")
    min_heldout_spearman: float = Field(default=0.2, description="Floor of the held-out Spearman of predicted and annotated scores (annotations with scores).")
    sample_keep_tolerance: float = Field(default=0.02, description="Largest gap between the keep fraction of the corpus documents the threshold was calibrated on and the target.")
    # scored_corpus
    shard_keep_tolerance: float = Field(default=0.15, description="Largest gap between a shard's keep fraction and what it is compared with (its previous scoring, or its drift reference).")
    max_score_psi: float = Field(default=0.25, description="Largest population stability index of a shard's scores against its previous scoring by the same head.")
    min_rows_for_drift: int = Field(default=100, description="Shards with fewer rows are too small for a PSI to mean anything and are not judged on it.")
    drift_severity: str = Field(default="warn", description="What a drifted shard does: warn (the check fails with WARN severity; the run goes on) or block (ERROR: the run fails).")
    drift_references: dict[str, float] = Field(
        default_factory=dict,
        description="Expected keep fraction per source: shard-name pattern (fnmatch, e.g. 'perl-*') -> keep fraction. A matching shard is compared with it instead of its own history.",
    )
    failing_ids_cap: int = Field(default=20, description="Most offending ids listed in a check's metadata.")

    @field_validator(*BOUNDS)
    @classmethod
    def _in_bounds(cls, value, info):
        low, high = BOUNDS[info.field_name]
        if not (math.isfinite(value) and low <= value <= high):
            allowed = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
            raise ValueError(f"{info.field_name} ({variable(info.field_name)}) must be a finite number {allowed}, got {value}")
        return value

    @field_validator("drift_references")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        for pattern, fraction in value.items():
            if not (math.isfinite(fraction) and 0 <= fraction <= 1):
                raise ValueError(f"drift_references ({variable('drift_references')}): the keep fraction of {pattern!r} must be in [0, 1], got {fraction}")
        return value

    @field_validator("drift_severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        if value not in DRIFT_SEVERITIES:
            raise ValueError(f"drift_severity ({variable('drift_severity')}) must be one of {DRIFT_SEVERITIES}, got {value!r}")
        return value

    def drift_reference(self, shard: str) -> tuple[str, float] | None:
        """The first drift reference whose pattern matches the shard: (pattern, expected keep fraction)."""
        for pattern, fraction in self.drift_references.items():
            if fnmatchcase(shard, pattern):
                return pattern, fraction
        return None


def gates_from_env(environ=os.environ) -> QualityGates:
    """QualityGates with each `EMBEDDING_ASSETS_GATE_<FIELD>` that is set; drift references as `pattern=fraction,...`."""
    values: dict = {}
    for name, spec in QualityGates.model_fields.items():
        var = variable(name)
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        if name == "drift_references":
            try:
                values[name] = {pattern.strip(): float(fraction) for pattern, fraction in (item.rsplit("=", 1) for item in raw.split(",") if item.strip())}
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: expected pattern=fraction pairs separated by commas, e.g. 'perl-*=0.05,debian-*=0.3'") from exc
        elif spec.annotation in (int, float):
            try:
                values[name] = spec.annotation(raw)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: expected {'an integer' if spec.annotation is int else 'a number'}") from exc
        else:
            values[name] = raw
    try:
        return QualityGates(**values)
    except ValidationError as exc:
        raise ValueError("bad gate setting: " + "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())) from exc
