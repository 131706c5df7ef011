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


IDF_BANDS_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("band", "string", "where in the vocabulary's IDF order the n-gram comes from, with that band's IDF range"),
    dg.TableColumn("ngram", "string", "the n-gram: decoded WordPiece tokens, or hashed word ids in hex for the words front end"),
    dg.TableColumn("length", "int", "tokens in the n-gram"),
    dg.TableColumn("document_frequency", "int", "training-sample documents that contain it"),
    dg.TableColumn("idf", "float", "its inverse document frequency, 3 decimals"),
])

LENGTHS_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("length", "int", "n-gram length in tokens"),
    dg.TableColumn("ngrams", "int", "vocabulary n-grams of that length"),
    dg.TableColumn("share", "float", "their share of the vocabulary, 3 decimals"),
])


def idf_bands(built, per_band: int = 8) -> dg.TableMetadataValue:
    """N-grams from the common, middle and rare ends of the IDF range, one per row."""
    tokenizer = load_tokenizer(built.tokenizer_json)
    hashed = built.vocabulary.front_end == "words"  # word ids are hashes: shown in hex, not decoded
    idf = built.vocabulary.idf
    order = np.argsort(idf, kind="stable")
    middle = len(order) // 2 - per_band // 2
    bands = {"common": order[:per_band], "middle": order[middle : middle + per_band], "rare": order[-per_band:]}
    rows = []
    for band, picked in bands.items():
        if not len(picked):
            continue
        label = f"{band} (IDF {idf[picked].min():.2f} to {idf[picked].max():.2f})"
        for i in picked:
            ids = [int(t) for t in built.vocabulary.ngrams[i] if t != PAD]
            gram = " ".join(f"{t:08x}" for t in ids) if hashed else tokenizer.decode(ids)
            rows.append(dg.TableRecord({
                "band": label, "ngram": gram, "length": len(ids),
                "document_frequency": int(built.document_frequency[i]), "idf": round(float(idf[i]), 3),
            }))
    return dg.MetadataValue.table(rows, schema=IDF_BANDS_SCHEMA)


def lengths_table(lengths: np.ndarray, max_length: int) -> dg.TableMetadataValue:
    total = max(int(lengths[1:].sum()), 1)
    rows = [dg.TableRecord({"length": n, "ngrams": int(lengths[n]), "share": round(int(lengths[n]) / total, 3)}) for n in range(1, max_length + 1)]
    return dg.MetadataValue.table(rows, schema=LENGTHS_SCHEMA)


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
            "coverage": round(float(np.mean(nnz > 0)), 4),
            "ngrams_per_document_median": float(np.median(nnz)),
            "ngrams_by_length": lengths_table(lengths, config.max_ngram_length),
            "idf_min": round(float(built.vocabulary.idf.min()), 3) if built.vocabulary.size else 0.0,
            "idf_max": round(float(built.vocabulary.idf.max()), 3) if built.vocabulary.size else 0.0,
            # Counted here, where the sample is tokenised anyway; later stages report rates against these.
            "tokens": int(built.document_tokens.sum()),
            "train_tokens": int(built.document_tokens[np.array(sample["split"].to_pylist()) == "train"].sum()),
            **throughput(seconds, len(texts), int(built.document_tokens.sum())),
            "ngrams_by_idf_band": idf_bands(built),
        }
    )
