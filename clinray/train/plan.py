"""The typed run plan the driver derives once and hands to every worker, and the loop's resumable state.

:class:`RunPlan` holds what the workers must agree on and cannot read from the config alone: the
sequence length (from the token blocks' manifest, or the SFT rows'), the gradient accumulation, the
number of steps, the absolute run folder and the dataset the loop reads; then, on the worker, the FLOPs
per token and the device peak of MFU. :class:`TrainState` is what a checkpoint restores. Both are plain
dataclasses, free of Ray, so ``benchmarks/gpu_check.py`` uses them without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["RunPlan", "TrainState"]


@dataclasses.dataclass(kw_only=True)
class RunPlan:
    """Numbers derived from a config before the workers start."""

    seq_len: int
    """Tokens per row."""
    task: str = "pretrain"
    """``pretrain`` or ``sft``."""
    grad_accum: int = 1
    """Micro-batches per optimizer step on each worker."""
    total_steps: int = 0
    """Optimizer steps of the run."""
    global_batch_tokens: int = 0
    """Tokens per optimizer step over all workers (padding included)."""
    run_dir: str = ""
    """Absolute run folder (metrics, exports, plots)."""
    storage_path: str = ""
    """Ray Train storage (absolute path or URI)."""
    data_path: str = ""
    """The Parquet rows the loop reads: token blocks, or the packed SFT rows of every epoch."""
    num_layers: int = 0
    hidden_size: int = 0
    num_rows: int | None = None
    """Rows in the dataset (blocks, or packed SFT rows over all epochs)."""
    peak_flops_per_device: float | None = None
    """Device peak for MFU (None: unknown, MFU not reported)."""
    flops_per_token: float | None = None
    """Set on the worker from the built model."""
    compute_dtype: str | None = None
    """The matmul dtype the peak is for (set on the worker)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        return cls(**data)


@dataclasses.dataclass(kw_only=True)
class TrainState:
    """Where the loop is: what a checkpoint stores and a resumed run continues from."""

    step: int = 0
    tokens_seen: int = 0
    epoch: int = 0
    num_batches: int = 0
    """Global micro-batches of the epoch already consumed."""
    resumed_from: int | None = None
    """The step this process resumed at (None: a fresh start)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})
