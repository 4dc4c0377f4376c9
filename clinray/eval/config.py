"""Configs of ``clinray eval``: which models, which tasks, which data, and how to run them on Ray."""

from __future__ import annotations

import dataclasses
from typing import Literal

#: The paper's Table 2 columns (full-answer likelihood) plus PubMedQA.
DEFAULT_TASKS = [
    "clinray_medqa_4",
    "clinray_usmle",
    "clinray_mmlu_medical",
    "clinray_medmcqa",
    "clinray_pubmedqa",
]


@dataclasses.dataclass(kw_only=True, slots=True)
class SweepConfig:
    """The checkpoint sweep (the paper's Figure 2)."""

    pretrain_run: str = ""
    """Pretraining run folder whose ``hf/step_*`` exports (with ``clinray_meta.json``) are swept."""
    include_final: bool = True
    """Also evaluate ``hf/final`` when present."""
    base_model: str = ""
    """The model pretraining started from, plotted at 0 tokens ('' = none)."""
    instruction_tune: bool = True
    """Instruction-tune each checkpoint before evaluating it (``clinray eval`` uses ``clinray sft`` with
    ``sft_config``; without a recipe: warn, evaluate the raw checkpoints)."""
    sft_config: str = ""
    """SFT recipe (``tiny/sft``, ``paper/mistral7b_sft``) each checkpoint is tuned with."""
    sft_overrides: list[str] = dataclasses.field(default_factory=list)
    """``--set``-style overrides of that recipe (e.g. ``sft.paths.medqa=...``); model and run folder are set per checkpoint."""
    metric: str = "acc"
    """Metric plotted against pretraining tokens."""


@dataclasses.dataclass(kw_only=True, slots=True)
class EvalConfig:
    """``clinray eval``: models x tasks, one Ray task per model."""

    models: dict[str, str] = dataclasses.field(default_factory=dict)
    """Row name -> Hugging Face model folder (or hub id where a hub is reachable)."""
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TASKS))
    """lm-eval task or group names (``clinray_*`` from clinray/eval/tasks, or any built-in task)."""
    data_dir: str = ""
    """Folder holding the datasets in their native layouts (see docs/evaluation.md); '' = $CLINRAY_DATA_DIR."""
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    """Per-task file overrides, task name -> file (relative to data_dir or absolute)."""
    use_hub: bool = False
    """Load each task's ``hub_id`` with ``datasets`` instead of local files."""
    cop_base: str = "auto"
    """MedMCQA ``cop`` base: ``auto`` (a 0 anywhere means 0-based), ``0`` (hub Parquet) or ``1`` (release JSON)."""
    out_dir: str = "runs/eval"
    """Where results.json, table.md/.csv and per-sample logs go."""
    scorer: Literal["clinray", "hf"] = "clinray"
    """lm-eval model: ``clinray`` (prompt once per question) or lm-eval's own ``hf``."""
    dtype: str = "float32"
    """Model dtype passed to lm-eval (``float32``, ``bfloat16``, ``auto``)."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (``cuda`` when the Ray task got a GPU)."""
    batch_size: int = 8
    """lm-eval batch size (``hf``); the clinray scorer batches the options of one question."""
    limit: int = 0
    """Evaluate only the first N questions of each task (0 = all)."""
    num_gpus_per_model: float = 0.0
    """GPUs per Ray evaluation task (1 on GPU clusters; 0 = CPU)."""
    num_cpus_per_model: float = 1.0
    """CPUs per Ray evaluation task."""
    log_samples: bool = True
    """Write per-sample logs (prompt, options, log-likelihoods, prediction) as JSONL."""
    metric: str = "acc"
    """Metric shown in the table (``acc`` or ``acc_norm``)."""
    merge_columns: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Table columns that average several tasks, weighted by questions (e.g. the MMLU subjects present)."""
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)
    """The checkpoint sweep (``clinray eval --sweep``)."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one task, e.g. tasks: [clinray_medqa_4]")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0 = all questions), got {self.limit}")
        if self.num_gpus_per_model < 0 or self.num_cpus_per_model <= 0:
            raise ValueError("num_gpus_per_model must be >= 0 and num_cpus_per_model > 0")
        if self.metric not in ("acc", "acc_norm"):
            raise ValueError(f"metric must be acc or acc_norm, got {self.metric!r}")
        from clinray.qa import normalize_cop_base

        self.cop_base = normalize_cop_base(self.cop_base)
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}")
        unknown = sorted({t for members in self.merge_columns.values() for t in members} - set(self.tasks))
        if unknown:
            raise ValueError(f"merge_columns name tasks that are not in tasks: {unknown}")
        bad = [name for name in self.models if not name or "/" in name]
        if bad:
            raise ValueError(f"model row names must be non-empty and contain no '/': {bad}")

    def check_inputs(self) -> list[str]:
        """Missing models, data folder and task files, all at once, before Ray starts."""
        import os
        from pathlib import Path

        from clinray.eval.tasks import task_files
        from clinray.results import missing_dir, missing_file, missing_model

        problems = []
        if not self.models and not self.sweep.pretrain_run:
            problems.append("no models: set models: {name: path} in the recipe or pass --model NAME=PATH")
        for name, path in self.models.items():
            problems += missing_model(path, f"model {name!r}")
        if self.sweep.pretrain_run:
            problems += missing_dir(Path(self.sweep.pretrain_run) / "hf", "sweep.pretrain_run's hf/ exports")
        data_dir = self.data_dir or os.environ.get("CLINRAY_DATA_DIR", "")
        if self.use_hub:
            return problems
        if not data_dir:
            return [*problems, "data_dir is not set (the benchmarks' folder; or set $CLINRAY_DATA_DIR)"]
        problems += missing_dir(data_dir, "data_dir")
        if not problems:
            for task in self.tasks:
                for rel in task_files(task):
                    chosen = self.paths.get(task, rel)
                    problems += missing_file(Path(data_dir) / chosen, f"task {task}'s file")
        return problems
