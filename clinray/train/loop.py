"""``train_loop_per_worker``: the one training loop of pretraining (and, with ``task: sft``, of SFT).

Each Ray Train worker builds the FSDP2 model (``fsdp.py``), AdamW with the paper's schedule
(``schedule.py``), resumes from ``ray.train.get_checkpoint()`` when there is one (model, optimizer,
scheduler and data position, ``checkpoint.py``), and runs gradient-accumulated steps over its stride of
the token blocks (``data.py``). Losses are summed per mixture source and all-reduced at each report, so
the general vs clinical curves of the paper's Figure 1 are exact token averages over all workers.
Batches carry ``labels`` with -100 where no loss is taken, which is all SFT needs from the loss. The
trade-off: one plain loop rather than a trainer framework, so every step is visible and resumable.

The per-step pieces (model, optimizer, loss, step, FLOPs) are in :mod:`clinray.train.step` and import
no Ray; here Ray is imported inside the functions that talk to Ray Train, so ``import
clinray.train.loop`` works on a machine without Ray (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from clinray import storage
from clinray.train.data import DataPosition
from clinray.train.plan import RunPlan, TrainState
from clinray.train.step import (
    SourceLoss,
    add_flops,
    agree,
    build_converters,
    build_training,
    token_losses,
    train_step,
)

__all__ = ["train_loop_per_worker", "token_losses"]


def _setup(cfg, plan: RunPlan):
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.scaling.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    converters, made = build_converters(cfg, rank=rank)
    model, optimizer, scheduler = build_training(
        cfg, total_steps=plan.total_steps, device=device, seq_len=plan.seq_len, converters=converters
    )
    return rank, world, device, model, optimizer, scheduler, made.get("neftune")


def _resume(model, optimizer, scheduler) -> TrainState:
    import ray.train

    from clinray.train.checkpoint import load_sharded

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as folder:
        state = TrainState.from_dict(load_sharded(folder, model, optimizer, scheduler))
    state.resumed_from = state.step
    return state


def _step_metrics(
    tracker: SourceLoss,
    *,
    step: int,
    state: TrainState,
    lr: float,
    grad_norm: float,
    elapsed: float,
    num_tokens: int,
    plan: RunPlan,
    world: int,
) -> dict:
    metrics = {"step": step, "tokens_seen": state.tokens_seen, "epoch": state.epoch, **tracker.read()}
    tokens_per_s = num_tokens / max(elapsed, 1e-9)
    metrics.update(
        lr=lr, grad_norm=grad_norm, tokens_per_s=tokens_per_s, tokens_per_s_per_device=tokens_per_s / world
    )
    peak = plan.peak_flops_per_device
    metrics["mfu"] = tokens_per_s / world * plan.flops_per_token / peak if peak else None
    metrics["resumed_from"] = state.resumed_from
    metrics["num_threads"] = torch.get_num_threads()
    return metrics


def _progress_line(metrics: dict, *, total_steps: int) -> str:
    """``step 12/140  loss clinical 3.412 general 3.901  lr 1.2e-03  tok/s 6,950`` (sources with tokens)."""
    losses = " ".join(
        f"{key.removeprefix('loss_')} {value:.3f}"
        for key, value in metrics.items()
        if key.startswith("loss_") and value is not None
    )
    return (
        f"step {metrics['step']}/{total_steps}  loss {losses or format(metrics['loss'], '.3f')}"
        f"  lr {metrics['lr']:.1e}  tok/s {metrics['tokens_per_s']:,.0f}"
    )


def _direct_checkpoint_dir(name: str):
    """``(folder in the run's storage, its filesystem)`` when DCP can write there itself, else None.

    Ray Train V2 registers a checkpoint already in the run folder with ``CheckpointUploadMode.NO_UPLOAD``.
    That needs the storage to be a filesystem path every worker sees (local or NFS, which Ray checks
    with its marker file): DCP's ``FileSystemWriter`` writes plain files. For a URI (``s3://``) the
    shards go through a local temporary folder and Ray's upload, as before.
    """
    import ray.train

    try:
        import pyarrow.fs
        from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME

        storage = ray.train.get_context().get_storage()  # a DeveloperAPI: fall back if it changes
        local = isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
        experiment = Path(storage.experiment_fs_path)
    except (ImportError, AttributeError, NotImplementedError):
        return None
    if not local or not (experiment / VALIDATE_STORAGE_MARKER_FILENAME).exists():
        return None
    return Path(storage.build_checkpoint_path_from_name(name)), storage.storage_filesystem


def _report(
    model,
    optimizer,
    scheduler,
    metrics: dict,
    *,
    cfg,
    state: TrainState,
    save: bool,
    last: bool,
    export: bool,
    rank: int,
    run_dir: Path | str,
) -> None:
    """``ray.train.report``: with a sharded checkpoint when ``save``, metrics alone on the ``last`` step;
    and, when ``export``, an HF export into ``<run>/hf/step_<N>`` (for a URI run folder: written to a
    local temporary folder, then uploaded, ``config.json`` last).

    The checkpoint is written by DCP straight into ``<run>/checkpoint_<step>`` when the storage is a
    shared filesystem path, and registered without an upload (``NO_UPLOAD``); Ray registers it once
    every worker has reported, so a crash mid-save still leaves the previous checkpoint as the one
    ``get_checkpoint()`` returns. Otherwise each worker writes a local temporary folder that Ray uploads.

    Other log steps are not reported to Ray Train: Train V2 keeps only metrics attached to a checkpoint,
    and each ``report`` call waited on the controller's polling (1.3 s a call on the tiny CPU benchmark,
    more than five training steps: throughput went from 2,600 to 6,900 tokens/s without them). Rank 0
    writes every metrics row to ``metrics.jsonl`` and TensorBoard, which is what the run summary, the
    plots and the checkpoint sweep read.
    """
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    from clinray.train.checkpoint import export_run_model, save_sharded

    step = state.step
    name = f"checkpoint_{step:07d}"
    if save:
        direct = _direct_checkpoint_dir(name)
        folder = save_sharded(
            model,
            optimizer,
            scheduler,
            state=state.to_dict(),
            rank=rank,
            folder=direct[0] if direct else None,
        )
        _maybe_fail_during_save(cfg, step=step, rank=rank, run_dir=run_dir)
        if direct:
            ray.train.report(
                metrics,
                checkpoint=Checkpoint(str(folder), filesystem=direct[1]),
                checkpoint_dir_name=name,
                checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
                delete_local_checkpoint_after_upload=False,
            )
        else:
            ray.train.report(
                metrics,
                checkpoint=Checkpoint.from_directory(str(folder)),
                checkpoint_dir_name=name,
                delete_local_checkpoint_after_upload=True,
            )
    elif last:
        ray.train.report(metrics)
    if export:
        meta = {
            "step": step,
            "tokens_seen": state.tokens_seen,
            "source_run": str(run_dir),
            "task": cfg.train.task,
        }
        with storage.local_dir_for(storage.join(str(run_dir), "hf", f"step_{step}")) as out:
            export_run_model(model, cfg, out=out, meta=meta, rank=rank)  # LoRA: merged + adapter


def _wait_registered(run_dir: Path | str, name: str, timeout_s: float = 60.0) -> None:
    """Wait until the controller has registered checkpoint ``name`` (it writes its snapshot then)."""
    snapshot = storage.join(str(run_dir), "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (
        storage.isfile(snapshot) and name in storage.read_text(snapshot)
    ):
        time.sleep(0.2)


def _first_time(marker: Path | str) -> bool:
    """True once per run folder: create ``marker`` (a fault knob fires only on the first attempt)."""
    if storage.exists(marker):
        return False
    storage.write_text(marker, "")
    return True


def _maybe_fail_during_save(cfg, *, step: int, rank: int, run_dir: Path) -> None:
    """Testing knob: rank 1 dies once between writing its checkpoint shard and reporting it.

    It first waits until the previous checkpoint is registered: the controller takes reports when it
    polls the workers, and a death within one poll interval of the previous report would otherwise
    lose that report too, which is Ray's behaviour for two failures in a row, not the case under test.
    """
    if step != cfg.train.fail_during_save_at_step or rank != 1:
        return
    if not _first_time(storage.join(str(run_dir), f".failed_during_save_at_{step}")):
        return
    every = cfg.train.checkpoint_every
    previous = (step - 1) // every * every if every else 0
    if previous > 0:
        _wait_registered(run_dir, f"checkpoint_{previous:07d}")
    os._exit(1)


def _maybe_fail(cfg, *, step: int, rank: int, world: int, run_dir: Path) -> None:
    """Testing knob: rank 1 (rank 0 alone) dies once, just after the checkpoint of ``fail_at_step``."""
    if step != cfg.train.fail_at_step or rank != min(1, world - 1):
        return
    if not _first_time(storage.join(str(run_dir), f".failed_once_at_{step}")):
        return
    _wait_registered(run_dir, f"checkpoint_{step:07d}")  # die only once this step's checkpoint is registered
    os._exit(1)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config = {"cfg": TrainConfig as dict, "plan": RunPlan as dict}``."""
    import ray.train

    from clinray.config import from_dict
    from clinray.train.config import TrainConfig
    from clinray.train.data import iter_micro_batches
    from clinray.train.metrics import MetricsWriter

    cfg = from_dict(TrainConfig, config["cfg"])
    plan = RunPlan.from_dict(config["plan"])
    run_dir = plan.run_dir if storage.is_uri(plan.run_dir) else Path(plan.run_dir)
    rank, world, device, model, optimizer, scheduler, neftune = _setup(cfg, plan)
    add_flops(plan, cfg, model, device)
    state = _resume(model, optimizer, scheduler)
    writer = MetricsWriter(run_dir) if rank == 0 else None
    sft = plan.task == "sft"
    batches = iter_micro_batches(
        ray.train.get_dataset_shard("train"),
        position=DataPosition(epoch=state.epoch, num_batches=state.num_batches),
        rank=rank,
        world_size=world,
        micro_batch_size=cfg.train.micro_batch_size,
        sources=cfg.data.sources,
        shuffle_seed=cfg.data.shuffle_seed,
        # SFT rows are already in their seeded per-epoch order (clinray.sft.packing)
        shuffle_buffer_blocks=0 if sft else cfg.data.shuffle_buffer_blocks,
    )
    tracker = SourceLoss(cfg.data.sources, device)
    total_steps, accum = plan.total_steps, plan.grad_accum
    start = last_log = time.perf_counter()
    tokens_since_log = 0
    step = state.step
    last = step >= total_steps
    while step < total_steps:
        lr = scheduler.get_last_lr()[0]
        position, grad_norm = train_step(
            model,
            optimizer,
            scheduler,
            batches,
            tracker,
            accum=accum,
            device=device,
            grad_clip=cfg.optim.grad_clip,
            attn_implementation=cfg.model.attn_implementation,
            neftune=neftune,
            micro_index=step * accum,
        )
        step += 1
        tokens_since_log += plan.global_batch_tokens
        state.step, state.tokens_seen = step, state.tokens_seen + plan.global_batch_tokens
        state.epoch, state.num_batches = position.epoch, position.num_batches
        out_of_time = cfg.train.max_time_s > 0 and time.perf_counter() - start > cfg.train.max_time_s
        last = step == total_steps or (cfg.train.max_time_s > 0 and agree(out_of_time, device))
        every = cfg.train.checkpoint_every
        final = last and cfg.train.save_final
        save = final or (every > 0 and step % every == 0)
        if not (save or last or step % cfg.train.log_every == 0):
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        metrics = _step_metrics(
            tracker,
            step=step,
            state=state,
            lr=lr,
            grad_norm=float(grad_norm),
            elapsed=now - last_log,
            num_tokens=tokens_since_log,
            plan=plan,
            world=world,
        )
        metrics["elapsed_s"] = now - start  # since this worker started training (wall clock, all included)
        last_log, tokens_since_log = now, 0
        if writer is not None:  # rank 0
            writer.write(metrics)
            print(_progress_line(metrics, total_steps=total_steps), flush=True)
        _report(
            model,
            optimizer,
            scheduler,
            metrics,
            cfg=cfg,
            state=state,
            save=save,
            last=last,
            export=final or (cfg.train.hf_export_every > 0 and step % cfg.train.hf_export_every == 0),
            rank=rank,
            run_dir=run_dir,
        )
        if save:
            if writer is not None:
                writer.sync()  # a URI run folder: the rows up to this checkpoint are on storage
            _maybe_fail(cfg, step=step, rank=rank, world=world, run_dir=run_dir)
        if last:
            break
        last_log = time.perf_counter()  # exclude reporting, checkpoints and exports from tokens/s
    if last and cfg.train.save_final and rank == 0:
        _finalize(run_dir, step)
    if writer is not None:
        writer.close()


def _finalize(run_dir: Path | str, step: int) -> None:
    """Point ``<run>/hf/final`` at the last export (a copy, so the sweep can prune step folders)."""
    import shutil

    if storage.is_uri(run_dir):  # copied by the object store itself, config.json last
        storage.copy_dir(storage.join(run_dir, "hf", f"step_{step}"), storage.join(run_dir, "hf", "final"))
        return
    src, dst = run_dir / "hf" / f"step_{step}", run_dir / "hf" / "final"
    tmp = run_dir / "hf" / ".final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
