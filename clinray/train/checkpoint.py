"""Sharded DCP checkpoints through Ray Train, and HF exports of any checkpoint for the Figure 2 sweep.

Each worker writes its own shard of the model and optimizer with ``torch.distributed.checkpoint`` into
a fresh local temporary folder, plus (rank 0) ``clinray_state.json`` with the step, the tokens seen and
the data position, and hands the folder to ``ray.train.report(checkpoint=...)``. Ray Train merges the
workers' folders into ``<storage>/<name>/checkpoint_<step>`` and registers the checkpoint only once
every worker's upload finished, so a crash during a save leaves the previous registered checkpoint as
the one ``ray.train.get_checkpoint()`` returns: saves are atomic at the level of the run, and
``CheckpointConfig(num_to_keep=...)`` prunes the old ones. HF exports (``<run>/hf/step_<N>``) are
gathered to rank 0 and written to a temporary folder that is renamed into place. The trade-off: an
export holds the full model in rank 0's CPU memory (15 GB for Mistral-7B in bf16), once per export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

STATE_FILE = "clinray_state.json"
__all__ = ["save_sharded", "load_sharded", "export_hf"]


def save_sharded(model, optimizer, scheduler, *, state: dict, rank: int) -> Path:
    """Write this worker's DCP shard (+ rank 0's ``clinray_state.json``) into a new temp folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(tempfile.mkdtemp(prefix=f"clinray_ckpt_r{rank}_"))
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
    if rank == 0:
        full_state = {**state, "scheduler": scheduler.state_dict()}
        (folder / STATE_FILE).write_text(json.dumps(full_state, indent=2))
    return folder


def load_sharded(folder: str | Path, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer and scheduler from a merged checkpoint folder; return the loop state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file() or not (folder / ".metadata").is_file():
        raise ValueError(f"{folder} is not a complete clinray checkpoint (missing {STATE_FILE} or .metadata)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    target = {"model": model_sd, "optim": optim_sd}
    dcp.load(target, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    state = json.loads(state_path.read_text())
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def export_hf(
    model,
    *,
    model_path: str | Path,
    out: str | Path,
    meta: dict,
    rank: int,
    dtype: torch.dtype = torch.bfloat16,
) -> Path | None:
    """Gather the full model to rank 0 and write an HF folder (safetensors, config, tokenizer, meta).

    Every rank must call it (the gather is collective); only rank 0 writes. Written to ``out.tmp-*``
    then renamed, so a reader never sees a half-written export.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    config = AutoConfig.from_pretrained(model_path)
    config.dtype = dtype
    with torch.device("meta"):  # a skeleton: save_pretrained maps our names back to the hub layout
        skeleton = AutoModelForCausalLM.from_config(config)
    full = {k: v.to(dtype) for k, v in full.items()}
    skeleton.save_pretrained(tmp, state_dict=full, safe_serialization=True, max_shard_size="5GB")
    for name in os.listdir(model_path):  # tokenizer and generation config travel with the weights
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy2(Path(model_path) / name, tmp / name)
    (tmp / "clinray_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
