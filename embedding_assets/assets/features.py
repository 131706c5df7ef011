"""Features: the n-gram vocabulary with its IDF, and the TF-IDF matrix of the training sample."""

import time
from typing import Literal

import dagster as dg
import numpy as np
from pydantic import Field

from embedding_assets import paths, versions
from embedding_assets.assets.ingest import training_sample
from embedding_assets.assets.teacher import teacher_model
from embedding_assets.engine.features import build_features
from embedding_assets.engine.ngrams import PAD
from embedding_assets.engine.tokenization import load_tokenizer
from embedding_assets.progress import throughput
from embedding_assets.resources import Storage, Teacher
from embedding_assets.stored import read_sample
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, short_hash



class FeaturesConfig(dg.Config):
    vocabulary_size: int = Field(default=200_000, description="Most n-grams kept, by document frequency.")
    max_ngram_length: int = Field(default=5, description="Longest n-gram, in WordPiece tokens.")
    min_document_frequency: int = Field(default=2, description="An n-gram must occur in at least this many sample documents.")
    counter_capacity: int = Field(default=2_000_000, description="N-grams the approximate counter tracks at once (bounds its memory).")
    front_end: Literal["wordpiece", "words"] = Field(
        default="wordpiece",
        description="Tokens the n-grams are made of: the teacher's WordPiece (luxical-compatible) or lowercased words hashed to ids (faster; not exportable to luxical).",
    )


def idf_bands(built, per_band: int = 8) -> str:
    """A table of n-grams from the common, middle and rare ends of the IDF range."""
    tokenizer = load_tokenizer(built.tokenizer_json)
    hashed = built.vocabulary.front_end == "words"  # word ids are hashes: shown in hex, not decoded
    order = np.argsort(built.vocabulary.idf, kind="stable")
    middle = len(order) // 2 - per_band // 2
    bands = {"common (low IDF)": order[:per_band], "middle": order[middle : middle + per_band], "rare (high IDF)": order[-per_band:]}
    lines = ["| band | n-grams |", "|---|---|"]
    for band, picked in bands.items():
        rows = ([int(t) for t in built.vocabulary.ngrams[i] if t != PAD] for i in picked)
        grams = [" ".join(f"{t:08x}" for t in ids) if hashed else tokenizer.decode(ids) for ids in rows]
        lines.append(f"| {band} | {', '.join(f'`{g}`' for g in grams)} |")
    return "\n".join(lines) + "\n"


@dg.asset(
    # The n-grams are made of the teacher's WordPiece ids: another teacher tokenizer means other features.
    deps=[training_sample, teacher_model],
    group_name="training",
    kinds={"safetensors"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["features"],
    description="WordPiece n-grams (1..k) of the sample, a vocabulary picked by bounded-memory approximate counting, IDF, and the L2-normalised TF-IDF rows.",
)
def features(context: dg.AssetExecutionContext, config: FeaturesConfig, storage: Storage, teacher: Teacher) -> dg.MaterializeResult:
    if config.vocabulary_size < 1 or not 1 <= config.max_ngram_length <= 16:
        raise dg.Failure(f"vocabulary_size must be >= 1 and max_ngram_length in 1..16; got {config.vocabulary_size}, {config.max_ngram_length}")
    sample = read_sample(storage, versions.published(context, "training_sample"), ["id", "text", "split"])
    texts = sample["text"].to_pylist()
    batches = [texts[i : i + 4096] for i in range(0, len(texts), 4096)]
    started = time.perf_counter()
    built = build_features(
        teacher.tokenizer_json(),
        sample["id"].to_pylist(),
        batches,
        vocabulary_size=config.vocabulary_size,
        max_ngram_length=config.max_ngram_length,
        min_document_frequency=config.min_document_frequency,
        counter_capacity=config.counter_capacity,
        front_end=config.front_end,
        tokenizer_model=teacher.model,
    )
    seconds = time.perf_counter() - started
    data = built.to_bytes()
    version = versions.new_version(context, "features")
    uri = storage.write_bytes(data, *version.file(paths.FEATURES_FILE))
    nnz = np.diff(built.tfidf.indptr)
    lengths = np.bincount((built.vocabulary.ngrams != np.uint32(0xFFFFFFFF)).sum(axis=1), minlength=config.max_ngram_length + 1)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(short_hash(data)),
        metadata={
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "tokenizer_model": built.tokenizer_model,
            "tokenizer_sha256": built.tokenizer_sha256,
            "vocabulary_size": built.vocabulary.size,
            "counted_ngrams": built.counted_ngrams,
            "documents": len(texts),
            "coverage": float(np.mean(nnz > 0)),
            "nnz_per_document_median": float(np.median(nnz)),
            "ngrams_by_length": {str(n): int(lengths[n]) for n in range(1, config.max_ngram_length + 1)},
            "idf_min": float(built.vocabulary.idf.min()) if built.vocabulary.size else 0.0,
            "idf_max": float(built.vocabulary.idf.max()) if built.vocabulary.size else 0.0,
            # Counted here, where the sample is tokenised anyway; later stages report rates against these.
            "tokens": int(built.document_tokens.sum()),
            "train_tokens": int(built.document_tokens[np.array(sample["split"].to_pylist()) == "train"].sum()),
            **throughput(seconds, len(texts), int(built.document_tokens.sum())),
            "ngrams_by_idf_band": dg.MetadataValue.md(idf_bands(built)),
        }
    )
