"""What the curation asks for: its mode, where its examples live, and the head's settings.

One setting, `mode`, picks how documents are scored (see `engine.curation.MODES`). `auto`
picks the mode the inputs allow: annotations when given, else the reference classifier when
a reference set is given, else labels when positive labels are given, else `none`, which
embeds every shard and scores nothing.
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field, field_validator

from embedding_assets.engine.curation import MODES
from embedding_assets.resources.s3 import S3Settings, is_s3

SETTINGS = ("auto", "none", *MODES)


class CurationSettingsError(ValueError):
    """A curation setting that cannot work; the message names the setting."""


class Curation(dg.ConfigurableResource):
    mode: Literal["auto", "none", "labels", "reference-classifier", "reference-similarity", "annotations"] = Field(
        default="auto", description="How documents are scored: " + ", ".join(SETTINGS) + " (EMBEDDING_ASSETS_CURATION, --curation)."
    )
    reference: str = Field(default="", description="Directory or s3:// prefix of the documents to find more of (EMBEDDING_ASSETS_REFERENCE, --reference).")
    negative_reference: str = Field(
        default="", description="Directory or s3:// prefix of documents not wanted; the classifier's negatives instead of corpus documents (--negative-reference)."
    )
    annotations: str = Field(
        default="", description="File, directory or s3:// prefix of a table of id with label or score for some corpus documents (--annotations)."
    )
    positive_labels: list[str] = Field(default=[], description="Labels (of the label column, or of the annotations) that count as documents to keep (--positive-labels).")
    keep_fraction: float = Field(default=0.2, description="Share of documents the calibrated threshold keeps (--keep-fraction).")
    top_k: int = Field(default=10, description="reference-similarity: a document's score is the mean of its top_k cosines to the references (--top-k).")
    lexical: bool = Field(
        default=True, description="Heads also read the student's n-gram TF-IDF features beside its embedding (the fastText-like bag): a logistic half blended with the embedding's, or a lexical cosine term of the similarity head, weighted by cross-validation; measured in bench.curation."
    )
    regularization: float = Field(default=1.0, description="Inverse L2 penalty C of ridge heads, and of logistic heads with too few examples to cross-validate (others choose C by cross-validation).")
    max_negatives: int = Field(default=20_000, description="reference-classifier: most corpus documents drawn as negatives.")
    reference_holdout: float = Field(default=0.2, description="Share of the reference set held out to measure the head (by a hash of the id).")
    s3: S3Settings = Field(default=S3Settings(), description="Endpoint, region and profile used when a location is on S3.")

    @field_validator("keep_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"keep_fraction (--keep-fraction, EMBEDDING_ASSETS_KEEP_FRACTION) must be in (0, 1], got {value}: a share of 0 keeps nothing")
        return value

    @field_validator("top_k", "max_negatives")
    @classmethod
    def _positive(cls, value: int, info) -> int:
        if value < 1:
            flag = " (--top-k, EMBEDDING_ASSETS_TOP_K)" if info.field_name == "top_k" else ""
            raise ValueError(f"{info.field_name}{flag} must be >= 1, got {value}")
        return value

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        if self.annotations:
            return "annotations"
        if self.reference:
            return "reference-classifier"
        if self.positive_labels:
            return "labels"
        return "none"

    def problems(self) -> list[str]:
        """Settings that cannot work together, each naming the setting; empty when all is well."""
        mode = self.resolved_mode()
        problems = []
        if mode in ("reference-classifier", "reference-similarity") and not self.reference:
            problems.append(f"curation mode {mode} needs a reference set: set --reference (EMBEDDING_ASSETS_REFERENCE) to a directory or s3:// prefix of documents")
        if mode == "annotations" and not self.annotations:
            problems.append("curation mode annotations needs --annotations (EMBEDDING_ASSETS_ANNOTATIONS): a table of id with label or score")
        if mode == "labels" and not self.positive_labels:
            problems.append("curation mode labels needs --positive-labels (EMBEDDING_ASSETS_POSITIVE_LABELS): the label values to keep, comma-separated")
        if self.negative_reference and mode != "reference-classifier":
            problems.append(f"--negative-reference is used by the reference-classifier mode only, not {mode}")
        if self.reference and mode not in ("reference-classifier", "reference-similarity"):
            problems.append(f"--reference is set but curation mode {mode} does not use it; choose --curation reference-classifier or reference-similarity")
        return problems

    def check(self) -> str:
        """The resolved mode, or `CurationSettingsError` naming every setting that cannot work."""
        problems = self.problems()
        if problems:
            raise CurationSettingsError("; ".join(problems))
        return self.resolved_mode()

    def filesystem(self, location: str):
        return self.s3.filesystem() if is_s3(location) else None

    def settings(self) -> dict:
        """The settings a head records in its lineage."""
        mode = self.resolved_mode()
        recorded = {"mode": mode, "keep_fraction": self.keep_fraction}
        if mode in ("labels", "annotations") and self.positive_labels:
            recorded["positive_labels"] = sorted(self.positive_labels)
        if mode == "reference-similarity":
            recorded.update(top_k=self.top_k, lexical=self.lexical)
        if mode in ("labels", "reference-classifier", "annotations"):
            recorded.update(lexical=self.lexical, c=self.regularization)
        if mode == "reference-classifier":
            recorded["negatives"] = "negative reference set" if self.negative_reference else f"corpus sample, at most {self.max_negatives}"
        return recorded
