"""Build the Ray Train ``TorchTrainer`` of a pretraining run from its config, run it, plot it.

Everything the workers need is derived here once, on the driver, and fails fast with a clear message:
the sequence length from the blocks' manifest, the gradient accumulation from the global batch in
tokens, the number of steps from the token budget. Re-running with the same ``run.storage_path`` and
``run.name`` resumes the run from its last checkpoint (Ray Train V2 restores the run's state from
storage); a worker failure inside one ``fit()`` resumes by itself up to ``run.max_failures`` times.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from clinray import storage
from clinray.config import dump, to_dict
from clinray.data.blocks import read_block_manifest
from clinray.results import StageResult
from clinray.train.config import TrainConfig
from clinray.train.data import build_dataset
from clinray.train.plan import RunPlan

__all__ = ["plan_run", "build_trainer", "run_pretrain", "TrainResult"]


@dataclasses.dataclass(kw_only=True)
class TrainResult(StageResult):
    """A finished (or resumed and finished) training run."""

    run_dir: Path | str
    """The run folder: ``<storage_path>/<name>`` (a URI string for a URI storage path)."""
    hf_final: Path | str
    plot: Path | str
    checkpoint: str | None
    total_steps: int
    grad_accum: int
    first: dict[str, Any]
    """The first metrics row (step, loss per source, lr, tokens/s)."""
    last: dict[str, Any]
    """The last metrics row."""

    def outputs(self) -> dict[str, str]:
        return {
            "pretrained_model": str(self.hf_final),
            "pretrain_run": str(self.run_dir),
            "loss_plot": str(self.plot),
        }

    def losses(self) -> dict[str, tuple[float, float]]:
        """Per-source loss, first -> last logged step."""
        keys = [k for k in self.last if k.startswith("loss_") and isinstance(self.last[k], int | float)]
        return {k.removeprefix("loss_"): (self.first.get(k), self.last[k]) for k in keys}

    def summary(self) -> str:
        losses = ", ".join(
            f"{name} {a:.3f} -> {b:.3f}" for name, (a, b) in self.losses().items() if a is not None
        )
        head = f"training: {self.last['step']}/{self.total_steps} steps; loss {losses}"
        return "\n".join([head, StageResult.summary(self)])


def _absolute_paths(cfg: TrainConfig) -> None:
    # Ray Train workers do not share the driver's working directory: pass them absolute paths.
    cfg.model.path = str(Path(cfg.model.path).resolve()) if cfg.model.path else cfg.model.path
    if cfg.data.path and not storage.is_uri(cfg.data.path):
        cfg.data.path = str(Path(cfg.data.path).resolve())


def run_folders(cfg: TrainConfig) -> tuple[Path | str, str]:
    """``(run folder, Ray Train storage)``: ``<storage>/<name>``, an absolute path or a URI.

    With a URI the run folder is on the same storage as Ray Train's checkpoints: rank 0 writes the
    metrics and the HF exports there (through :mod:`clinray.storage`), so any node can read them.
    """
    path = cfg.run.storage_path
    if storage.is_uri(path):
        return storage.join(path, cfg.run.name), path
    return Path(path).resolve() / cfg.run.name, str(Path(path).resolve())


def grad_accumulation(cfg: TrainConfig, seq_len: int) -> int:
    """Micro-batches per step from the global batch in tokens; ValueError when it does not divide."""
    per_micro = cfg.train.micro_batch_size * seq_len * cfg.scaling.num_workers
    accum, rest = divmod(cfg.train.global_batch_tokens, per_micro)
    if accum < 1 or rest:
        raise ValueError(
            f"train.global_batch_tokens ({cfg.train.global_batch_tokens}) must be a multiple of micro_batch_size x "
            f"seq_len x num_workers = {cfg.train.micro_batch_size} x {seq_len} x {cfg.scaling.num_workers} = {per_micro}"
        )
    return accum


def plan_run(cfg: TrainConfig, *, sft_rows: dict | None = None) -> RunPlan:
    """The numbers the workers derive from the config: seq_len, accumulation, steps, run folder.

    Pretraining reads the token blocks' manifest (``data.path``); SFT passes ``sft_rows``, the manifest
    of the packed rows :func:`clinray.sft.prepare.prepare_sft_data` wrote (its ``path``, ``seq_len``
    and ``num_rows`` over all epochs): the epochs decide the steps.
    """
    _absolute_paths(cfg)
    if sft_rows is None:
        cfg.validate_paths()
        manifest = read_block_manifest(cfg.data.path)
        seq_len, data_path, num_rows = manifest["seq_len"], cfg.data.path, manifest.get("num_blocks")
    else:
        seq_len, data_path, num_rows = sft_rows["seq_len"], sft_rows["path"], sft_rows["num_rows"]
    model_cfg = json.loads((Path(cfg.model.path) / "config.json").read_text())
    if seq_len > model_cfg.get("max_position_embeddings", seq_len):
        raise ValueError(f"rows of {seq_len} tokens exceed the model's max_position_embeddings")
    accum = grad_accumulation(cfg, seq_len)
    if sft_rows is None:
        total_steps = cfg.train.max_steps or cfg.train.token_budget // cfg.train.global_batch_tokens
        if total_steps < 1:
            raise ValueError(f"train.token_budget {cfg.train.token_budget} is less than one global batch")
    else:
        rows_per_step = cfg.train.global_batch_tokens // seq_len
        total_steps = cfg.train.max_steps or num_rows // rows_per_step
        if total_steps < 1:
            raise ValueError(
                f"the SFT data packs into {num_rows} rows over all epochs, fewer than one global batch of "
                f"{rows_per_step} rows: lower train.global_batch_tokens or add data"
            )
    run_dir, storage = run_folders(cfg)
    return RunPlan(
        seq_len=seq_len,
        task=cfg.train.task,
        grad_accum=accum,
        total_steps=total_steps,
        global_batch_tokens=cfg.train.global_batch_tokens,
        run_dir=str(run_dir),
        storage_path=storage,
        data_path=data_path,
        num_layers=model_cfg["num_hidden_layers"],
        hidden_size=model_cfg["hidden_size"],
        peak_flops_per_device=cfg.run.peak_flops_per_device or None,
        num_rows=num_rows,
    )


def build_trainer(cfg: TrainConfig, plan: RunPlan):
    """A ``TorchTrainer`` with the scaling, run, failure and checkpoint configs of the recipe."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from clinray.train.loop import train_loop_per_worker

    dataset = build_dataset(plan.data_path, materialize_below_mb=cfg.data.materialize_below_mb)
    scaling = ScalingConfig(
        num_workers=cfg.scaling.num_workers,
        use_gpu=cfg.scaling.use_gpu,
        resources_per_worker=dict(cfg.scaling.resources_per_worker),
        placement_strategy=cfg.scaling.placement_strategy,
        accelerator_type=cfg.scaling.accelerator_type,
    )
    run_config = RunConfig(
        storage_path=plan.storage_path,
        name=cfg.run.name,
        failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_to_keep),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "plan": plan.to_dict()},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
        datasets={"train": dataset},
        dataset_config=DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )


def run_pretrain(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) the pretraining run of ``cfg``; return a summary with the paths it wrote."""
    if cfg.train.task != "pretrain":
        raise ValueError("this config has train.task: sft: run it with `clinray sft`")
    return fit_and_summarize(cfg, plan_run(cfg))


def _local_or_uri(path: str) -> Path | str:
    """A URI as it is, a local path as a ``Path`` (what the result held before URIs were supported)."""
    return path if storage.is_uri(path) else Path(path)


def finished_checkpoint(run_dir: Path | str, plan: RunPlan) -> str | None:
    """The newest checkpoint of a run that already reached ``plan.total_steps``, else None.

    Finished means: the final export (``hf/final``, written after the last checkpoint was reported)
    is from step ``total_steps``, the metrics reach it, and a checkpoint of that step is there. A run
    resubmitted with the same name and steps then returns at once, where it used to start a worker
    group, resume and export the same weights again; more steps (or any partial state) train as before.
    """
    run_dir = str(run_dir)
    meta_path = storage.join(run_dir, "hf", "final", "clinray_meta.json")
    metrics_path = storage.join(run_dir, "metrics.jsonl")
    name = f"checkpoint_{plan.total_steps:07d}"
    if not (storage.isfile(meta_path) and storage.isfile(metrics_path)):
        return None
    if json.loads(storage.read_text(meta_path)).get("step") != plan.total_steps:
        return None
    from clinray.train.checkpoint import STATE_FILE
    from clinray.train.metrics import read_metrics

    rows = read_metrics(metrics_path)
    if not rows or rows[-1]["step"] != plan.total_steps:
        return None
    if not storage.isfile(storage.join(run_dir, name, STATE_FILE)):
        return None
    return storage.join(run_dir, name)


def fit_and_summarize(cfg: TrainConfig, plan: RunPlan) -> TrainResult:
    """Fit the TorchTrainer of ``plan`` (resuming from the run folder's last checkpoint), plot, summarize.

    The run folder may be a URI: the config, plan and plot are uploaded next to the checkpoints, and the
    metrics are read from what rank 0 uploaded there (:class:`clinray.train.metrics.MetricsWriter`).
    """
    from clinray.train.metrics import read_metrics
    from clinray.train.plots import plot_loss_per_source

    run_dir = _local_or_uri(plan.run_dir)
    if isinstance(run_dir, Path):
        run_dir.mkdir(parents=True, exist_ok=True)
    config_path = storage.join(str(run_dir), "config.yaml")
    with storage.local_dir_for(config_path) as local:
        dump(cfg, local)
    storage.write_text(storage.join(str(run_dir), "plan.json"), json.dumps(plan.to_dict(), indent=2) + "\n")
    checkpoint = finished_checkpoint(run_dir, plan) if cfg.train.save_final else None
    if checkpoint is None:
        result = build_trainer(cfg, plan).fit()
        if result.error is not None:
            raise result.error
        checkpoint = result.checkpoint.path if result.checkpoint else None
    else:  # a finished run submitted again: nothing to train, no worker group to start
        print(f"{cfg.run.name}: already finished at step {plan.total_steps} ({checkpoint}); nothing to train")
    metrics = storage.join(str(run_dir), "metrics.jsonl")
    rows = read_metrics(metrics)
    plot = storage.join(str(run_dir), "loss_per_source.png")
    with storage.local_dir_for(plot) as local:
        plot_loss_per_source(metrics, local, title=f"{cfg.run.name}: loss per source")
    hf_final = storage.join(str(run_dir), "hf", "final")
    return TrainResult(
        run_dir=run_dir,
        hf_final=_local_or_uri(hf_final),
        plot=_local_or_uri(plot),
        checkpoint=checkpoint,
        total_steps=plan.total_steps,
        grad_accum=plan.grad_accum,
        first=rows[0],
        last=rows[-1],
        config_path=_local_or_uri(config_path),
        problems=[]
        if not cfg.train.save_final
        # an HF model, or the peft adapter alone (a LoRA run with lora.export: adapter)
        or any(storage.isfile(storage.join(hf_final, f)) for f in ("config.json", "adapter_config.json"))
        else [f"no final HF export at {hf_final}"],
    )
