"""The per-step pieces of training, free of Ray: model + AdamW + schedule, the loss, one optimizer step,
the per-source loss sums, and the FLOPs and peak that give MFU.

:mod:`clinray.train.loop` runs them inside Ray Train; ``benchmarks/gpu_check.py`` drives the very same
functions through ``torch.distributed`` alone (one process, or ``torchrun``) on a machine that has
torch and transformers but no Ray, Ray Data or pyarrow. Nothing here imports those. The trade-off: the
loop's Ray glue (context, dataset shard, report, checkpoint upload) lives apart from the step it drives,
one more module to read, in exchange for a step that can be measured where Ray cannot be installed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from clinray.train.data import IGNORE_INDEX

__all__ = [
    "token_losses",
    "build_optimizer",
    "SourceLoss",
    "agree",
    "train_step",
    "forward_logits",
    "varlen_kwargs",
    "global_loss_tokens",
    "compute_dtype",
    "build_training",
    "build_converters",
    "add_flops",
]


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


def build_optimizer(model, optim_cfg) -> torch.optim.AdamW:
    """AdamW over the model's parameters: weight decay on matrices, none on norms and biases."""
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


class SourceLoss:
    """Loss sums and token counts per source since the last report, all-reduced on read."""

    def __init__(self, sources: list[str], device: torch.device) -> None:
        self.names = [*sources, "other"]
        self.sums = torch.zeros(len(self.names), 2, dtype=torch.float64, device=device)

    def add(self, losses: torch.Tensor, mask: torch.Tensor, source_id: torch.Tensor) -> None:
        """Add a micro-batch: ``source_id`` per row (token blocks) or per target token (packed rows)."""
        if source_id.ndim == 2:
            flat = source_id.reshape(-1)
            self.sums[:, 0].index_add_(0, flat, (losses * mask).reshape(-1).double())
            self.sums[:, 1].index_add_(0, flat, mask.reshape(-1).double())
            return
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


def agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all workers take the same branch)."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """Flash attention's varlen arguments for rows laid end to end: a sample starts where positions restart."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    bounds = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    longest = int((bounds[1:] - bounds[:-1]).max().item())
    return {
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def forward_logits(model, batch: dict, *, attn_implementation: str = "sdpa") -> torch.Tensor:
    """Logits of a micro-batch; packed rows keep their samples apart.

    Packed rows carry ``position_ids`` that restart at every sample and no attention mask: with sdpa,
    transformers then builds a block-diagonal causal mask from the positions (only without a 2D mask
    and with ``use_cache=False``; with either, samples attend to each other). With flash attention the
    rows are laid end to end as one sequence with ``cu_seq_lens`` (the varlen kernel). Token blocks of
    pretraining are plain causal rows.
    """
    if "position_ids" not in batch:
        return model(input_ids=batch["input_ids"], use_cache=False).logits
    if attn_implementation == "flash_attention_2":
        rows, length = batch["input_ids"].shape
        flat = {k: batch[k].reshape(1, -1) for k in ("input_ids", "position_ids")}
        logits = model(**flat, **varlen_kwargs(flat["position_ids"]), use_cache=False).logits
        return logits.reshape(rows, length, -1)
    if attn_implementation == "eager":
        raise ValueError("eager attention would mix packed samples: use sdpa or flash_attention_2")
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits


def global_loss_tokens(micro_batches: list[dict], device) -> torch.Tensor:
    """Loss tokens of this step over all micro-batches and all ranks (the denominator of the token mean)."""
    import torch.distributed as dist

    count = torch.zeros((), dtype=torch.float64, device=device)
    for batch in micro_batches:
        count += (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    if dist.is_initialized():
        dist.all_reduce(count)
    return count.clamp(min=1)


def train_step(
    model,
    optimizer,
    scheduler,
    batches,
    tracker,
    *,
    accum: int,
    device,
    grad_clip: float,
    attn_implementation: str = "sdpa",
    neftune=None,
    micro_index: int = 0,
):
    """One optimizer step over ``accum`` micro-batches; return (data position after it, grad norm).

    The loss is the token mean over the whole global batch: each micro-batch's summed loss is divided
    by the loss tokens of all micro-batches on all ranks, times the world size (FSDP averages gradients
    over ranks). So packing, uneven SFT masks and accumulation never reweight a token; for pretraining's
    full blocks it equals the per-micro-batch mean. ``micro_index`` numbers this step's first
    micro-batch in the run (NEFTune's noise seed).
    """
    import torch.distributed as dist

    fetched = []
    for _ in range(accum):
        position, batch = next(batches)
        fetched.append({k: v.to(device, non_blocking=True) for k, v in batch.items()})
    world = dist.get_world_size() if dist.is_initialized() else 1
    denominator = global_loss_tokens(fetched, device) / world
    for k, batch in enumerate(fetched):
        noise = (
            neftune.batch(batch.get("sample_len"), micro_index=micro_index + k)
            if neftune is not None
            else contextlib.nullcontext()
        )
        with noise:
            logits = forward_logits(model, batch, attn_implementation=attn_implementation)
        losses, mask = token_losses(logits, batch["labels"])
        loss = (losses * mask).sum() / denominator
        loss.backward()
        source = batch["source_id"]
        tracker.add(losses.detach(), mask, source[:, 1:] if source.ndim == 2 else source)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return position, grad_norm


def compute_dtype(fsdp_cfg, device: torch.device) -> str:
    """The matmul dtype the peak is looked up for: ``bfloat16``, ``tfloat32`` or ``float32``.

    On CUDA with fp32 compute this also applies ``fsdp.allow_tf32`` (TF32 tensor cores for fp32
    matmuls), so the label always says what the matmuls run in.
    """
    from clinray.train.fsdp import resolve_param_dtype

    dtype = resolve_param_dtype(fsdp_cfg.param_dtype, device)
    if dtype != torch.float32:
        return str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if fsdp_cfg.allow_tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = bool(fsdp_cfg.allow_tf32)
    return "float32" if torch.get_float32_matmul_precision() == "highest" else "tfloat32"


def build_converters(cfg, *, rank: int) -> tuple[list, dict]:
    """The model converters a config asks for (applied before sharding) and the objects they made.

    Pretraining: none. SFT with ``neftune.alpha > 0``: the NEFTune hook (``made["neftune"]``). Any task
    with ``lora.r > 0``: LoRA injected before sharding (``made["lora"]``).
    """
    made: dict = {}
    converters = []
    if cfg.train.task == "sft" and cfg.neftune.alpha > 0:
        from clinray.train.neftune import NEFTune

        def neftune(model) -> None:
            made["neftune"] = NEFTune(
                model,
                alpha=cfg.neftune.alpha,
                scale=cfg.neftune.scale,
                length=cfg.neftune.length,
                seed=cfg.train.seed,
                rank=rank,
            )

        converters.append(neftune)
    if cfg.lora.enabled:
        from clinray.train.lora import lora_converter

        made["lora"] = lora_converter(cfg.lora, seed=cfg.train.seed)
        converters.append(made["lora"])
    return converters, made


def build_training(
    cfg, *, total_steps: int, device: torch.device, seq_len: int | None = None, converters=(), **fsdp_kw
):
    """The sharded model, AdamW and the warm-up + cosine schedule of a ``TrainConfig``.

    ``converters`` go to :func:`clinray.train.fsdp.build_model` (see :func:`build_converters`);
    ``fsdp_kw`` too (``reshard_root``: the check kit's A/B). The process group must exist (Ray Train's,
    or ``torch.distributed.init_process_group``).
    """
    from clinray.train.fsdp import build_model
    from clinray.train.schedule import build_scheduler

    torch.manual_seed(cfg.train.seed)
    compute_dtype(cfg.fsdp, device)  # TF32 on or off before any matmul
    model = build_model(
        cfg.model,
        cfg.fsdp,
        device=device,
        seed=cfg.train.seed,
        seq_len=seq_len,
        converters=converters,
        **fsdp_kw,
    )
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, total_steps=total_steps, optim_cfg=cfg.optim)
    return model, optimizer, scheduler


def add_flops(plan, cfg, model, device: torch.device) -> None:
    """Set ``plan.flops_per_token`` and, on a GPU of the peak table, ``plan.peak_flops_per_device``.

    ``plan`` is a :class:`clinray.train.plan.RunPlan`; a ``peak_flops_per_device`` already there
    (``run.peak_flops_per_device``) wins over the table. ``plan.compute_dtype`` records the dtype the
    peak is for.
    """
    from clinray.train.metrics import attention_width, flops_per_token, non_embedding_params, peak_flops

    plan.compute_dtype = compute_dtype(cfg.fsdp, device)
    if not plan.peak_flops_per_device and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        plan.peak_flops_per_device = peak_flops(
            props.name, plan.compute_dtype, num_sms=props.multi_processor_count
        )
    plan.flops_per_token = flops_per_token(
        num_params=non_embedding_params(model),
        num_layers=model.config.num_hidden_layers,
        attn_width=attention_width(model.config),
        seq_len=plan.seq_len,
    )
