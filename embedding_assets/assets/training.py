"""Training: distil the teacher into the lexical student and evaluate it on held-out documents."""

import time

import dagster as dg
import numpy as np
from pydantic import ValidationError

from embedding_assets import paths, versions
from embedding_assets.assets.features import features
from embedding_assets.assets.ingest import training_sample
from embedding_assets.assets.teacher import teacher_embeddings
from embedding_assets.engine.config import DistillConfig
from embedding_assets.progress import ProgressLog, throughput
from embedding_assets.resources import Compute, Storage
from embedding_assets.stored import read_embeddings, read_sample
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, latest_metadata_value
from embedding_assets.placement import GPU_POD_TAGS, GPU_POOL
from embedding_assets.plots import training_curves

UPSTREAM = ("training_sample", "features", "teacher_model", "teacher_embeddings")


class DistillationConfig(DistillConfig, dg.Config):
    """The engine's `DistillConfig` as run config: the same fields, defaults and descriptions.

    Its checks run when the step turns it into the engine's config, so an impossible setting
    fails the step with a message that names it, rather than an error inside Dagster.
    """

    def _consistent(self) -> "DistillationConfig":  # replaces the engine's validator, which `settings` runs
        return self


@dg.asset(
    deps=[features, teacher_embeddings, training_sample],
    group_name="training",
    kinds={"pytorch", "safetensors"},
    owners=OWNERS,
    code_version=CODE_VERSIONS["distilled_model"],
    pool=GPU_POOL,
    op_tags=GPU_POD_TAGS,
    description=(
        "The student: TF-IDF -> sparse first layer -> ReLU/L2 hidden layers -> L2-normalised embedding, trained with the "
        "Gram-matrix KL loss plus a cosine term against the teacher, starting from the closed-form ridge map shrunk toward the teacher's token prior; saved as one safetensors file, and evaluated on held-out documents."
    ),
)
def distilled_model(
    context: dg.AssetExecutionContext, config: DistillationConfig, storage: Storage, compute: Compute
) -> dg.MaterializeResult:
    from embedding_assets.engine.features import Features
    from embedding_assets.engine.model_card import evaluation_table, render
    from embedding_assets.engine.prior import TokenSums
    from embedding_assets.engine.training import train_student

    inputs = {key: versions.published(context, key) for key in UPSTREAM}
    feats = Features.from_bytes(storage.read_bytes(*inputs["features"].file(paths.FEATURES_FILE)))
    teacher_ids, teacher_vectors, teacher_meta = read_embeddings(storage, *inputs["teacher_embeddings"].file(paths.TEACHER_EMBEDDINGS_FILE))
    refuse_tokenizer_mismatch(feats, teacher_meta)
    sample = read_sample(storage, inputs["training_sample"], ["id", "text", "label", "split"])
    if not feats.ids == teacher_ids == sample["id"].to_pylist():
        raise dg.Failure("features, teacher_embeddings and training_sample disagree on the documents; re-materialise them together")
    sums = TokenSums.from_bytes(storage.read_bytes(*inputs["teacher_embeddings"].file(paths.TEACHER_TOKEN_SUMS_FILE))) if config.token_prior and config.init == "ridge" else None
    started = time.perf_counter()
    try:
        embedder, report = train_student(
            feats, teacher_vectors, settings(config), texts=sample["text"].to_pylist(),
            heldout=np.array(sample["split"].to_pylist()) != "train", labels=sample["label"].to_pylist(), token_sums=sums,
            device=compute.torch_device(), on_epoch=epoch_logger(context, config.epochs), provenance=provenance(inputs, teacher_meta),
        )
    except ValueError as exc:
        raise dg.Failure(f"cannot train the student: {exc}", allow_retries=False) from exc
    version = versions.new_version(context, "distilled_model")
    uri = storage.write_bytes(embedder.to_bytes(), *version.file(paths.MODEL_FILE))
    card = render(embedder)
    storage.write_bytes(card.encode(), *version.file(paths.MODEL_CARD_FILE))
    return dg.MaterializeResult(data_version=dg.DataVersion(embedder.version), metadata={
        **training_curves(report.epoch_loss, report.epoch_eval).entries("training_curves"),
        "evaluation": dg.MetadataValue.md(evaluation_table(report.evaluation)),
        "model_card": dg.MetadataValue.md(card),
        "uri": dg.MetadataValue.path(uri),
        **versions.record(context, storage, version),
        **training_metadata(embedder, report),
        **throughput(time.perf_counter() - started, report.train_documents * config.epochs, scaled(latest_metadata_value(context.instance, "features", "train_tokens"), config.epochs)),
    })


def refuse_tokenizer_mismatch(feats, teacher_meta: dict[bytes, bytes]) -> None:
    """The student's n-grams and the teacher's token prior index one vocabulary: features and
    teacher embeddings must come from the same tokenizer, compared by content hash."""
    teacher_model = teacher_meta.get(b"model", b"unknown").decode()
    teacher_hash = teacher_meta.get(b"tokenizer_sha256", b"").decode()
    features_model = feats.tokenizer_model or "unknown"
    if not teacher_hash:
        raise dg.Failure(
            f"teacher_embeddings (teacher {teacher_model}) record no tokenizer hash, so they cannot be matched with the features "
            f"(tokenizer of {features_model}, sha256 {feats.tokenizer_sha256}); re-materialise teacher_embeddings",
            allow_retries=False,
        )
    if teacher_hash != feats.tokenizer_sha256:
        raise dg.Failure(
            f"features were built with the tokenizer of {features_model} (sha256 {feats.tokenizer_sha256}), but teacher_embeddings "
            f"come from {teacher_model}, whose tokenizer is sha256 {teacher_hash}: the n-grams and the teacher's token ids belong to "
            "two vocabularies; re-materialise features (and teacher_embeddings) with one teacher",
            allow_retries=False,
        )


def settings(config: DistillationConfig) -> DistillConfig:
    try:
        return DistillConfig(**config.model_dump())
    except ValidationError as exc:
        problems = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise dg.Failure(f"bad distillation config: {problems}", allow_retries=False) from exc


def epoch_logger(context: dg.AssetExecutionContext, epochs: int):
    progress = ProgressLog(context.log.info, "training", epochs, unit="epochs")
    started = time.perf_counter()

    def log_epoch(epoch, history, fidelity):
        recall = f", held-out recall@10 {fidelity['recall_at_10']:.3f}" if fidelity else ""
        progress.update(epoch + 1, f"loss {history.epoch_loss[-1]:.4f}{recall}, {history.steps / (time.perf_counter() - started):.1f} steps/s")

    return log_epoch


def provenance(inputs: dict, teacher_meta: dict[bytes, bytes]) -> dict:
    """What the model records about its inputs: the teacher and the data versions it was trained from."""
    return {
        "teacher": {k.decode(): v.decode() for k, v in teacher_meta.items()},
        "data_versions": {key: version.data_version for key, version in inputs.items()},
        "code_version": CODE_VERSIONS["distilled_model"],
    }


def scaled(tokens: int | None, epochs: int) -> int | None:
    """Tokens seen over all epochs: rates count every document and token once per epoch."""
    return None if tokens is None else tokens * epochs


def training_metadata(embedder, report) -> dict:
    student, untrained = report.evaluation.get("student", {}), report.evaluation.get("untrained_student", {})
    return {
        "model_version": embedder.version,
        "dims": "-".join(map(str, embedder.dims)),
        "train_documents": report.train_documents,
        "heldout_documents": report.heldout_documents,
        "steps": report.steps,
        "training_seconds": round(report.seconds, 1),
        "loss_start": round(report.loss_start, 5),
        "loss_end": round(report.loss_end, 5),
        "per_epoch": epoch_table(report.epoch_loss, report.epoch_eval),
        "recall_at_10": student.get("recall_at_10"),
        "spearman": student.get("spearman"),
        "untrained_recall_at_10": untrained.get("recall_at_10"),
        "untrained_spearman": untrained.get("spearman"),
        "probe_accuracy": probe_table(report.evaluation.get("probe_accuracy") or {}),
        "quantization_limit": round(report.quantization_limit, 5),
    }


EPOCH_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("epoch", "int", "training epoch, from 1"),
    dg.TableColumn("loss", "float", "mean distillation loss (Gram-KL plus cosine) over the epoch's training batches, 5 decimals"),
    dg.TableColumn("heldout_recall_at_10", "float", "after the epoch: share of each held-out document's 10 nearest teacher neighbours the student also ranks in its 10, 3 decimals"),
    dg.TableColumn("heldout_spearman", "float", "after the epoch: Spearman correlation of student and teacher pairwise cosines on held-out documents, 3 decimals"),
])

PROBE_NAMES = {"teacher": "teacher embedding", "student": "student embedding", "tfidf": "plain scikit-learn TF-IDF"}
PROBE_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("features", "string", "what the linear probe is fitted on"),
    dg.TableColumn("accuracy", "float", "held-out accuracy of a logistic regression on the most frequent labels, fitted on the training split, 3 decimals"),
    dg.TableColumn("vs_teacher", "float", "accuracy / the teacher's accuracy, 2 decimals"),
])


def epoch_table(loss: list[float], fidelity: list[dict]) -> dg.TableMetadataValue:
    rows = []
    for epoch, value in enumerate(loss, start=1):
        measured = fidelity[epoch - 1] if epoch <= len(fidelity) and fidelity[epoch - 1] else {}
        rows.append(dg.TableRecord({
            "epoch": epoch,
            "loss": round(float(value), 5),
            "heldout_recall_at_10": round(float(measured["recall_at_10"]), 3) if "recall_at_10" in measured else None,
            "heldout_spearman": round(float(measured["spearman"]), 3) if "spearman" in measured else None,
        }))
    return dg.MetadataValue.table(rows, schema=EPOCH_SCHEMA)


def probe_table(probes: dict) -> dg.TableMetadataValue:
    teacher = probes.get("teacher")
    rows = [
        dg.TableRecord({
            "features": PROBE_NAMES.get(name, name),
            "accuracy": round(float(accuracy), 3),
            "vs_teacher": round(float(accuracy) / teacher, 2) if teacher else None,
        })
        for name, accuracy in probes.items()
    ]
    return dg.MetadataValue.table(rows, schema=PROBE_SCHEMA)
