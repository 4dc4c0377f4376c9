"""``train_loop_per_worker``: the one training loop of pretraining (and, with ``task: sft``, of SFT).

Each Ray Train worker builds the FSDP2 model (``fsdp.py``), AdamW with the paper's schedule
(``schedule.py``), resumes from ``ray.train.get_checkpoint()`` when there is one (model, optimizer,
scheduler and data position, ``checkpoint.py``), and runs gradient-accumulated steps over its stride of
the token blocks (``data.py``). Losses are summed per mixture source and all-reduced at each report, so
the general vs clinical curves of the paper's Figure 1 are exact token averages over all workers.
Batches carry ``labels`` with -100 where no loss is taken, which is all SFT needs from the loss. The
trade-off: one plain loop rather than a trainer framework, so every step is visible and resumable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clinray.train.data import IGNORE_INDEX, DataPosition

__all__ = ["train_loop_per_worker", "token_losses"]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy per position (fp32) and the mask of positions that count."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    losses = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    return losses, shift_labels != IGNORE_INDEX


def _optimizer(model, optim_cfg, *, device: torch.device):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": optim_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=optim_cfg.max_lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        fused=True,  # one kernel per parameter group on CPU and GPU (the transformers Trainer's default)
    )


class _SourceLoss:
    """Loss sums and token counts per source since the last report, all-reduced on read."""

    def __init__(self, sources: list[str], device: torch.device) -> None:
        self.names = [*sources, "other"]
        self.sums = torch.zeros(len(self.names), 2, dtype=torch.float64, device=device)

    def add(self, losses: torch.Tensor, mask: torch.Tensor, source_id: torch.Tensor) -> None:
        per_row = (losses * mask).sum(dim=1).double()
        counts = mask.sum(dim=1).double()
        self.sums[:, 0].index_add_(0, source_id, per_row)
        self.sums[:, 1].index_add_(0, source_id, counts)

    def read(self) -> dict[str, float | None]:
        import torch.distributed as dist

        totals = self.sums.clone()
        if dist.is_initialized():
            dist.all_reduce(totals)
        self.sums.zero_()
        out: dict[str, float | None] = {"loss": (totals[:, 0].sum() / totals[:, 1].sum().clamp(min=1)).item()}
        for i, name in enumerate(self.names):
            if name != "other" or totals[i, 1] > 0:
                out[f"loss_{name}"] = (totals[i, 0] / totals[i, 1]).item() if totals[i, 1] > 0 else None
        out["num_loss_tokens"] = int(totals[:, 1].sum().item())
        return out


def _agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all workers take the same branch)."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _setup(cfg, plan: dict):
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.scaling.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.manual_seed(cfg.train.seed)
    from clinray.train.fsdp import build_model
    from clinray.train.schedule import build_scheduler

    model = build_model(cfg.model, cfg.fsdp, device=device, seed=cfg.train.seed)
    optimizer = _optimizer(model, cfg.optim, device=device)
    scheduler = build_scheduler(optimizer, total_steps=plan["total_steps"], optim_cfg=cfg.optim)
    return rank, world, device, model, optimizer, scheduler


def _resume(model, optimizer, scheduler) -> dict:
    import ray.train

    from clinray.train.checkpoint import load_sharded

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"step": 0, "tokens_seen": 0, "epoch": 0, "num_batches": 0, "resumed_from": None}
    with checkpoint.as_directory() as folder:
        state = load_sharded(folder, model, optimizer, scheduler)
    state["resumed_from"] = state["step"]
    return state


def _step_metrics(
    tracker: _SourceLoss,
    *,
    step: int,
    state: dict,
    lr: float,
    grad_norm: float,
    elapsed: float,
    num_tokens: int,
    plan: dict,
    world: int,
) -> dict:
    metrics = {"step": step, "tokens_seen": state["tokens_seen"], "epoch": state["epoch"], **tracker.read()}
    tokens_per_s = num_tokens / max(elapsed, 1e-9)
    metrics.update(
        lr=lr, grad_norm=grad_norm, tokens_per_s=tokens_per_s, tokens_per_s_per_device=tokens_per_s / world
    )
    peak = plan.get("peak_flops_per_device")
    metrics["mfu"] = tokens_per_s / world * plan["flops_per_token"] / peak if peak else None
    metrics["resumed_from"] = state.get("resumed_from")
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


def _add_flops(plan: dict, cfg, model, device: torch.device) -> None:
    """FLOPs per token and (on a GPU from the table) the device's peak, for MFU."""
    from clinray.train.fsdp import resolve_param_dtype
    from clinray.train.metrics import flops_per_token, non_embedding_params, peak_flops

    if not plan.get("peak_flops_per_device") and device.type == "cuda":
        dtype = str(resolve_param_dtype(cfg.fsdp.param_dtype, device)).removeprefix("torch.")
        plan["peak_flops_per_device"] = peak_flops(torch.cuda.get_device_name(device), dtype)
    plan["flops_per_token"] = flops_per_token(
        num_params=non_embedding_params(model),
        num_layers=plan["num_layers"],
        hidden_size=plan["hidden_size"],
        seq_len=plan["seq_len"],
    )


def _train_step(model, optimizer, scheduler, batches, tracker, *, accum: int, device, grad_clip: float):
    """One optimizer step over ``accum`` micro-batches; return (data position after it, grad norm)."""
    for _ in range(accum):
        position, batch = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"]).logits
        losses, mask = token_losses(logits, batch["labels"])
        # mean over this micro-batch's loss tokens; FSDP averages over workers (exact when counts are
        # equal, as in pretraining; a per-micro-batch mean for SFT's uneven masks)
        loss = (losses * mask).sum() / mask.sum().clamp(min=1) / accum
        loss.backward()
        tracker.add(losses.detach(), mask, batch["source_id"])
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return position, grad_norm


def _report(
    model,
    optimizer,
    scheduler,
    metrics: dict,
    *,
    cfg,
    state: dict,
    save: bool,
    last: bool,
    export: bool,
    rank: int,
    run_dir: Path,
) -> None:
    """``ray.train.report``: with a sharded checkpoint when ``save``, metrics alone on the ``last`` step;
    and, when ``export``, an HF export.

    Other log steps are not reported to Ray Train: Train V2 keeps only metrics attached to a checkpoint,
    and each ``report`` call waited on the controller's polling (1.3 s a call on the tiny CPU benchmark,
    more than five training steps: throughput went from 2,600 to 6,900 tokens/s without them). Rank 0
    writes every metrics row to ``metrics.jsonl`` and TensorBoard, which is what the run summary, the
    plots and the checkpoint sweep read.
    """
    import ray.train
    from ray.train import Checkpoint

    from clinray.train.checkpoint import export_hf, save_sharded

    step = state["step"]
    if save:
        folder = save_sharded(model, optimizer, scheduler, state=state, rank=rank)
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(str(folder)),
            checkpoint_dir_name=f"checkpoint_{step:07d}",
            delete_local_checkpoint_after_upload=True,
        )
    elif last:
        ray.train.report(metrics)
    if export:
        meta = {"step": step, "tokens_seen": state["tokens_seen"], "source_run": str(run_dir)}
        export_hf(model, model_path=cfg.model.path, out=run_dir / "hf" / f"step_{step}", meta=meta, rank=rank)


def _maybe_fail(cfg, *, step: int, rank: int, world: int, run_dir: Path) -> None:
    """Testing knob: rank 1 (rank 0 alone) dies once, just after the checkpoint of ``fail_at_step``."""
    if step != cfg.train.fail_at_step or rank != min(1, world - 1):
        return
    marker = run_dir / f".failed_once_at_{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    # die only once the controller has registered this step's checkpoint (it writes the snapshot then)
    snapshot, name = run_dir / "checkpoint_manager_snapshot.json", f"checkpoint_{step:07d}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (snapshot.exists() and name in snapshot.read_text()):
        time.sleep(0.2)
    os._exit(1)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config = {"cfg": PretrainConfig as dict, "plan": derived numbers}``."""
    import ray.train

    from clinray.config import from_dict
    from clinray.train.config import PretrainConfig
    from clinray.train.data import iter_micro_batches
    from clinray.train.metrics import MetricsWriter

    cfg = from_dict(PretrainConfig, config["cfg"])
    plan = dict(config["plan"])
    run_dir = Path(plan["run_dir"])
    rank, world, device, model, optimizer, scheduler = _setup(cfg, plan)
    _add_flops(plan, cfg, model, device)
    state = _resume(model, optimizer, scheduler)
    writer = MetricsWriter(run_dir) if rank == 0 else None
    batches = iter_micro_batches(
        ray.train.get_dataset_shard("train"),
        position=DataPosition(epoch=state["epoch"], num_batches=state["num_batches"]),
        rank=rank,
        world_size=world,
        micro_batch_size=cfg.train.micro_batch_size,
        sources=cfg.data.sources,
        shuffle_seed=cfg.data.shuffle_seed,
        shuffle_buffer_blocks=cfg.data.shuffle_buffer_blocks,
    )
    tracker = _SourceLoss(cfg.data.sources, device)
    total_steps, accum = plan["total_steps"], plan["grad_accum"]
    start = last_log = time.perf_counter()
    tokens_since_log = 0
    step = state["step"]
    last = step >= total_steps
    while step < total_steps:
        lr = scheduler.get_last_lr()[0]
        position, grad_norm = _train_step(
            model,
            optimizer,
            scheduler,
            batches,
            tracker,
            accum=accum,
            device=device,
            grad_clip=cfg.optim.grad_clip,
        )
        step += 1
        tokens_since_log += plan["global_batch_tokens"]
        state.update(
            step=step,
            tokens_seen=state["tokens_seen"] + plan["global_batch_tokens"],
            epoch=position.epoch,
            num_batches=position.num_batches,
        )
        out_of_time = cfg.train.max_time_s > 0 and time.perf_counter() - start > cfg.train.max_time_s
        last = step == total_steps or (cfg.train.max_time_s > 0 and _agree(out_of_time, device))
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
            _maybe_fail(cfg, step=step, rank=rank, world=world, run_dir=run_dir)
        if last:
            break
        last_log = time.perf_counter()  # exclude reporting, checkpoints and exports from tokens/s
    if last and cfg.train.save_final and rank == 0:
        _finalize(run_dir, step)
    if writer is not None:
        writer.close()


def _finalize(run_dir: Path, step: int) -> None:
    """Point ``<run>/hf/final`` at the last export (a copy, so the sweep can prune step folders)."""
    import shutil

    src, dst = run_dir / "hf" / f"step_{step}", run_dir / "hf" / "final"
    tmp = run_dir / "hf" / ".final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
