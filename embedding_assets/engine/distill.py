"""Distillation: train the student so its similarity structure matches the teacher's.

For each mini-batch, the student's and the teacher's Gram matrices of cosine similarities,
with the trivial diagonal removed, become temperature-scaled softmax rows; the loss is the
KL divergence from the teacher rows to the student rows (times tau^2, which keeps gradient
size independent of tau). A direct cosine term to each document's own teacher vector sits
beside it: the Gram term only sees similarities inside a batch, while the cosine term pins
every document to one place, which is what held-out neighbours and cosines are measured by.

Training starts from the closed-form ridge map (`ridge.py`) unless told to start at random;
given the teacher's prior for the first layer (`prior.py`), the ridge shrinks toward it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from embedding_assets.engine.config import DistillConfig
from embedding_assets.engine.network import init_layers
from embedding_assets.engine.ridge import ridge_layers

__all__ = ["DistillConfig", "TrainingHistory", "distill"]


@dataclass
class TrainingHistory:
    steps: int = 0
    start_loss: float = float("nan")  # of the initial weights, over the training batches
    epoch_loss: list[float] = field(default_factory=list)
    epoch_eval: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def remove_diagonal(gram: torch.Tensor) -> torch.Tensor:
    n = gram.shape[0]
    return gram.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def gram_kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher rows || student rows) of the off-diagonal Gram matrices, batch mean, times tau^2."""
    student_logits = remove_diagonal(student @ student.T) / temperature
    teacher_logits = remove_diagonal(teacher @ teacher.T) / temperature
    return temperature**2 * F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(teacher_logits, dim=1),
        log_target=True,
        reduction="batchmean",
    )


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, config: DistillConfig) -> torch.Tensor:
    loss = gram_kl_loss(student, teacher, config.temperature)
    if config.cosine_weight:
        loss = loss + config.cosine_weight * (1.0 - (student * teacher).sum(dim=1)).mean()
    return loss


def initial_layers(tfidf: sp.csr_matrix, teacher: np.ndarray, config: DistillConfig, prior: np.ndarray | None = None) -> list[np.ndarray]:
    dims = [tfidf.shape[1], *config.hidden_dims, config.output_size(teacher.shape[1])]
    if config.init == "ridge":
        return ridge_layers(tfidf, teacher, dims, config.ridge_alpha, config.seed, prior=prior if config.token_prior else None)
    return init_layers(dims, config.seed)


class StudentModule(nn.Module):
    """The torch twin of `network.forward`: same weights, same function, differentiable."""

    def __init__(self, layers: Sequence[np.ndarray]):
        super().__init__()
        first = torch.from_numpy(np.array(layers[0], dtype=np.float32))
        self.first = nn.EmbeddingBag.from_pretrained(first, freeze=False, mode="sum")
        self.rest = nn.ParameterList(nn.Parameter(torch.from_numpy(np.array(w, dtype=np.float32))) for w in layers[1:])

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        hidden = self.first(indices, offsets, per_sample_weights=weights)
        for layer in self.rest:
            hidden = F.normalize(torch.relu(hidden), dim=1) @ layer
        return F.normalize(hidden, dim=1)

    def layers(self) -> list[np.ndarray]:
        return [self.first.weight.detach().cpu().numpy().copy()] + [w.detach().cpu().numpy().copy() for w in self.rest]


def csr_batch(rows: sp.csr_matrix, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs (indices, offsets, weights) for the rows of a CSR matrix."""
    return (
        torch.from_numpy(rows.indices.astype(np.int64)).to(device),
        torch.from_numpy(rows.indptr[:-1].astype(np.int64)).to(device),
        torch.from_numpy(rows.data.astype(np.float32)).to(device),
    )


def embed(module: StudentModule, tfidf: sp.csr_matrix, device: torch.device, batch_size: int = 4096) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, tfidf.shape[0], batch_size):
            out.append(module(*csr_batch(tfidf[start : start + batch_size], device)).cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, module.rest[-1].shape[1] if len(module.rest) else module.first.embedding_dim), np.float32)


def wsd_multiplier(step: int, total: int, warmup: int, decay: int) -> float:
    """Warmup-stable-decay: linear warm-up, a long plateau, then linear decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= total - decay:
        return max(total - step, 0) / max(decay, 1)
    return 1.0


def distill(
    tfidf: sp.csr_matrix,
    teacher: np.ndarray,
    config: DistillConfig,
    device: str = "cpu",
    on_epoch: Callable[[int, StudentModule, TrainingHistory], dict[str, float] | None] | None = None,
    prior: np.ndarray | None = None,
) -> tuple[list[np.ndarray], TrainingHistory]:
    """Train a student on TF-IDF rows against L2-normalised teacher vectors (same row order).

    `prior` ([V, d], e.g. `prior.unigram_prior`) is what the ridge start shrinks toward.
    """
    if tfidf.shape[0] != len(teacher):
        raise ValueError(f"{tfidf.shape[0]} TF-IDF rows but {len(teacher)} teacher vectors")
    n = tfidf.shape[0]
    if n < config.batch_size:
        raise ValueError(f"{n} training documents are fewer than one batch of {config.batch_size}")
    if config.cosine_weight and config.output_size(teacher.shape[1]) != teacher.shape[1]:
        raise ValueError(f"the cosine term needs the output dim to equal the teacher's ({teacher.shape[1]}); truncate the teacher instead")
    torch.manual_seed(config.seed)
    dev = torch.device(device)
    start = initial_layers(tfidf, teacher, config, prior)
    history = TrainingHistory(start_loss=batch_loss(tfidf, teacher, start, config))
    module = StudentModule(start).to(dev)
    del start
    teacher_t = torch.from_numpy(np.ascontiguousarray(teacher, dtype=np.float32)).to(dev)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    steps_per_epoch = n // config.batch_size
    total = steps_per_epoch * config.epochs
    warmup = max(1, math.ceil(total * config.warmup_fraction))
    decay = math.ceil(total * config.decay_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: wsd_multiplier(s, total, warmup, decay))
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        losses = []
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * config.batch_size : (b + 1) * config.batch_size])
            student = module(*csr_batch(tfidf[idx], dev))
            loss = distillation_loss(student, teacher_t[torch.from_numpy(idx).to(dev)], config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            history.steps += 1
        history.epoch_loss.append(float(np.mean(losses)))
        if on_epoch is not None:
            history.epoch_eval.append(on_epoch(epoch, module, history) or {})
    history.seconds = time.perf_counter() - started
    return module.layers(), history


def batch_loss(tfidf: sp.csr_matrix, teacher: np.ndarray, layers: Sequence[np.ndarray], config: DistillConfig) -> float:
    """Mean loss of fixed weights over consecutive batches, e.g. of the untrained network."""
    module = StudentModule(layers)
    teacher_t = torch.from_numpy(np.ascontiguousarray(teacher, dtype=np.float32))
    losses = []
    with torch.no_grad():
        for start in range(0, tfidf.shape[0] - config.batch_size + 1, config.batch_size):
            student = module(*csr_batch(tfidf[start : start + config.batch_size], torch.device("cpu")))
            losses.append(distillation_loss(student, teacher_t[start : start + config.batch_size], config).item())
    return float(np.mean(losses)) if losses else float("nan")
