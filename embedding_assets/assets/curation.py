"""Curation: the quality classifier on student embeddings, and the scored corpus, shard by shard."""

import json
import time
from dataclasses import replace

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from embedding_assets.assets.features import read_sample
from embedding_assets.assets.ingest import raw_corpus, raw_corpus_path
from embedding_assets.assets.teacher import embedding_column
from embedding_assets.assets.training import MODEL_FILE, distilled_model
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.classifier import QualityClassifier, fit_classifier
from embedding_assets.engine.errors import ArtifactError
from embedding_assets.partitions import corpus_shards
from embedding_assets.plots import score_histogram
from embedding_assets.progress import ProgressLog, peak_rss_mb, throughput
from embedding_assets.resources import Storage
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY
from embedding_assets.sample_corpus import NETWORKING_LABELS
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, BatchHasher, latest_data_version, latest_metadata_value
from embedding_assets.placement import SHARD_POD_TAGS

CLASSIFIER_FILE = "quality_classifier.json"
# Texts are scored on at most this many characters (the raw_corpus gate's default ceiling); the
# rest is cut and counted, so one huge document costs bounded time and memory.
MAX_SCORED_CHARS = 1_000_000
MIN_CALIBRATION_DOCUMENTS = 50


def read_model(storage: Storage) -> LexicalEmbedder:
    """The stored student; a malformed, tampered or foreign file fails the step naming the file."""
    try:
        return LexicalEmbedder.from_bytes(storage.read_bytes(MODEL_FILE))
    except ArtifactError as exc:
        raise dg.Failure(f"{storage.uri(MODEL_FILE)}: {exc}", allow_retries=False) from exc


def read_classifier(storage: Storage) -> QualityClassifier:
    try:
        return QualityClassifier.from_json(storage.read_bytes(CLASSIFIER_FILE))
    except ArtifactError as exc:
        raise dg.Failure(f"{storage.uri(CLASSIFIER_FILE)}: {exc}", allow_retries=False) from exc


def calibration_rows(splits: list[str]) -> np.ndarray:
    """The sample rows the keep threshold and the drift reference come from: the held-out ones.

    The student was fitted to the training documents, and the corpus it scores is mostly
    documents it never saw, which score differently. With too few held-out documents for a
    stable quantile, the whole sample.
    """
    heldout = np.array(splits) != "train"
    return heldout if heldout.sum() >= MIN_CALIBRATION_DOCUMENTS else np.ones(len(heldout), dtype=bool)


class ClassifierConfig(dg.Config):
    positive_labels: list[str] = Field(default=list(NETWORKING_LABELS), description="Labels that count as the documents to keep.")
    target_keep_fraction: float = Field(default=0.2, description="Share of documents the calibrated threshold keeps.")
    seed: int = 0


@dg.asset(
    deps=[distilled_model],
    group_name="curation",
    kinds={"sklearn", "json"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["quality_classifier"],
    retry_policy=STORAGE_RETRY_POLICY,
    description="Logistic regression on student embeddings, trained from the label column, with a keep threshold calibrated once to a target keep fraction of the held-out sample documents.",
)
def quality_classifier(context: dg.AssetExecutionContext, config: ClassifierConfig, storage: Storage) -> dg.MaterializeResult:
    from sklearn.metrics import accuracy_score, roc_auc_score

    started = time.perf_counter()
    embedder = read_model(storage)
    sample = read_sample(storage, ["id", "text", "label", "split"])
    embeddings = embedder.encode(sample["text"].to_pylist())
    positives = set(config.positive_labels)
    y = np.array([label in positives for label in sample["label"].to_pylist()])
    train = np.array(sample["split"].to_pylist()) == "train"
    reference = calibration_rows(sample["split"].to_pylist())
    try:
        classifier = fit_classifier(
            embeddings[train], y[train], embeddings[reference], sorted(positives), config.target_keep_fraction, embedder.version, config.seed
        )
    except ValueError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    sample_scores = classifier.score(embeddings)
    heldout_scores = sample_scores[~train]
    evaluation = {
        "heldout_auc": round(float(roc_auc_score(y[~train], heldout_scores)), 4) if len(set(y[~train])) == 2 else None,
        "heldout_accuracy": round(float(accuracy_score(y[~train], heldout_scores >= 0.5)), 4),
        "positive_share": round(float(y.mean()), 4),
        "calibrated_on": "sample" if reference.all() else "heldout",
        "calibration_keep_fraction": round(float(classifier.keep(sample_scores[reference]).mean()), 4),
        "sample_keep_fraction": round(float(classifier.keep(sample_scores).mean()), 4),
        "sample_score_deciles": [float(q) for q in np.quantile(sample_scores[reference], np.linspace(0.1, 0.9, 9))],
    }
    classifier = replace(classifier, evaluation=evaluation)
    uri = storage.write_bytes(classifier.to_json().encode(), CLASSIFIER_FILE)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(classifier.version),
        metadata={
            "uri": dg.MetadataValue.path(uri),
            "classifier_version": classifier.version,
            "model_version": embedder.version,
            "threshold": round(classifier.threshold, 6),
            "target_keep_fraction": config.target_keep_fraction,
            "positive_labels": classifier.positive_labels,
            **{k: v for k, v in evaluation.items() if k != "sample_score_deciles"},
            **throughput(time.perf_counter() - started, len(y), latest_metadata_value(context.instance, "training_sample", "tokens")),
        }
    )


def scored_schema(dim: int, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.uint8(), dim), nullable=False),
            pa.field("score", pa.float32(), nullable=False),
            pa.field("keep", pa.bool_(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("classifier_version", pa.string(), nullable=False),
        ],
        metadata=metadata,
    )


@dg.asset(
    partitions_def=corpus_shards,
    deps=[raw_corpus, quality_classifier],
    group_name="curation",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "string"), dg.TableColumn("embedding", "fixed_size_list<uint8>[dim]", "quantised student embedding"), dg.TableColumn("score", "float32", "classifier probability in [0, 1]"), dg.TableColumn("keep", "bool", "score >= the calibrated threshold"), dg.TableColumn("model_version", "string"), dg.TableColumn("classifier_version", "string")])},
    code_version=CODE_VERSIONS["scored_corpus"],
    retry_policy=STORAGE_RETRY_POLICY,
    op_tags=SHARD_POD_TAGS,
    # Missing partitions, and partitions whose shard, model or classifier was re-materialised.
    automation_condition=dg.AutomationCondition.eager(),
    description="Every document of a shard with its uint8 student embedding, score, keep decision and the versions that produced them.",
)
def scored_corpus(context: dg.AssetExecutionContext, storage: Storage) -> dg.MaterializeResult:
    shard = context.partition_key
    embedder = read_model(storage)
    classifier = read_classifier(storage)
    if classifier.model_version != embedder.version:
        raise dg.Failure(
            f"quality_classifier was trained on model {classifier.model_version}, but distilled_model is {embedder.version}; re-materialise quality_classifier",
            allow_retries=False,
        )
    lineage = {
        "shard": shard,
        "raw_shard_version": latest_data_version(context.instance, "raw_corpus", shard) or "unknown",
        "model_version": embedder.version,
        "classifier_version": classifier.version,
        "threshold": repr(classifier.threshold),
        "quantization_limit": repr(embedder.quantization_limit),
        "code_versions": json.dumps(CODE_VERSIONS, sort_keys=True),
    }
    schema = scored_schema(embedder.dim, lineage)
    kept = truncated = 0
    score_hist = np.zeros(20, dtype=np.int64)
    started = time.perf_counter()

    def scored_batches():
        nonlocal kept, truncated
        with storage.open_parquet(*raw_corpus_path(shard)) as parquet:
            progress = ProgressLog(context.log.info, f"scoring {shard}", parquet.metadata.num_rows)
            done = 0
            for batch in parquet.iter_batches(batch_size=8192, columns=["id", "text"]):
                texts = batch.column("text").to_pylist()
                long = [i for i, text in enumerate(texts) if len(text) > MAX_SCORED_CHARS]
                for i in long:
                    texts[i] = texts[i][:MAX_SCORED_CHARS]
                truncated += len(long)
                vectors = embedder.encode(texts)
                scores = classifier.score(vectors)
                keep = classifier.keep(scores)
                kept += int(keep.sum())
                score_hist[:] += np.histogram(scores, bins=20, range=(0.0, 1.0))[0]
                n = batch.num_rows
                done += n
                progress.update(done, f"{kept:,} kept")
                yield pa.record_batch(
                    [
                        batch.column("id"),
                        embedding_column(embedder.quantize(vectors)),
                        pa.array(scores, pa.float32()),
                        pa.array(keep, pa.bool_()),
                        pa.array([embedder.version] * n, pa.string()),
                        pa.array([classifier.version] * n, pa.string()),
                    ],
                    schema=schema,
                )

    hasher = BatchHasher()
    uri, rows = storage.write_parquet(hasher.wrap(scored_batches()), schema, "scored_corpus", f"{shard}.parquet")
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hasher.version),
        metadata={
            "dagster/row_count": rows,
            "raw_shard_version": lineage["raw_shard_version"],
            "code_versions": CODE_VERSIONS,
            "uri": dg.MetadataValue.path(uri),
            "kept": kept,
            "truncated_texts": truncated,
            "keep_fraction": round(kept / max(rows, 1), 4),
            "threshold": round(classifier.threshold, 6),
            "model_version": embedder.version,
            "classifier_version": classifier.version,
            "score_histogram": dg.MetadataValue.md(score_histogram([int(c) for c in score_hist], classifier.threshold)),
            **throughput(seconds, rows, latest_metadata_value(context.instance, "raw_corpus", "tokens", shard)),
            # Of this step's process: stays flat as shards grow, since batches stream.
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
