"""Build a Hugging Face causal LM for training and shard it with FSDP2; model code holds no parallelism.

The model is built from its ``config.json`` on the meta device (no memory), each decoder layer and then
the root are wrapped with ``fully_shard``, parameters are materialized shard by shard, and the real
weights are read from the folder's safetensors on rank 0 only and broadcast into the shards
(``set_model_state_dict(..., broadcast_from_rank0=True)``), so Mistral-7B and Mixtral-8x7B load by
configuration without any rank holding a full copy in device memory. Parameters stay fp32 (master
weights); ``MixedPrecisionPolicy`` computes in bf16 on GPU and reduces gradients in fp32. The trade-off
against keeping bf16 parameters: 2x parameter memory in exchange for stable small updates at LR 7e-6.

Sharding follows torchtitan: one device mesh for every ``fully_shard`` call; decoder layers reshard
after forward (``fsdp.reshard_after_forward``) except the last, and the root (embeddings, final norm,
LM head) keeps FSDP2's default of staying gathered, since backward needs it at once; 3-D (fused expert)
weights are sharded on dimension 1 whenever their first dimension (the experts) cannot be split evenly
over the ranks, so Mixtral's 8 experts over 80 ranks give every rank 1/80 of each expert rather than
ranks 0-7 one whole expert each. A sliding window at least as long as the training blocks is dropped
from the config, since it is then the plain causal mask, which SDPA runs without building a mask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
__all__ = [
    "resolve_param_dtype",
    "build_model",
    "build_on_meta",
    "apply_fsdp",
    "load_weights",
    "load_full_state_dict",
    "decoder_layers",
    "fit_sliding_window",
    "expert_placement_fn",
]


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
            f"no *.safetensors in {str(folder)!r}: save the model with save_pretrained (safetensors)"
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


def fit_sliding_window(hf_config, seq_len: int | None) -> bool:
    """Drop ``sliding_window`` when ``seq_len`` fits in it (the mask is then exactly causal); True if dropped.

    Mistral-7B-v0.1's 4096-token window over 4096-token blocks made transformers build a dense mask each
    step (no flash kernel). Configs with per-layer ``layer_types`` (Gemma, Qwen) are left alone: their
    sliding layers may differ in more than the mask (e.g. RoPE).
    """
    window = getattr(hf_config, "sliding_window", None)
    if not seq_len or not window or seq_len > window:
        return False
    if "sliding_attention" in (getattr(hf_config, "layer_types", None) or ()):
        return False
    logger.info("seq_len %d <= sliding_window %d: training with full causal attention", seq_len, window)
    hf_config.sliding_window = None
    return True


def expert_placement_fn(num_shards: int):
    """``shard_placement_fn`` for ``fully_shard``: ``Shard(1)`` for 3-D weights whose first dimension
    (Mixtral's fused experts) does not split evenly over ``num_shards`` ranks, else FSDP2's ``Shard(0)``.
    """
    from torch.distributed.tensor import Shard

    def placement(param: torch.nn.Parameter):
        if param.ndim == 3 and param.shape[0] % num_shards:
            return Shard(1)
        return None

    return placement


def build_on_meta(model_cfg, *, device: torch.device, seed: int = 0, seq_len: int | None = None):
    """Step 1: the model from its ``config.json``, on the meta device (or on ``device`` if not
    ``init_on_meta``), fp32, no cache, activation checkpointing as configured."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(model_cfg.path)
    hf_config.use_cache = False
    fit_sliding_window(hf_config, seq_len)
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
    return model


def apply_fsdp(
    model,
    model_cfg,
    fsdp_cfg,
    *,
    device: torch.device,
    mesh=None,
    reshard_root: bool | None = None,
    groups: Callable[[torch.nn.Module], list[torch.nn.Module]] | None = None,
):
    """Step 3: ``fully_shard`` each decoder layer, then the root, on one device mesh (torchtitan's order).

    ``groups(layer)``: modules inside a decoder layer sharded first as one group of their own (LoRA's
    adapters, :mod:`clinray.train.lora`), so the layer's group holds only the base weights.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

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
    mesh = mesh or init_device_mesh(device.type, (dist.get_world_size(),))
    placement = expert_placement_fn(mesh.size())
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if model_cfg.compile:
            layer.compile()
        # the last layer's parameters are needed right away by backward: keep them gathered
        reshard = fsdp_cfg.reshard_after_forward and i < len(layers) - 1
        inner = groups(layer) if groups is not None else []
        if inner:
            fully_shard(inner, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(
            layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard, shard_placement_fn=placement
        )
    root = {} if reshard_root is None else {"reshard_after_forward": reshard_root}
    fully_shard(model, mesh=mesh, mp_policy=policy, **root)
    return model


def load_weights(model, model_cfg, *, device: torch.device, converters: Sequence[Callable] = ()) -> None:
    """Step 4: materialize the shards and broadcast the folder's weights into them from rank 0.

    A converter may carry ``source_key(name) -> str | None`` (the folder's name of a model entry; None:
    not in the folder) and ``initial_state() -> dict`` (the full values of those entries), e.g. LoRA.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if model_cfg.init_on_meta:
        model.to_empty(device=device)
        _reset_rotary_buffers(model, device)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    source = {name: name for name in model.state_dict()}
    for convert in converters:
        if hasattr(convert, "source_key"):
            source = {n: convert.source_key(s) for n, s in source.items() if s is not None}
    source = {n: s for n, s in source.items() if s is not None}
    full = (
        _rank0_state_dict(
            model_cfg.path, expected=set(source.values()), tied=model.config.tie_word_embeddings
        )
        if rank0
        else {}
    )
    if rank0 and any(n != s for n, s in source.items()):
        full = {n: full[s] for n, s in source.items() if s in full}
    for convert in converters:
        if rank0 and hasattr(convert, "initial_state"):
            full.update(convert.initial_state())
    set_model_state_dict(
        model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    )
    del full


def build_model(
    model_cfg,
    fsdp_cfg,
    *,
    device: torch.device,
    mesh=None,
    seed: int = 0,
    seq_len: int | None = None,
    reshard_root: bool | None = None,
    converters: Sequence[Callable] = (),
):
    """Return the FSDP2-sharded model (weights loaded from ``model_cfg.path``) on ``device``.

    In torchtitan's order: build on meta (:func:`build_on_meta`), apply the ``converters`` (each
    ``converter(model)`` changes modules or adds hooks before sharding: the NEFTune hook, LoRA; none for
    pretraining), shard (:func:`apply_fsdp`), load the weights (:func:`load_weights`).

    Args:
        seq_len: the training block length (drops a sliding window it fits in; None keeps the config).
        reshard_root: None leaves the root to FSDP2's default (gathered after forward); True is the
            behaviour before it, kept for the check kit's comparison.
        converters: callables applied to the unsharded model, in order. Optional hooks on a converter:
            ``fsdp_groups(layer)`` (see :func:`apply_fsdp`), ``source_key`` and ``initial_state``
            (see :func:`load_weights`).
    """
    model = build_on_meta(model_cfg, device=device, seed=seed, seq_len=seq_len)
    for convert in converters:
        convert(model)
    hooks = [c.fsdp_groups for c in converters if hasattr(c, "fsdp_groups")]

    def groups(layer) -> list[torch.nn.Module]:
        return [m for hook in hooks for m in hook(layer)]

    apply_fsdp(
        model,
        model_cfg,
        fsdp_cfg,
        device=device,
        mesh=mesh,
        reshard_root=reshard_root,
        groups=groups if hooks else None,
    )
    load_weights(model, model_cfg, device=device, converters=converters)
    model.train()
    return model
