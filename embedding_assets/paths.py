"""Where each asset keeps its files, relative to the storage base: the one place that spells them.

Each name is a tuple of path parts for `Storage` (`storage.read_bytes(*paths.MODEL)`).
"""

from __future__ import annotations

TRAINING_SAMPLE = ("training_sample.parquet",)
FEATURES = ("features.safetensors",)
TEACHER_MODEL = ("teacher_model.json",)
TEACHER_EMBEDDINGS = ("teacher_embeddings.parquet",)
TEACHER_TOKEN_SUMS = ("teacher_token_sums.safetensors",)
TEACHER_CHUNKS_DIR = "teacher_chunks"
MODEL = ("distilled_model.safetensors",)
MODEL_CARD = ("distilled_model.md",)
CLASSIFIER = ("quality_classifier.json",)


def raw_corpus(shard: str) -> tuple[str, str]:
    return ("raw_corpus", f"{shard}.parquet")


def scored_corpus(shard: str) -> tuple[str, str]:
    return ("scored_corpus", f"{shard}.parquet")
