"""Sharded DCP checkpoints through Ray Train, and HF exports of any checkpoint for the Figure 2 sweep.

Each worker writes its own shard of the model and optimizer with ``torch.distributed.checkpoint``, plus
(rank 0) ``clinray_state.json`` with the step, the tokens seen and the data position. When the run's
storage is a filesystem path (local or NFS) the shards go straight into
``<storage>/<name>/checkpoint_<step>`` and the loop registers that folder without an upload; for a URI
(``s3://``) they go to a fresh local temporary folder that ``ray.train.report(checkpoint=...)`` uploads
and merges. Either way Ray Train registers the checkpoint only once every worker has reported, so a
crash during a save leaves the previous registered checkpoint as the one ``ray.train.get_checkpoint()``
returns, and ``CheckpointConfig(num_to_keep=...)`` prunes the old ones.

HF exports (``<run>/hf/step_<N>``) are streamed: parameters are gathered one at a time (each rank takes
part in every gather), cast to the export dtype on their device, and rank 0 keeps only the safetensors
shard being filled (whole decoder layers, up to ``max_shard_bytes``) before writing it, in the
checkpoint layout of the hub (transformers' own conversions reverted shard by shard: Mixtral's fused
experts are written per expert). Rank 0's CPU memory is thus one shard plus one tensor, about 5 GB,
instead of the whole model in fp32 plus a bf16 copy (43 GB for Mistral-7B). The folder is written under
a temporary name and renamed into place. The trade-off: one collective per parameter, fine next to the
disk write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

STATE_FILE = "clinray_state.json"
__all__ = ["save_sharded", "load_sharded", "export_hf", "export_run_model"]


def save_sharded(
    model, optimizer, scheduler, *, state: dict, rank: int, folder: str | Path | None = None
) -> Path:
    """Write this worker's DCP shard (+ rank 0's ``clinray_state.json``) into ``folder``.

    ``folder``: the checkpoint's final place, the same on every rank (the run's storage); None: a new
    local temporary folder per worker, for Ray to upload.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix=f"clinray_ckpt_r{rank}_"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    model_sd, adapter_only = _checkpointed(model, model_sd)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
    if rank == 0:
        full_state = {**state, "scheduler": scheduler.state_dict(), "adapter_only": adapter_only}
        (folder / STATE_FILE).write_text(json.dumps(full_state, indent=2))
    return folder


def load_sharded(folder: str | Path, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer and scheduler from a merged checkpoint folder; return the loop state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    folder = Path(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file() or not (folder / ".metadata").is_file():
        raise ValueError(f"{folder} is not a complete clinray checkpoint (missing {STATE_FILE} or .metadata)")
    state = json.loads(state_path.read_text())
    model_sd, optim_sd = get_state_dict(model, optimizer)
    model_sd, adapter_only = _checkpointed(model, model_sd)
    if state.pop("adapter_only", False) != adapter_only:
        raise ValueError(
            f"{folder} holds {'adapters only' if not adapter_only else 'full model weights'} but this run "
            f"{'has LoRA' if adapter_only else 'trains the full model'}: resume with the lora section it was saved with"
        )
    target = {"model": model_sd, "optim": optim_sd}
    dcp.load(target, checkpoint_id=str(folder))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=target["model"],
        optim_state_dict=target["optim"],
        options=StateDictOptions(strict=not adapter_only),  # adapter-only: the frozen base is the folder's
    )
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def _checkpointed(model, model_sd: dict) -> tuple[dict, bool]:
    """The model entries a checkpoint holds, and whether that is the adapters alone.

    A LoRA run (:mod:`clinray.train.lora`) saves its trainable entries only: the frozen base is rebuilt
    from ``model.path`` on resume, so a 7B run's checkpoint is megabytes of adapter plus their AdamW
    state instead of the whole model again. Every rank writes its slice of each adapter (DCP), so a
    resume on N ranks restores all of it.
    """
    from clinray.train.lora import has_adapter

    if not has_adapter(model):
        return model_sd, False
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return {k: v for k, v in model_sd.items() if k in trainable}, True


def _export_entries(model) -> dict[str, torch.Tensor]:
    """The model's state-dict entries in order, tied duplicates dropped (a DTensor per sharded parameter)."""
    params = dict(model.named_parameters())  # one name per tensor: a tied LM head is its embedding
    buffers = dict(model.named_buffers())
    entries = {}
    for name in model.state_dict():
        tensor = params.get(name, buffers.get(name))
        if tensor is not None:
            entries[name] = tensor.detach()
    return entries


def _plan_shards(
    entries: dict[str, torch.Tensor], *, dtype: torch.dtype, max_shard_bytes: int
) -> list[list[str]]:
    """Names per safetensors file: whole decoder layers packed greedily up to ``max_shard_bytes``.

    A layer is never split, so transformers' per-layer conversions can be reverted shard by shard; a
    layer larger than the limit gets a file of its own.
    """
    units: dict[str, list[str]] = {}
    for name in entries:
        layer = re.match(r"(.*\.layers\.\d+)\.", name)
        units.setdefault(layer.group(1) if layer else name, []).append(name)
    shards: list[list[str]] = []
    size = 0
    for names in units.values():
        nbytes = sum(_export_bytes(entries[n], dtype) for n in names)
        if not shards or (size + nbytes > max_shard_bytes and size > 0):
            shards.append([])
            size = 0
        shards[-1].extend(names)
        size += nbytes
    return shards


def _export_bytes(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    return tensor.numel() * (dtype.itemsize if tensor.is_floating_point() else tensor.element_size())


def _to_hub_layout(skeleton, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Revert transformers' load-time conversions (e.g. Mixtral's fused experts) for one shard."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without conversions: names are the hub's already
        return part
    return {k: v.contiguous() for k, v in revert_weight_conversion(skeleton, part).items()}


def export_hf(
    model,
    *,
    model_path: str | Path,
    out: str | Path,
    meta: dict,
    rank: int,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 5_000_000_000,
) -> Path | None:
    """Stream the full model to rank 0 and write an HF folder (safetensors, config, tokenizer, meta).

    Every rank must call it (each parameter's gather is collective); only rank 0 writes and returns
    the folder. Written to ``out.tmp-*`` then renamed, so a reader never sees a half-written export.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    entries = _export_entries(model)
    shards = _plan_shards(entries, dtype=dtype, max_shard_bytes=max_shard_bytes)
    tmp = skeleton = None
    if rank == 0:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
        config = AutoConfig.from_pretrained(model_path)
        config.dtype = dtype
        with torch.device("meta"):  # a skeleton: for the conversions back to the hub layout
            skeleton = AutoModelForCausalLM.from_config(config)
    weight_map: dict[str, str] = {}
    total = 0
    for k, names in enumerate(shards):
        part = {}
        for name in names:
            tensor = entries[name]
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # collective
            if rank == 0:
                cast = full.to(dtype) if full.is_floating_point() else full  # on its device: half the copy
                part[name] = cast.to("cpu").contiguous()
            del full
        if rank != 0:
            continue
        part = _to_hub_layout(skeleton, part)
        file = (
            "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        save_file(part, str(tmp / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
        total += sum(t.numel() * t.element_size() for t in part.values())
        del part
    if rank != 0:
        return None
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(tmp)
    for name in os.listdir(model_path):  # tokenizer and generation config travel with the weights
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy2(Path(model_path) / name, tmp / name)
    (tmp / "clinray_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def export_run_model(model, cfg, *, out: str | Path, meta: dict, rank: int) -> Path | None:
    """The HF export of a training run: :func:`export_hf` of the full weights, or for a LoRA run
    (``lora.r > 0``) the merged weights and/or the peft adapter that ``lora.export`` names
    (:func:`clinray.train.lora.export_lora`). Collective, like both; rank 0 writes and returns ``out``."""
    if cfg.lora.enabled:
        from clinray.train.lora import export_lora

        return export_lora(model, model_path=cfg.model.path, section=cfg.lora, out=out, meta=meta, rank=rank)
    return export_hf(model, model_path=cfg.model.path, out=out, meta=meta, rank=rank)
