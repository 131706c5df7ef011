"""Where each asset keeps its files, relative to the storage base: the one place that spells them.

Names are path parts for `Storage` methods: `storage.read_bytes(paths.MODEL_FILE)`,
`storage.open_parquet(*paths.scored_corpus_path(shard))`.
"""

from __future__ import annotations

TRAINING_SAMPLE_FILE = "training_sample.parquet"
FEATURES_FILE = "features.safetensors"
TEACHER_MODEL_FILE = "teacher_model.json"
TEACHER_EMBEDDINGS_FILE = "teacher_embeddings.parquet"
TEACHER_TOKEN_SUMS_FILE = "teacher_token_sums.safetensors"
TEACHER_CHUNKS_DIR = "teacher_chunks"
MODEL_FILE = "distilled_model.safetensors"
MODEL_CARD_FILE = "distilled_model.md"
REFERENCE_FILE = "reference_set.parquet"
ANNOTATIONS_FILE = "annotations.parquet"
HEAD_FILE = "quality_classifier.safetensors"
HEAD_CARD_FILE = "quality_classifier.md"


def raw_corpus_path(shard: str) -> tuple[str, str]:
    return ("raw_corpus", f"{shard}.parquet")


def scored_corpus_path(shard: str) -> tuple[str, str]:
    return ("scored_corpus", f"{shard}.parquet")
