"""Where each asset keeps its files, relative to the storage base: the one place that spells them.

Each materialisation writes a new version folder (`embedding_assets.versions`); these are the
names of the files inside it: `storage.read_bytes(*version.file(paths.MODEL_FILE))`.
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


def shard_file(shard: str) -> str:
    """A shard's file in a version of raw_corpus[shard] or scored_corpus[shard]."""
    return f"{shard}.parquet"


def shard_ids_file(shard: str) -> str:
    """Beside a shard in its raw_corpus version: the sorted 64-bit hashes of its ids, written once at
    ingest, which the corpus id index merges, so uniqueness across shards costs one pass over them."""
    return f"{shard}.ids.parquet"


CORPUS_ID_INDEX_FILE = "corpus_id_index.parquet"
