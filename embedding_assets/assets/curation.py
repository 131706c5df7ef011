"""Curation: the quality classifier on student embeddings, and the scored corpus, shard by shard."""

import json
import os
import time
from dataclasses import dataclass, replace

import dagster as dg
import numpy as np
import pyarrow as pa

from embedding_assets.assets.ingest import corpus_shards_now, id_hash, raw_corpus, shared_id_failures, training_sample
from embedding_assets.assets.reference import NEGATIVE, REFERENCE, annotation_targets, annotations, reference_set, text_hash
from embedding_assets.assets.selection import clusters, current_centroids
from embedding_assets.assets.training import distilled_model
from embedding_assets import versions
from embedding_assets.paths import ANNOTATIONS_FILE, HEAD_CARD_FILE, HEAD_FILE, MODEL_FILE, REFERENCE_FILE, shard_file
from embedding_assets.stored import embedding_column, read_sample
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.clustering import assign_clusters
from embedding_assets.engine.curation import (
    NONE,
    CurationHead,
    cross_fitted_head,
    head_card,
    lexical_features,
    lexical_similarity_head,
    no_head,
    similarity_head,
    unit_centroid,
)
from embedding_assets.engine.errors import ArtifactError
from embedding_assets.partitions import corpus_shards
from embedding_assets.interrupts import stop_on_interrupt
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, BatchHasher, code_versions_table, latest_metadata_value, short_hash
from embedding_assets.placement import SHARD_POD_TAGS
from embedding_assets.plots import score_histogram
from embedding_assets.progress import ProgressLog, StepMemory, throughput
from embedding_assets.resources import CorpusSource, Storage
from embedding_assets.resources.curation import Curation, CurationSettingsError
from embedding_assets.resources.storage import STORAGE_RETRY_POLICY

# Texts are scored on at most this many characters (the raw_corpus gate's default ceiling); the
# rest is cut and counted, so one huge document costs bounded time and memory.
MAX_SCORED_CHARS = 1_000_000
# The keep threshold is the quantile of this many corpus documents' scores (every document of a
# smaller corpus): the kept share of the corpus is then the target to within sqrt(p(1-p)/n).
CALIBRATION_DOCUMENTS = int(os.environ.get("EMBEDDING_ASSETS_CALIBRATION_DOCUMENTS") or 100_000)
SHARDS_PER_RUN = int(os.environ.get("EMBEDDING_ASSETS_SHARDS_PER_RUN") or 16)
SCORE_BINS = 20


def read_model(storage: Storage, version: versions.Version) -> LexicalEmbedder:
    """The stored student; a malformed, tampered or foreign file fails the step naming the file."""
    try:
        return LexicalEmbedder.from_bytes(storage.read_bytes(*version.file(MODEL_FILE)))
    except ArtifactError as exc:
        raise dg.Failure(f"{storage.uri(*version.file(MODEL_FILE))}: {exc}", allow_retries=False) from exc


def read_head(storage: Storage, version: versions.Version) -> CurationHead:
    try:
        return CurationHead.from_bytes(storage.read_bytes(*version.file(HEAD_FILE)))
    except ArtifactError as exc:
        raise dg.Failure(f"{storage.uri(*version.file(HEAD_FILE))}: {exc}", allow_retries=False) from exc


@dataclass
class Calibration:
    """Scores of the corpus documents the keep threshold is calibrated on (blank texts at -inf: never
    kept), their ids, and which of them the student was fitted on (the sample's training split)."""

    ids: list[str]
    scores: np.ndarray
    blank: np.ndarray
    in_training_sample: np.ndarray
    corpus_documents: int
    source: str  # corpus, corpus draw, or training sample

    def keep_rates(self, head: CurationHead, scores: np.ndarray | None = None) -> dict:
        kept = head.keep(self.scores if scores is None else scores)
        inside, outside = kept[self.in_training_sample], kept[~self.in_training_sample]
        return {
            "calibration_keep_fraction": round(float(kept.mean()), 4),
            "keep_rate_training_sample": round(float(inside.mean()), 4) if len(inside) else None,
            "keep_rate_outside_training_sample": round(float(outside.mean()), 4) if len(outside) else None,
        }


def training_ids(sample) -> list[str]:
    return [i for i, split in zip(sample["id"].to_pylist(), sample["split"].to_pylist()) if split == "train"]


def calibration_scores(context, storage: Storage, corpus: CorpusSource, embedder: LexicalEmbedder, head: CurationHead, sample,
                       mapped: bool = True) -> Calibration:
    """The head's scores of every corpus document, or of a draw of CALIBRATION_DOCUMENTS by a hash of
    the id when the corpus is larger, read shard by shard as scoring reads them: as `score_documents`
    gives them, or (`mapped` off) before the map of the student's training documents' scores.

    When the corpus location holds no usable shard now (another location, or shards not yet
    ingested), the training sample instead: a seeded draw of the same corpus."""
    inside_ids = set(training_ids(sample))
    score = head.score_documents if mapped else head.score_unmapped
    try:
        found = corpus_shards_now(context, corpus)
        files = [found.published[shard].file(shard_file(shard)) for shard in found.usable]
    except dg.Failure as exc:
        context.log.warning(f"the keep threshold is calibrated on the training sample, not the corpus: {exc.description}")
        files = []

    total = 0
    for parts in files:
        with storage.open_parquet(*parts) as parquet:
            total += parquet.metadata.num_rows
    cut = round(min(1.0, CALIBRATION_DOCUMENTS / max(total, 1)) * 1_000_000)

    def batches():
        if not files:
            yield sample["id"].to_pylist(), sample["text"].to_pylist()
            return
        for parts in files:
            with storage.open_parquet(*parts) as parquet:
                for batch in parquet.iter_batches(batch_size=8192, columns=["id", "text"]):
                    batch_ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
                    if cut < 1_000_000:
                        chosen = np.flatnonzero(id_hash(batch_ids, "calibration") % np.uint64(1_000_000) < np.uint64(cut))
                        batch_ids, texts = [batch_ids[i] for i in chosen], [texts[i] for i in chosen]
                    yield batch_ids, texts

    all_ids, scores, blanks = [], [], []
    for batch_ids, texts in batches():
        texts = [t[:MAX_SCORED_CHARS] for t in texts]
        blank = np.array([not t.strip() for t in texts], dtype=bool)
        batch_scores = score(embedder, batch_ids, texts)[1].astype(np.float64)
        batch_scores[blank] = -np.inf
        all_ids += batch_ids
        scores.append(batch_scores)
        blanks.append(blank)
    scores = np.concatenate(scores) if scores else np.empty(0)
    source = "training sample" if not files else ("corpus" if len(scores) == total else "corpus draw")
    inside = np.array([i in inside_ids for i in all_ids], dtype=bool)
    return Calibration(all_ids, scores, np.concatenate(blanks) if blanks else np.empty(0, bool), inside, total if files else len(all_ids), source)


@dataclass
class HeadData:
    """What a head learns from and is measured on: texts with a target (bool, or a float score)."""

    train_texts: list[str]
    train_targets: np.ndarray
    eval_texts: list[str]
    eval_targets: np.ndarray
    counts: dict
    # Ids of the training rows, and which of them are corpus documents (scored later by the fold head that did not see them).
    train_ids: list[str] | None = None
    train_in_corpus: np.ndarray | None = None


def fail(message: str) -> dg.Failure:
    return dg.Failure(message, allow_retries=False)


def labels_data(sample, positive_labels: list[str]) -> HeadData:
    if "label" not in sample.column_names or sample["label"].null_count == sample.num_rows:
        raise fail(
            "curation mode labels needs a label column in the corpus, and this corpus has none; "
            "use --reference with --curation reference-classifier or reference-similarity, or --annotations"
        )
    texts = sample["text"].to_pylist()
    y = np.isin(np.array(sample["label"].to_pylist(), dtype=object), list(positive_labels))
    if not y.any():
        found = sorted({label for label in sample["label"].to_pylist() if label is not None})
        raise fail(f"no sample document has one of the positive labels {sorted(positive_labels)} (--positive-labels); the corpus's labels include {found[:20]}")
    train = np.array(sample["split"].to_pylist()) == "train"
    ids = sample["id"].to_pylist()
    return HeadData(
        [t for t, r in zip(texts, train) if r], y[train], [t for t, r in zip(texts, ~train) if r], y[~train],
        {"positive_documents": int(y.sum()), "negative_documents": int((~y).sum())},
        [i for i, r in zip(ids, train) if r], np.ones(int(train.sum()), bool),
    )


def reference_data(storage: Storage, references: versions.Version, sample, curation: Curation) -> HeadData:
    """References against the sample's training documents (or the negative references), split by id hash."""
    refs = read_table(storage, references.file(REFERENCE_FILE))
    role, split = np.array(refs["role"].to_pylist()), np.array(refs["split"].to_pylist())
    texts = refs["text"].to_pylist()
    ref_ids = [f"reference:{i}" for i in refs["id"].to_pylist()]
    positive = role == REFERENCE
    if (role == NEGATIVE).any():
        negative_texts, negative_split = [t for t, r in zip(texts, ~positive) if r], split[~positive]
        negative_ids, negative_in_corpus = [i for i, r in zip(ref_ids, ~positive) if r], False
    else:
        # Corpus documents that are also references are not negatives.
        known = set(text_hash(texts)) | set(refs["id"].to_pylist())
        ids, sample_texts = sample["id"].to_pylist(), sample["text"].to_pylist()
        usable = [i for i, (doc_id, h) in enumerate(zip(ids, text_hash(sample_texts))) if doc_id not in known and h not in known]
        negative_texts = [sample_texts[i] for i in usable][: curation.max_negatives]
        negative_split = np.array(sample["split"].to_pylist(), dtype=object)[usable][: curation.max_negatives]
        negative_ids, negative_in_corpus = [ids[i] for i in usable][: curation.max_negatives], True
    pos_texts, pos_split = [t for t, r in zip(texts, positive) if r], split[positive]
    pos_ids = [i for i, r in zip(ref_ids, positive) if r]

    def part(which: str):
        chosen_pos = [(t, i) for t, s, i in zip(pos_texts, pos_split, pos_ids) if s == which]
        chosen_neg = [(t, i) for t, s, i in zip(negative_texts, negative_split, negative_ids) if s == which]
        rows = chosen_pos + chosen_neg
        return ([t for t, _ in rows], np.r_[np.ones(len(chosen_pos), bool), np.zeros(len(chosen_neg), bool)], [i for _, i in rows],
                np.r_[np.zeros(len(chosen_pos), bool), np.full(len(chosen_neg), negative_in_corpus)])

    train_texts, train_y, train_ids, train_in_corpus = part("train")
    eval_texts, eval_y, _, _ = part("heldout")
    counts = {"reference_documents": len(pos_texts), "negative_documents": len(negative_texts),
              "measured_against": "corpus" if negative_in_corpus else "negative references"}
    return HeadData(train_texts, train_y, eval_texts, eval_y, counts, train_ids, train_in_corpus)


def annotations_data(storage: Storage, annotated: versions.Version, curation: Curation) -> HeadData:
    table = read_table(storage, annotated.file(ANNOTATIONS_FILE))
    texts, train = table["text"].to_pylist(), np.array(table["split"].to_pylist()) == "train"
    if "score" in table.column_names:
        y = table["score"].to_numpy().astype(np.float64)
    else:
        y = annotation_targets(table["label"].to_pylist(), curation.positive_labels)
    ids = table["id"].to_pylist()
    return HeadData(
        [t for t, r in zip(texts, train) if r], y[train], [t for t, r in zip(texts, ~train) if r], y[~train],
        {"annotated_documents": len(texts)},
        [i for i, r in zip(ids, train) if r], np.ones(int(train.sum()), bool),
    )


def read_table(storage: Storage, parts: tuple[str, ...]):
    with storage.open_parquet(*parts) as parquet:
        return parquet.read()


def fit_head(embedder: LexicalEmbedder, mode: str, data: HeadData, curation: Curation, settings: dict) -> CurationHead:
    if mode == "reference-similarity":
        positives = [t for t, y in zip(data.train_texts + data.eval_texts, np.r_[data.train_targets, data.eval_targets]) if y]
        if not curation.lexical:
            return similarity_head(embedder.version, settings, embedder.encode(positives))
        # The lexical term's weight is chosen on held-out references against the sample's documents.
        documents = [t for t, y in zip(data.train_texts, data.train_targets) if not y]
        return lexical_similarity_head(embedder.version, settings, embedder.encode(positives), lexical_features(embedder, positives),
                                       [f"reference:{i}" for i in range(len(positives))], embedder.encode(documents), lexical_features(embedder, documents))
    kind = "ridge" if data.train_targets.dtype.kind == "f" else "logistic"
    if kind == "logistic" and len(set(data.train_targets.tolist())) < 2:
        raise fail(f"curation mode {mode}: the training documents need both wanted and unwanted examples; got {data.counts}")
    embeddings = embedder.encode(data.train_texts)
    lexical = lexical_features(embedder, data.train_texts) if curation.lexical else None
    try:
        return cross_fitted_head(mode, kind, embedder.version, settings, embeddings, data.train_targets, lexical, data.train_ids, data.train_in_corpus)
    except ValueError as exc:
        raise fail(f"curation mode {mode}: {exc}") from exc


def head_evaluation(embedder: LexicalEmbedder, head: CurationHead, data: HeadData) -> dict:
    """How well the head ranks held-out documents it did not learn from."""
    from scipy.stats import spearmanr
    from sklearn.metrics import average_precision_score, roc_auc_score

    threshold = head.threshold
    if head.kind == "similarity":
        train_refs = [t for t, y in zip(data.train_texts, data.train_targets) if y]
        centroid = head.settings["lexical_weight"] * unit_centroid(lexical_features(embedder, train_refs)) if head.lexical else None
        head = similarity_head(head.model_version, head.settings, embedder.encode(train_refs), centroid)
    if not data.eval_texts:
        return {"heldout_documents": 0}
    scores = head.score_texts(embedder, data.eval_texts)[1]
    y = data.eval_targets
    evaluation = {"heldout_documents": len(y)}
    if head.kind == "ridge":
        evaluation["heldout_spearman"] = round(float(spearmanr(scores, y).statistic), 4) if len(y) > 2 else None
    elif len(set(y.tolist())) == 2:
        evaluation["heldout_auc"] = round(float(roc_auc_score(y, scores)), 4)
        evaluation["heldout_average_precision"] = round(float(average_precision_score(y, scores)), 4)
        evaluation["heldout_positives"] = int(y.sum())
        # What a user can act on: how often a new document like the wanted examples passes the keep rule.
        evaluation["heldout_wanted_kept"] = round(float((scores[y.astype(bool)] >= threshold).mean()), 4)
        evaluation["heldout_measures"] = HELDOUT_MEANING[data.counts.get("measured_against", "labels")]
    evaluation["corpus_quality_estimate"] = (
        "none: the corpus has no labels, so the kept set's precision and recall are unknown; the held-out figures say how well the head "
        "tells the examples apart, not how pure the kept set is (bench.curation measures both on labelled corpora)"
    )
    return evaluation


HELDOUT_MEANING = {
    "corpus": "held-out references ranked against held-out corpus sample documents, some of which may be wanted too: not the corpus's AP",
    "negative references": "held-out references ranked against held-out negative references",
    "labels": "held-out wanted documents ranked against held-out unwanted ones",
}


@dg.asset(
    deps=[distilled_model, training_sample, reference_set, annotations],
    group_name="curation",
    kinds={"sklearn", "safetensors"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["quality_classifier"],
    retry_policy=STORAGE_RETRY_POLICY,
    description=(
        "The curation head on student embeddings (and the student's n-gram TF-IDF features), in the mode the curation settings choose: "
        "labels, reference-classifier, reference-similarity or annotations; its keep threshold is calibrated once to a target keep "
        "fraction of the corpus's documents (a draw of them past 100,000), each scored as scored_corpus scores it, so every shard is judged by the same rule. With no curation configured, documents are embedded, not scored."
    ),
)
@stop_on_interrupt
def quality_classifier(context: dg.AssetExecutionContext, storage: Storage, curation: Curation, corpus: CorpusSource) -> dg.MaterializeResult:
    try:
        mode = curation.check()
    except CurationSettingsError as exc:
        raise fail(str(exc)) from exc
    started = time.perf_counter()
    embedder = read_model(storage, versions.published(context, "distilled_model"))
    sample = read_sample(storage, versions.published(context, "training_sample"), ["id", "text", "label", "split"])
    settings = curation.settings()
    lineage = {}
    if mode == NONE:
        head = no_head(embedder.version)
        context.log.warning("no curation is configured: documents will be embedded but not scored; set --reference, --annotations or --positive-labels")
    else:
        if mode == "labels":
            data = labels_data(sample, curation.positive_labels)
        elif mode == "annotations":
            annotated = versions.published(context, "annotations")
            data = annotations_data(storage, annotated, curation)
            lineage["annotations_version"] = annotated.data_version or "unknown"
        else:
            references = versions.published(context, "reference_set")
            data = reference_data(storage, references, sample, curation)
            lineage["reference_set_version"] = references.data_version or "unknown"
        settings = {**settings, **lineage}
        head = fit_head(embedder, mode, data, curation, settings)
        calibration = calibration_scores(context, storage, corpus, embedder, head, sample, mapped=False)
        if len(calibration.scores) == 0:
            raise fail("no corpus document to calibrate the keep threshold on")
        head, scores = head.calibrated_on_scores(calibration.ids, calibration.scores, calibration.blank, training_ids(sample), curation.keep_fraction)
        evaluation = {
            **head.evaluation,
            **head_evaluation(embedder, head, data),
            **data.counts,
            "calibrated_on": calibration.source,
            "calibration_documents": len(calibration.scores),
            **calibration.keep_rates(head, scores),
            "scores_mapped": head.sample_keys is not None,
        }
        head = replace(head, evaluation=evaluation)
    version = versions.new_version(context, "quality_classifier")
    uri = storage.write_bytes(head.to_bytes(), *version.file(HEAD_FILE))
    card = head_card(head)
    storage.write_bytes(card.encode(), *version.file(HEAD_CARD_FILE))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(head.version),
        metadata={
            "uri": dg.MetadataValue.path(uri),
            **versions.record(context, storage, version),
            "card": dg.MetadataValue.md(card),
            "mode": mode,
            "classifier_version": head.version,
            "model_version": embedder.version,
            "threshold": round(head.threshold, 6) if head.scores else "none (no score)",
            "target_keep_fraction": curation.keep_fraction,
            "settings": settings_table(settings),
            **({"positive_labels": labels_table(settings["positive_labels"])} if settings.get("positive_labels") else {}),
            **head.evaluation,
            **throughput(time.perf_counter() - started, sample.num_rows, latest_metadata_value(context.instance, "features", "tokens")),
        },
    )


SETTINGS_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("setting", "string", "curation setting the head was fitted with (its lineage)"),
    dg.TableColumn("value", "string", "its value; lists are counted here and listed in their own table"),
])
LABELS_SCHEMA = dg.TableSchema(columns=[dg.TableColumn("label", "string", "a label whose documents the head learns to keep (--positive-labels)")])


def settings_table(settings: dict) -> dg.TableMetadataValue:
    def shown(value) -> str:
        return f"{len(value)} values, listed in their own table" if isinstance(value, (list, tuple)) else str(value)

    return dg.MetadataValue.table([dg.TableRecord({"setting": k, "value": shown(v)}) for k, v in sorted(settings.items())], schema=SETTINGS_SCHEMA)


def labels_table(labels: list[str]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table([dg.TableRecord({"label": label}) for label in sorted(labels)], schema=LABELS_SCHEMA)


def scored_schema(dim: int, metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.uint8(), dim), nullable=False),
            # Null when no curation is configured: the shard is embedded, not scored.
            pa.field("score", pa.float32()),
            pa.field("keep", pa.bool_()),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("classifier_version", pa.string(), nullable=False),
            # Null when no clusters exist for this model yet; near_duplicates then refuses the shard.
            pa.field("cluster", pa.int32(), nullable=True),
            pa.field("centroid_cosine", pa.float32(), nullable=True),
        ],
        metadata=metadata,
    )


@dg.asset(
    partitions_def=corpus_shards,
    deps=[raw_corpus, distilled_model, quality_classifier, clusters],
    group_name="curation",
    kinds={"parquet"},
    owners=OWNERS,
    metadata={"dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "string", "document id, in the raw shard's order"), dg.TableColumn("embedding", "fixed_size_list<uint8>[dim]", "quantised student embedding"), dg.TableColumn("score", "float32", "the curation head's score: a probability in [0, 1] (classifier modes), a mean top-k cosine (reference-similarity) or a predicted annotation score; null when no curation is configured"), dg.TableColumn("keep", "bool", "score >= the calibrated threshold and the text is not empty; null when no curation is configured"), dg.TableColumn("model_version", "string", "distilled_model version that embedded the document"), dg.TableColumn("classifier_version", "string", "quality_classifier (curation head) version that scored it"), dg.TableColumn("cluster", "int32", "nearest clusters centroid; null before clusters exist for the model"), dg.TableColumn("centroid_cosine", "float32", "cosine to that centroid")])},
    code_version=CODE_VERSIONS["scored_corpus"],
    retry_policy=STORAGE_RETRY_POLICY,
    op_tags=SHARD_POD_TAGS,
    # A backfill (UI, CLI, automation) scores up to SHARDS_PER_RUN shards per run, loading the model once
    # per run instead of once per shard, and paying one run's start for them all.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SHARDS_PER_RUN),
    # Missing partitions, and partitions whose shard, model or classifier was re-materialised, once
    # every input's blocking checks passed (the step itself also refuses an input that failed one).
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description="Every document of a shard with its uint8 student embedding, score, keep decision and the versions that produced them.",
)
@stop_on_interrupt
def scored_corpus(context: dg.AssetExecutionContext, storage: Storage) -> dg.MaterializeResult:
    shards = context.partition_keys
    memory = StepMemory.start()
    clashes = shared_id_failures(context.instance)
    for shard in shards:
        shared = clashes.get(shard)
        if shared:
            raise dg.Failure(f"raw_corpus[{shard}] is not scored: it {shared}; remove or fix one of the shards, then materialise corpus_id_index", allow_retries=False)
    raws = versions.published_many(context, "raw_corpus", shards)
    embedder = read_model(storage, versions.published(context, "distilled_model"))
    head = read_head(storage, versions.published(context, "quality_classifier"))
    if head.model_version != embedder.version:
        raise dg.Failure(
            f"quality_classifier was fitted on model {head.model_version}, but distilled_model is {embedder.version}; re-materialise quality_classifier",
            allow_retries=False,
        )
    centroids, clusters_version = current_centroids(context, storage, embedder.version)
    if centroids is None:
        context.log.warning(f"no clusters for model {embedder.version}: the cluster columns stay null; materialise clusters, then score the shards again")
    # The model, head and centroids are loaded once per step, however many shards it scores (BackfillPolicy).
    scored = {shard: score_shard(context, storage, shard, raws[shard], embedder, head, centroids, clusters_version) for shard in shards}
    # The step's own memory, which stays flat as shards grow, since batches stream.
    step_memory = memory.report()
    if len(shards) == 1:
        data_version, metadata = scored[shards[0]]
        return dg.MaterializeResult(data_version=dg.DataVersion(data_version), metadata={**metadata, **step_memory})
    # A step's output has one data version for all its partitions: each shard's own is in its metadata.
    for shard, (data_version, metadata) in scored.items():
        context.add_asset_metadata({**metadata, **step_memory, "shard_content_version": data_version}, partition_key=shard)
    return dg.MaterializeResult(data_version=dg.DataVersion(short_hash(*(scored[shard][0] for shard in shards))))


def score_shard(context, storage: Storage, shard: str, raw: versions.Version, embedder: LexicalEmbedder, head: CurationHead, centroids, clusters_version: str) -> tuple[str, dict]:
    """Score one shard into a new version of scored_corpus[shard]: its content hash and its materialisation metadata."""
    lineage = {
        "shard": shard,
        "raw_shard_version": raw.data_version or "unknown",
        "model_version": embedder.version,
        "classifier_version": head.version,
        "curation_mode": head.mode,
        "curation_settings": json.dumps(head.settings, sort_keys=True),
        "threshold": repr(head.threshold),
        "quantization_limit": repr(embedder.quantization_limit),
        "code_versions": json.dumps(CODE_VERSIONS, sort_keys=True),
        "clusters_version": clusters_version,
    }
    schema = scored_schema(embedder.dim, lineage)
    kept = truncated = empty = 0
    low, high = head.score_range
    score_hist = np.zeros(SCORE_BINS, dtype=np.int64)
    started = time.perf_counter()

    def scored_batches():
        nonlocal kept, truncated, empty
        with storage.open_parquet(*raw.file(shard_file(shard))) as parquet:
            progress = ProgressLog(context.log.info, f"scoring {shard}", parquet.metadata.num_rows)
            done = 0
            for batch in parquet.iter_batches(batch_size=8192, columns=["id", "text"]):
                texts = batch.column("text").to_pylist()
                long = [i for i, text in enumerate(texts) if len(text) > MAX_SCORED_CHARS]
                for i in long:
                    texts[i] = texts[i][:MAX_SCORED_CHARS]
                truncated += len(long)
                blank = np.array([not text.strip() for text in texts])
                empty += int(blank.sum())
                # The documents the head or the student was fitted on are judged as unseen ones (score_documents).
                vectors, scores = head.score_documents(embedder, batch.column("id").to_pylist(), texts)
                n = batch.num_rows
                if head.scores:
                    # An empty text has nothing to judge; it is scored as such and never kept.
                    keep = head.keep(scores) & ~blank
                    kept += int(keep.sum())
                    score_hist[:] += np.histogram(np.clip(scores, low, high), bins=SCORE_BINS, range=(low, high))[0]
                    score_column, keep_column = pa.array(scores, pa.float32()), pa.array(keep, pa.bool_())
                else:
                    score_column, keep_column = pa.nulls(n, pa.float32()), pa.nulls(n, pa.bool_())
                if centroids is not None:
                    cluster, centroid_cosine = (pa.array(a) for a in assign_clusters(vectors, centroids))
                else:
                    cluster, centroid_cosine = pa.nulls(n, pa.int32()), pa.nulls(n, pa.float32())
                done += n
                progress.update(done, f"{kept:,} kept" if head.scores else "embedded")
                yield pa.record_batch(
                    [
                        batch.column("id"),
                        embedding_column(embedder.quantize(vectors)),
                        score_column,
                        keep_column,
                        pa.array([embedder.version] * n, pa.string()),
                        pa.array([head.version] * n, pa.string()),
                        cluster,
                        centroid_cosine,
                    ],
                    schema=schema,
                )

    hasher = BatchHasher()
    version = versions.new_version(context, "scored_corpus", shard)
    uri, rows = storage.write_parquet(hasher.wrap(scored_batches()), schema, *version.file(shard_file(shard)))
    seconds = time.perf_counter() - started
    scoring = (
        {
            "kept": kept,
            "keep_fraction": round(kept / max(rows, 1), 4),
            "threshold": round(head.threshold, 6),
            **score_histogram(
                [int(c) for c in score_hist], head.threshold, (low, high),
                f"Scores of the {rows:,} documents of shard {shard}; {kept:,} kept ({100 * kept / max(rows, 1):.1f}%) at the keep threshold {head.threshold:.3f}",
            ).entries("score_histogram"),
            # The next scoring of this shard is compared with these (scored_corpus_drift).
            "score_bins": [int(c) for c in score_hist],
        }
        if head.scores
        else {"scores": "none: no curation is configured (set --reference, --annotations or --positive-labels)"}
    )
    return hasher.version, {
        "shard": shard,
        "dagster/row_count": rows,
        "raw_shard_version": lineage["raw_shard_version"],
        "code_versions": code_versions_table(),
        "uri": dg.MetadataValue.path(uri),
        **versions.record(context, storage, version),
        "curation_mode": head.mode,
        **scoring,
        "truncated_texts": truncated,
        "empty_texts": empty,
        "model_version": embedder.version,
        "classifier_version": head.version,
        "clustered": centroids is not None,
        **throughput(seconds, rows, latest_metadata_value(context.instance, "raw_corpus", "tokens_estimate", shard)),
    }
