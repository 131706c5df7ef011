"""Compute settings: which device runs the teacher and training, and how many CPU threads."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field


class Compute(dg.ConfigurableResource):
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto picks cuda when present, else cpu.")
    precision: Literal["fp32", "fp16", "bf16"] = Field(default="fp16", description="Autocast precision of the teacher on a GPU; the CPU always uses fp32.")
    cpu_threads: int = Field(default=0, description="torch CPU threads; 0 uses every core.")

    def torch_device(self) -> str:
        import torch

        if self.cpu_threads > 0:
            torch.set_num_threads(self.cpu_threads)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise dg.Failure("compute device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device
