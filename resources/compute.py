"""Compute settings: which device runs the teacher and training, and how many CPU threads."""

from __future__ import annotations

import re
from typing import Literal

import dagster as dg
from pydantic import Field, field_validator

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class Compute(dg.ConfigurableResource):
    device: str = Field(default="auto", description="auto (cuda when present, else cpu), cpu, cuda or cuda:N.")
    precision: Literal["fp32", "fp16", "bf16"] = Field(default="fp16", description="Autocast precision of the teacher on a GPU; the CPU always uses fp32.")
    cpu_threads: int = Field(default=0, description="torch CPU threads; 0 uses the CPUs this process may use (the cgroup quota, else the cores).")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"compute device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return value

    @field_validator("cpu_threads")
    @classmethod
    def _threads(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0 uses every core), got {value}")
        return value

    def torch_device(self) -> str:
        import torch

        from embedding_assets.engine.threads import available_cpus

        # torch sizes its pool from the cores it sees, not from a pod's CPU limit.
        torch.set_num_threads(self.cpu_threads or available_cpus())
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise dg.Failure(f"compute device is {self.device!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
            index = int(self.device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise dg.Failure(f"compute device is {self.device!r} but torch sees only {torch.cuda.device_count()} CUDA device(s)")
        return self.device
