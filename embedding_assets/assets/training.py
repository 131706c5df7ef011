"""Training: distil the teacher into the lexical student and evaluate it on held-out documents."""

import time
from typing import Literal

import dagster as dg
import torch
import numpy as np
from pydantic import Field

from embedding_assets.assets.features import FEATURES_FILE, features, read_sample
from embedding_assets.assets.teacher import TEACHER_FILE, TOKEN_SUMS_FILE, read_embeddings, teacher_embeddings
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.distill import DistillConfig, batch_loss, distill, embed
from embedding_assets.engine.evaluation import (
    cosine_spearman,
    neighbour_recall,
    probe_accuracy,
    probe_labels,
    tfidf_probe_accuracy,
)
from embedding_assets.engine.features import Features
from embedding_assets.engine.network import forward, init_layers, l2_normalize
from embedding_assets.engine.prior import TokenSums, unigram_prior
from embedding_assets.engine.quantization import calibrate_limit
from embedding_assets.progress import ProgressLog, throughput
from embedding_assets.resources import Compute, Storage
from embedding_assets.lineage import CODE_VERSIONS, OWNERS, latest_data_version, latest_metadata_value
from embedding_assets.placement import GPU_POD_TAGS, GPU_POOL
from embedding_assets.plots import training_curves

MODEL_FILE = "distilled_model.safetensors"
MODEL_CARD_FILE = "distilled_model.md"


class DistillationConfig(dg.Config):
    """The knobs of `DistillConfig`; the defaults are the measured best (README, "Fidelity")."""

    hidden_dims: list[int] = Field(default=list(DistillConfig.hidden_dims), description="Hidden layer sizes after the sparse first layer.")
    output_dim: int = Field(default=0, description="Embedding size; 0 uses the teacher's.")
    epochs: int = Field(default=DistillConfig.epochs, description="Passes over the training split.")
    batch_size: int = Field(default=DistillConfig.batch_size, description="Documents per step; the loss compares every pair in a batch.")
    learning_rate: float = Field(default=DistillConfig.learning_rate, description="Peak AdamW learning rate of the warmup-stable-decay schedule.")
    temperature: float = Field(default=DistillConfig.temperature, description="Softmax temperature of the Gram-matrix KL loss.")
    cosine_weight: float = Field(default=DistillConfig.cosine_weight, description="Weight of the direct cosine term to each document's teacher vector, beside the Gram-KL term; 0 turns it off.")
    init: str = Field(default=DistillConfig.init, description="'ridge' starts from the closed-form reduced-rank ridge map from TF-IDF to the teacher; 'random' from Kaiming-uniform noise.")
    ridge_alpha: float = Field(default=DistillConfig.ridge_alpha, description="L2 penalty of the ridge start.")
    token_prior: bool = Field(default=DistillConfig.token_prior, description="Shrink the ridge start toward the teacher's mean contextual vector of each token (summed by teacher_embeddings) instead of toward zero.")
    seed: int = Field(default=0, description="Seed of the initial weights and the batch order.")
    probe_labels: int = Field(default=20, description="Linear probes use this many most frequent labels.")
    first_layer_dtype: Literal["float16", "float32"] = Field(
        default="float16",
        description="Storage of the first layer, the model's largest array. float16 halves the model file and the bytes encode reads per n-gram (embeddings move by ~1e-4 in cosine); float32 keeps every bit.",
    )


def model_card(embedder: LexicalEmbedder, training_seconds: float) -> str:
    """A markdown card for the model, built from the provenance stored inside it."""
    p = embedder.provenance
    ev, training, teacher = p["evaluation"], p["training"], p["teacher"]
    probes = ev.get("probe_accuracy") or {}
    lines = [
        f"# Lexical-dense student `{embedder.version}`",
        "",
        "## Data",
        f"- training sample version `{p['data_versions']['training_sample']}`: {training['train_documents']} training, {ev['heldout_documents']} held-out documents",
        f"- features version `{p['data_versions']['features']}`: {embedder.vocabulary.size:,} n-grams of 1 to {embedder.vocabulary.max_n} WordPiece tokens",
        f"- teacher embeddings version `{p['data_versions']['teacher_embeddings']}`",
        "",
        "## Teacher",
        f"- `{teacher.get('model')}` (weights and config sha256 `{teacher.get('model_sha256')}`), dim {teacher.get('dim')}, max_seq_length {teacher.get('max_seq_length')}, normalisation {teacher.get('normalization')}",
        "",
        "## Architecture",
        f"- {' -> '.join(map(str, embedder.dims))}: TF-IDF, sparse first layer, ReLU and L2 norm between layers, L2-normalised output",
        f"- first layer stored as {embedder.first_layer_dtype}",
        f"- uint8 quantisation limit {embedder.quantization_limit:.5f}",
        "",
        "## Training",
        f"- {training.get('init', 'random')} start{' toward the teacher token prior' if training.get('token_prior') and training.get('init') == 'ridge' else ''}, then Gram-matrix KL distillation (temperature {training['temperature']}) plus a cosine term (weight {training.get('cosine_weight', 0)}), batch {training['batch_size']}, {training['epochs']} epochs ({training['steps']} steps), "
        f"peak learning rate {training['learning_rate']} (warmup-stable-decay), seed {training['seed']}, on {training['device']} in {training_seconds:.0f} s",
        f"- loss {p['loss']['start']} at the start, {p['loss']['end']} at the end",
        "",
        "## Held-out fidelity to the teacher",
        "| model | recall@10 | Spearman |",
        "|---|---|---|",
        f"| student | {ev['student']['recall_at_10']} | {ev['student']['spearman']} |",
        f"| random init, untrained, same shape | {ev['untrained_student']['recall_at_10']} | {ev['untrained_student']['spearman']} |",
        "",
        "## Linear-probe accuracy on labels",
        "| teacher | student | TF-IDF |",
        "|---|---|---|",
        f"| {probes.get('teacher', 'n/a')} | {probes.get('student', 'n/a')} | {probes.get('tfidf', 'n/a')} |",
        "",
        "## Known limits",
        "- Lexical: it sees WordPiece n-grams, not word order beyond 5 tokens; paraphrases with no shared n-gram look unrelated.",
        "- Texts with no known n-gram get one fallback vector (the mean training embedding).",
        "- Fidelity was measured on held-out documents of the same corpus; other domains need their own check.",
    ]
    return "\n".join(lines) + "\n"


def evaluation_table(evaluation: dict) -> str:
    probes = evaluation.get("probe_accuracy") or {}
    rows = [
        ("teacher", "1.0 (reference)", "1.0 (reference)", probes.get("teacher", "n/a")),
        ("student", evaluation["student"]["recall_at_10"], evaluation["student"]["spearman"], probes.get("student", "n/a")),
        ("random-init student, untrained", evaluation["untrained_student"]["recall_at_10"], evaluation["untrained_student"]["spearman"], "n/a"),
        ("plain TF-IDF", "n/a", "n/a", probes.get("tfidf", "n/a")),
    ]
    lines = ["| model | recall@10 vs teacher | Spearman vs teacher | probe accuracy |", "|---|---|---|---|"]
    lines += [f"| {name} | {r} | {sp} | {p} |" for name, r, sp, p in rows]
    return "\n".join(lines) + f"\n\nHeld-out documents: {evaluation['heldout_documents']}.\n"


def student_evaluation(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    return {
        "recall_at_10": round(neighbour_recall(student, teacher, k=10), 4),
        "spearman": round(cosine_spearman(student, teacher), 4),
    }


@dg.asset(
    deps=[features, teacher_embeddings],
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
    feats = Features.from_bytes(storage.read_bytes(FEATURES_FILE))
    teacher_ids, teacher_vectors, teacher_meta = read_embeddings(storage, TEACHER_FILE)
    sample = read_sample(storage, ["id", "text", "label", "split"])
    sample_ids = sample["id"].to_pylist()
    if feats.ids != sample_ids or teacher_ids != sample_ids:
        raise dg.Failure("features, teacher_embeddings and training_sample disagree on the documents; re-materialise them together")
    if teacher_meta.get(b"normalization") != b"l2":
        # The loss reads teacher dot products as cosines.
        teacher_vectors = l2_normalize(np.array(teacher_vectors, dtype=np.float32))
    texts = np.array(sample["text"].to_pylist(), dtype=object)
    train = np.array(sample["split"].to_pylist()) == "train"
    heldout = ~train
    try:
        distill_config = DistillConfig(
            hidden_dims=tuple(config.hidden_dims),
            output_dim=config.output_dim or None,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            temperature=config.temperature,
            cosine_weight=config.cosine_weight,
            init=config.init,
            ridge_alpha=config.ridge_alpha,
            token_prior=config.token_prior,
            seed=config.seed,
        )
    except ValueError as exc:
        raise dg.Failure(f"bad distillation config: {exc}") from exc

    device = compute.torch_device()
    train_tfidf, train_teacher = feats.tfidf[train], teacher_vectors[train]
    dims = [feats.vocabulary.size, *distill_config.hidden_dims, distill_config.output_dim or teacher_vectors.shape[1]]
    random_layers = init_layers(dims, distill_config.seed)
    started = time.perf_counter()

    heldout_tfidf, teacher_heldout = feats.tfidf[heldout], teacher_vectors[heldout]
    progress = ProgressLog(context.log.info, "training", distill_config.epochs, unit="epochs")

    def log_epoch(epoch, module, history):
        fidelity = student_evaluation(embed(module, heldout_tfidf, torch.device(device)), teacher_heldout)
        progress.update(
            epoch + 1,
            f"loss {history.epoch_loss[-1]:.4f}, held-out recall@10 {fidelity['recall_at_10']:.3f}, "
            f"{history.steps / (time.perf_counter() - started):.1f} steps/s",
        )
        return fidelity

    context.log.info(f"training a {'-'.join(map(str, dims))} student on {train.sum()} documents on {device}")
    prior = None
    if distill_config.token_prior and distill_config.init == "ridge":
        sums = TokenSums.from_bytes(storage.read_bytes(TOKEN_SUMS_FILE))
        if sums.sums.shape[1] != teacher_vectors.shape[1]:
            raise dg.Failure(f"teacher token sums have dim {sums.sums.shape[1]}, the teacher vectors {teacher_vectors.shape[1]}; re-materialise teacher_embeddings")
        prior = unigram_prior(feats.vocabulary, sums)
    layers, history = distill(train_tfidf, train_teacher, distill_config, device=device, on_epoch=log_epoch, prior=prior)
    train_student = forward(train_tfidf, layers)
    fallback = l2_normalize(train_student.mean(axis=0, keepdims=True))[0]
    limit = calibrate_limit(train_student)

    heldout_texts = list(texts[heldout])
    upstream = ("training_sample", "features", "teacher_model", "teacher_embeddings")
    provenance = {
        "teacher": {k.decode(): v.decode() for k, v in teacher_meta.items()},
        "training": {**config.model_dump(), "steps": history.steps, "train_documents": int(train.sum()), "device": device},
        "data_versions": {key: latest_data_version(context.instance, key) for key in upstream},
        "code_version": CODE_VERSIONS["distilled_model"],
    }
    embedder = LexicalEmbedder(feats.tokenizer_json, feats.vocabulary, layers, fallback, limit, first_layer_dtype=config.first_layer_dtype)
    untrained = LexicalEmbedder(feats.tokenizer_json, feats.vocabulary, random_layers, fallback, limit)
    student_heldout = embedder.encode(heldout_texts)
    evaluation = {
        "student": student_evaluation(student_heldout, teacher_heldout),
        "untrained_student": student_evaluation(untrained.encode(heldout_texts), teacher_heldout),
    }

    labels = probe_labels(sample["label"].to_pylist(), config.probe_labels)
    probes = {}
    if any(label is not None for label in labels[train]) and any(label is not None for label in labels[heldout]):
        probes = {
            "teacher": probe_accuracy(train_teacher, labels[train], teacher_heldout, labels[heldout]),
            "student": probe_accuracy(train_student, labels[train], student_heldout, labels[heldout]),
            "tfidf": tfidf_probe_accuracy(list(texts[train]), labels[train], heldout_texts, labels[heldout]),
        }
        probes = {k: round(v, 4) for k, v in probes.items()}

    loss_start = history.start_loss
    loss_end = batch_loss(train_tfidf, train_teacher, layers, distill_config)
    provenance["evaluation"] = {**evaluation, "probe_accuracy": probes, "heldout_documents": int(heldout.sum())}
    provenance["loss"] = {"start": round(loss_start, 5), "end": round(loss_end, 5), "per_epoch": [round(x, 5) for x in history.epoch_loss]}
    embedder = LexicalEmbedder(feats.tokenizer_json, feats.vocabulary, layers, fallback, limit, provenance, config.first_layer_dtype)
    uri = storage.write_bytes(embedder.to_bytes(), MODEL_FILE)
    card = model_card(embedder, history.seconds)
    storage.write_bytes(card.encode(), MODEL_CARD_FILE)
    train_tokens = latest_metadata_value(context.instance, "training_sample", "train_tokens")

    return dg.MaterializeResult(
        data_version=dg.DataVersion(embedder.version),
        metadata={
            "training_curves": dg.MetadataValue.md(training_curves(history.epoch_loss, history.epoch_eval)),
            "evaluation": dg.MetadataValue.md(evaluation_table(provenance["evaluation"])),
            "model_card": dg.MetadataValue.md(card),
            "uri": dg.MetadataValue.path(uri),
            "model_version": embedder.version,
            "dims": "-".join(map(str, embedder.dims)),
            "train_documents": int(train.sum()),
            "heldout_documents": int(heldout.sum()),
            "steps": history.steps,
            "training_seconds": round(history.seconds, 1),
            "loss_start": round(loss_start, 5),
            "loss_end": round(loss_end, 5),
            "loss_per_epoch": [round(x, 5) for x in history.epoch_loss],
            "recall_at_10": evaluation["student"]["recall_at_10"],
            "spearman": evaluation["student"]["spearman"],
            "untrained_recall_at_10": evaluation["untrained_student"]["recall_at_10"],
            "untrained_spearman": evaluation["untrained_student"]["spearman"],
            "probe_accuracy": probes,
            "quantization_limit": round(limit, 5),
            # Rates count every document and token once per epoch.
            **throughput(
                time.perf_counter() - started,
                int(train.sum()) * distill_config.epochs,
                None if train_tokens is None else train_tokens * distill_config.epochs,
            ),
        }
    )
