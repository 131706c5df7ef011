"""The student's training settings: one definition, read by the engine and shown in the Dagster launchpad.

A pydantic model with no torch import, so the code location can declare its run config from it
without loading the training stack. The defaults are the measured best (README, "Fidelity").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

INITS = ("ridge", "random")


class DistillConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_dims: list[int] = Field(default=[256, 256], description="Hidden layer sizes after the sparse first layer.")
    output_dim: int = Field(default=0, description="Embedding size; 0 uses the teacher's.")
    epochs: int = Field(default=5, description="Passes over the training split.")
    batch_size: int = Field(default=512, description="Documents per step; the loss compares every pair in a batch.")
    learning_rate: float = Field(default=1e-3, description="Peak AdamW learning rate of the warmup-stable-decay schedule.")
    warmup_fraction: float = Field(default=0.05, description="Share of the steps over which the learning rate warms up linearly.")
    decay_fraction: float = Field(default=0.3, description="Share of the steps over which the learning rate decays linearly to zero at the end.")
    temperature: float = Field(default=3.0, description="Softmax temperature of the Gram-matrix KL loss.")
    weight_decay: float = Field(default=0.0, description="AdamW weight decay.")
    cosine_weight: float = Field(
        default=1.0, description="Weight of the direct cosine term to each document's teacher vector, beside the Gram-KL term; 0 turns it off."
    )
    init: str = Field(
        default="ridge",
        description="'ridge' starts from the closed-form reduced-rank ridge map from TF-IDF to the teacher; 'random' from Kaiming-uniform noise.",
    )
    ridge_alpha: float = Field(default=1.0, description="L2 penalty of the ridge start.")
    token_prior: bool = Field(
        default=True,
        description="Shrink the ridge start toward the teacher's mean contextual vector of each token (summed by teacher_embeddings) instead of toward zero.",
    )
    seed: int = Field(default=0, description="Seed of the initial weights and the batch order.")
    probe_labels: int = Field(default=20, description="Linear probes use this many most frequent labels.")
    first_layer_dtype: Literal["float16", "float32"] = Field(
        default="float16",
        description=(
            "Storage of the first layer, the model's largest array. float16 halves the model file and the bytes encode reads "
            "per n-gram (embeddings move by ~1e-4 in cosine); float32 keeps every bit."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (the loss compares documents within a batch), got {self.batch_size}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if any(d < 1 for d in self.hidden_dims) or self.output_dim < 0:
            raise ValueError(f"layer sizes must be >= 1, got hidden {self.hidden_dims}, output {self.output_dim}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.ridge_alpha > 0 or self.cosine_weight < 0:
            raise ValueError(f"ridge_alpha must be > 0 and cosine_weight >= 0, got {self.ridge_alpha}, {self.cosine_weight}")
        if self.probe_labels < 1:
            raise ValueError(f"probe_labels must be >= 1, got {self.probe_labels}")
        return self

    def output_size(self, teacher_dim: int) -> int:
        return self.output_dim or teacher_dim

    def replace(self, **changes) -> DistillConfig:
        """A copy with some settings changed, validated again."""
        return type(self)(**{**self.model_dump(), **changes})
