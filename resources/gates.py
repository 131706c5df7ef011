"""Thresholds of the data-quality gates between stages, with defaults that suit the sample corpus."""

import dagster as dg
from pydantic import Field


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
    sample_keep_tolerance: float = Field(default=0.02, description="Largest gap between the sample's keep fraction and the target.")
    # scored_corpus
    shard_keep_tolerance: float = Field(default=0.15, description="Largest gap between a shard's keep fraction and the target.")
    max_score_psi: float = Field(default=0.25, description="Largest population stability index of a shard's scores against the sample's.")
    min_rows_for_drift: int = Field(default=100, description="Shards with fewer rows are too small for a PSI to mean anything and are not judged on it.")
    failing_ids_cap: int = Field(default=20, description="Most offending ids listed in a check's metadata.")
