"""Training as one call: features and teacher vectors in, a trained, evaluated `LexicalEmbedder` out.

    embedder, report = train_student(features, teacher_vectors, DistillConfig(), texts=texts, heldout=mask)

The `distilled_model` asset, `bench.fidelity` and a notebook all train through this function,
so the same inputs and seed give the same weights wherever it runs. It starts the network
(ridge toward the teacher's token prior, or random), distils, sets the fallback vector and the
uint8 quantisation limit from the training embeddings, and measures the student on the
held-out rows: neighbour recall and cosine Spearman against the teacher, next to the same
network untrained, and linear probes when labels are given. Imports torch (training only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from embedding_assets.engine.config import DistillConfig
from embedding_assets.engine.distill import StudentModule, TrainingHistory, batch_loss, distill, embed
from embedding_assets.engine.embedder import LexicalEmbedder
from embedding_assets.engine.evaluation import cosine_spearman, neighbour_recall, probe_accuracy, probe_labels, tfidf_probe_accuracy
from embedding_assets.engine.features import Features
from embedding_assets.engine.network import forward, init_layers, l2_normalize
from embedding_assets.engine.prior import TokenSums, unigram_prior
from embedding_assets.engine.quantization import calibrate_limit

EpochCallback = Callable[[int, TrainingHistory, dict[str, float]], None]


@dataclass
class TrainingReport:
    """What a training run did and how the student compares with the teacher on held-out rows."""

    dims: list[int]
    train_documents: int
    heldout_documents: int
    steps: int
    seconds: float  # the distillation loop alone
    loss_start: float
    loss_end: float
    epoch_loss: list[float] = field(default_factory=list)
    epoch_eval: list[dict[str, float]] = field(default_factory=list)  # held-out fidelity after each epoch
    evaluation: dict = field(default_factory=dict)  # student, untrained_student, probe_accuracy, heldout_documents
    quantization_limit: float = 0.0


def fidelity(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    return {
        "recall_at_10": round(neighbour_recall(student, teacher, k=10), 4),
        "spearman": round(cosine_spearman(student, teacher), 4),
    }


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of norm 1: the loss reads teacher dot products as cosines."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    return vectors if np.allclose(norms, 1.0, atol=1e-3) else l2_normalize(vectors.copy())


def train_student(
    features: Features,
    teacher: np.ndarray,
    config: DistillConfig,
    *,
    texts: Sequence[str],
    heldout: np.ndarray | None = None,
    labels: Sequence[str | None] | None = None,
    token_sums: TokenSums | None = None,
    device: str = "cpu",
    on_epoch: EpochCallback | None = None,
    provenance: dict | None = None,
) -> tuple[LexicalEmbedder, TrainingReport]:
    """Train and evaluate a student on the rows of `features.tfidf` (aligned with `teacher` and `texts`).

    `heldout` (bool per row) marks the rows kept out of training and used to evaluate; `labels`
    (per row, None for unlabelled) adds linear probes; `token_sums` is the teacher's prior for the
    ridge start. `on_epoch(epoch, history, heldout_fidelity)` is called after every epoch.
    `provenance` (teacher, data versions, ...) is stored in the model with the training settings,
    the evaluation and the loss.
    """
    n = features.tfidf.shape[0]
    heldout = np.zeros(n, dtype=bool) if heldout is None else np.asarray(heldout, dtype=bool)
    if not (len(teacher) == len(texts) == len(heldout) == n):
        raise ValueError(f"rows disagree: {n} TF-IDF rows, {len(teacher)} teacher vectors, {len(texts)} texts, {len(heldout)} held-out flags")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} documents")
    teacher = unit_rows(teacher)
    train = ~heldout
    train_tfidf, train_teacher = features.tfidf[train], teacher[train]
    heldout_tfidf, heldout_teacher = features.tfidf[heldout], teacher[heldout]
    heldout_texts = [texts[i] for i in np.flatnonzero(heldout)]

    prior = None
    if config.token_prior and config.init == "ridge" and token_sums is not None:
        if token_sums.sums.shape[1] != teacher.shape[1]:
            raise ValueError(f"the teacher's token sums have dim {token_sums.sums.shape[1]}, its vectors {teacher.shape[1]}")
        prior = unigram_prior(features.vocabulary, token_sums)

    def after_epoch(epoch: int, module: StudentModule, history: TrainingHistory) -> dict[str, float]:
        measured = fidelity(embed(module, heldout_tfidf, torch.device(device)), heldout_teacher) if heldout.sum() > 10 else {}
        if on_epoch is not None:
            on_epoch(epoch, history, measured)
        return measured

    layers, history = distill(train_tfidf, train_teacher, config, device=device, on_epoch=after_epoch, prior=prior)
    train_student_vectors = forward(train_tfidf, layers)
    fallback = l2_normalize(train_student_vectors.mean(axis=0, keepdims=True))[0]
    limit = calibrate_limit(train_student_vectors)
    dims = [features.vocabulary.size, *(w.shape[1] for w in layers)]

    evaluation: dict = {"heldout_documents": int(heldout.sum())}
    if heldout.any():
        student = LexicalEmbedder(features.tokenizer_json, features.vocabulary, layers, fallback, limit, first_layer_dtype=config.first_layer_dtype)
        untrained = LexicalEmbedder(features.tokenizer_json, features.vocabulary, init_layers(dims, config.seed), fallback, limit)
        student_heldout = student.encode(heldout_texts)
        evaluation["student"] = fidelity(student_heldout, heldout_teacher)
        evaluation["untrained_student"] = fidelity(untrained.encode(heldout_texts), heldout_teacher)
        evaluation["probe_accuracy"] = probes(labels, config.probe_labels, train, heldout, texts, train_teacher, heldout_teacher,
                                              train_student_vectors, student_heldout)

    report = TrainingReport(
        dims=dims,
        train_documents=int(train.sum()),
        heldout_documents=int(heldout.sum()),
        steps=history.steps,
        seconds=history.seconds,
        loss_start=history.start_loss,
        loss_end=batch_loss(train_tfidf, train_teacher, layers, config),
        epoch_loss=list(history.epoch_loss),
        epoch_eval=list(history.epoch_eval),
        evaluation=evaluation,
        quantization_limit=limit,
    )
    provenance = {
        **(provenance or {}),
        "training": {
            **config.model_dump(),
            "steps": report.steps,
            "train_documents": report.train_documents,
            "device": device,
        },
        "evaluation": evaluation,
        "loss": {"start": round(report.loss_start, 5), "end": round(report.loss_end, 5), "per_epoch": [round(x, 5) for x in report.epoch_loss]},
    }
    embedder = LexicalEmbedder(features.tokenizer_json, features.vocabulary, layers, fallback, limit, provenance, config.first_layer_dtype)
    return embedder, report


def probes(labels, top: int, train, heldout, texts, train_teacher, heldout_teacher, train_student, heldout_student) -> dict[str, float]:
    """Probe accuracy of teacher, student and plain TF-IDF on the `top` labels; empty when a split has no label."""
    if labels is None:
        return {}
    kept = probe_labels(list(labels), top)
    if all(label is None for label in kept[train]) or all(label is None for label in kept[heldout]):
        return {}
    train_texts = [texts[i] for i in np.flatnonzero(train)]
    heldout_texts = [texts[i] for i in np.flatnonzero(heldout)]
    accuracy = {
        "teacher": probe_accuracy(train_teacher, kept[train], heldout_teacher, kept[heldout]),
        "student": probe_accuracy(train_student, kept[train], heldout_student, kept[heldout]),
        "tfidf": tfidf_probe_accuracy(train_texts, kept[train], heldout_texts, kept[heldout]),
    }
    return {k: round(v, 4) for k, v in accuracy.items()}
