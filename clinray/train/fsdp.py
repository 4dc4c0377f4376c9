"""Build a Hugging Face causal LM for training and shard it with FSDP2; model code holds no parallelism.

The model is built from its ``config.json`` on the meta device (no memory), each decoder layer and then
the root are wrapped with ``fully_shard``, parameters are materialized shard by shard, and the real
weights are read from the folder's safetensors on rank 0 only and broadcast into the shards
(``set_model_state_dict(..., broadcast_from_rank0=True)``), so Mistral-7B and Mixtral-8x7B load by
configuration without any rank holding a full copy in device memory. Parameters stay fp32 (master
weights); ``MixedPrecisionPolicy`` computes in bf16 on GPU and reduces gradients in fp32. The trade-off
against keeping bf16 parameters: 2x parameter memory in exchange for stable small updates at LR 7e-6.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
__all__ = ["resolve_param_dtype", "build_model", "load_full_state_dict", "decoder_layers"]


def resolve_param_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on GPU and fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder blocks of a ``*ForCausalLM`` (``model.model.layers``), the unit of sharding."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__} has no model.layers: only decoder-only HF LMs are supported"
        )
    return list(layers)


def load_full_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every safetensors file of an HF folder into one state dict (CPU)."""
    from safetensors.torch import load_file

    folder = Path(path)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"no *.safetensors in {str(folder)!r}: export the model with safe_serialization=True"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _reset_rotary_buffers(model, device: torch.device) -> None:
    """Recompute non-persistent RoPE buffers (lost by ``to_empty``) from each module's config."""
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            fresh = type(module)(module.config)
            for name, buf in fresh.named_buffers(recurse=False):
                setattr(module, name, buf.to(device))


def _rank0_state_dict(path: str, *, expected: set[str], tied: bool) -> dict[str, torch.Tensor]:
    """The full state dict under the model's own parameter names, read on rank 0 only.

    Fast path: the safetensors as stored. When their names differ from the module's (transformers 5
    fuses Mixtral's per-expert weights on load), ``from_pretrained`` applies its conversions on CPU.
    """
    full = load_full_state_dict(path)
    if tied and "lm_head.weight" not in full and "model.embed_tokens.weight" in full:
        full["lm_head.weight"] = full["model.embed_tokens.weight"]
    if expected <= set(full):
        return full
    from transformers import AutoModelForCausalLM

    logger.info(
        "weights of %s need transformers' key conversions: loading with from_pretrained on rank 0", path
    )
    del full
    full = AutoModelForCausalLM.from_pretrained(path, dtype="auto").state_dict()
    missing = sorted(expected - set(full))
    if missing:
        raise ValueError(f"weights in {path!r} lack {len(missing)} tensors, e.g. {missing[:3]}")
    return full


def build_model(model_cfg, fsdp_cfg, *, device: torch.device, mesh=None, seed: int = 0):
    """Return the FSDP2-sharded model (weights loaded from ``model_cfg.path``) on ``device``."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(model_cfg.path)
    hf_config.use_cache = False
    torch.manual_seed(seed)
    init_device = torch.device("meta") if model_cfg.init_on_meta else torch.device("cpu")
    with init_device:
        model = AutoModelForCausalLM.from_config(
            hf_config, attn_implementation=model_cfg.attn_implementation, dtype=torch.float32
        )
    if not model_cfg.init_on_meta:
        model.to(device)
    if model_cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    param_dtype = resolve_param_dtype(fsdp_cfg.param_dtype, device)
    reduce_dtype = getattr(torch, fsdp_cfg.reduce_dtype)
    # All-fp32 (CPU) is given as no policy at all: the same numbers, and FSDP2 then skips its cast
    # copies (about 4 ms of a 130 ms step on the tiny CPU benchmark). With bf16 compute the policy is
    # kept whole: reduce_dtype=None would mean "reduce in bf16".
    all_fp32 = param_dtype == torch.float32 and reduce_dtype == torch.float32
    policy = (
        MixedPrecisionPolicy()
        if all_fp32
        else MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    )
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if model_cfg.compile:
            layer.compile()
        # the last layer's parameters are needed right away by backward: keep them gathered
        reshard = fsdp_cfg.reshard_after_forward and i < len(layers) - 1
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=fsdp_cfg.reshard_after_forward)
    if model_cfg.init_on_meta:
        model.to_empty(device=device)
        _reset_rotary_buffers(model, device)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    full = (
        _rank0_state_dict(
            model_cfg.path, expected=set(model.state_dict()), tied=hf_config.tie_word_embeddings
        )
        if rank0
        else {}
    )
    set_model_state_dict(
        model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    )
    del full
    model.train()
    return model
