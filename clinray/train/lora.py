"""LoRA (peft) on any training run, under FSDP2: injection before sharding, adapter-only DCP checkpoints,
and exports as a peft adapter folder or merged HF weights behind a logits-equivalence gate.

The adapter is injected into the plain ``*ForCausalLM`` with ``peft.inject_adapter_in_model`` (no
``PeftModel`` wrapper), on the meta device, before ``fully_shard``: the module tree keeps its names
(``model.layers``), so :func:`clinray.train.fsdp.apply_fsdp`, the loss and the loop run unchanged. Three
hooks the converter carries tell :func:`clinray.train.fsdp.build_model` what differs: ``fsdp_groups``
(each decoder layer's LoRA modules become one ``fully_shard`` group of their own, so one dtype per group
holds even beside a bf16-stored base: the mixed-precision assertion of an fp32 adapter in a bf16 group
cannot trip), ``source_key`` (``q_proj.base_layer.weight`` reads ``q_proj.weight`` from the folder) and
``initial_state`` (lora_A Kaiming-uniform from the run's seed, lora_B zero, built on rank 0 and
broadcast with the base weights). Only adapter and ``modules_to_save`` parameters require grad, so
AdamW (which takes trainable parameters only) holds state for them alone.

Adapter checkpoints are DCP shards of the trainable entries of ``get_model_state_dict`` (plus their
optimizer state): every rank writes its own slice, so resuming on N ranks restores all of each adapter,
not rank 0's 1/N of it (the accelerate ``adapter_only`` bug, notes/sft.md 5.5). Exports gather each
adapter tensor to rank 0 (one collective per tensor) and load it into a CPU ``PeftModel`` over the base
folder, which writes peft's own ``adapter_config.json`` + ``adapter_model.safetensors`` or runs
``merge_and_unload(safe_merge=True)`` in fp32. The trade-off: rank 0 holds one full fp32 CPU copy of the
base model during an export (28 GB for Mistral-7B), in exchange for peft's file layout and a merge that
is checked against the unmerged model on a fixed batch before anything is written (merging is exact in
fp32 to ~1e-7 and drifts by ~1e-2 in bf16, notes/sft.md 5.3).

In a training run, :func:`export_lora` is what the loop's HF exports become (``lora.export``): by default
the merged HF weights in ``hf/step_<N>`` (every consumer of ``hf/final`` reads a plain model) and the
adapter in its ``adapter/`` subfolder, from one gather and one CPU model. :func:`concat_adapters` turns
adapters stacked on one base (the two-step clinical pair) into one adapter of rank r1 + r2, exactly:
``s1 B1 A1 + s2 B2 A2 = [B1 B2] [s1 A1; s2 A2]``, as peft's ``add_weighted_adapter(combination_type="cat")``
does, but on saved folders and with a module one adapter lacks counted as zero.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from clinray.train.lora_config import LoRASection  # noqa: F401  (re-exported: the config lives apart)

ADAPTER = "default"
ADAPTER_STATE_FILE = "clinray_adapter.json"
MERGE_TOLERANCE = 1e-5
__all__ = [
    "LoRASection",
    "LoRAConverter",
    "lora_converter",
    "is_adapter_key",
    "trainable_state_dict",
    "save_adapter",
    "load_adapter",
    "gather_adapter",
    "export_adapter",
    "export_merged",
    "export_lora",
    "merge_gate",
    "has_adapter",
    "concat_adapters",
]


def is_adapter_key(name: str) -> bool:
    """True for LoRA tensors and ``modules_to_save`` copies (the entries an adapter checkpoint holds)."""
    return ".lora_" in name or ".modules_to_save." in name


def has_adapter(model) -> bool:
    """True when ``model`` carries LoRA (or ``modules_to_save``) parameters: its checkpoints hold those only."""
    return any(is_adapter_key(name) for name, _ in model.named_parameters())


class LoRAConverter:
    """``converter(model)`` for :func:`clinray.train.fsdp.build_model`: inject LoRA, freeze the rest.

    Also carries the three optional hooks ``build_model`` reads (see the module docstring).
    """

    def __init__(self, section: LoRASection, *, seed: int = 0) -> None:
        if not section.enabled:
            raise ValueError("lora.r is 0: LoRA is off, there is nothing to convert")
        self.section = section
        self.seed = seed
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.peft_cfg = None

    def __call__(self, model) -> None:
        from peft import inject_adapter_in_model

        self.peft_cfg = self.section.peft_config()
        inject_adapter_in_model(self.peft_cfg, model, adapter_name=ADAPTER)
        dtypes = {p.dtype for n, p in model.named_parameters() if not is_adapter_key(n)}
        base_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        for name, param in model.named_parameters():
            trainable = is_adapter_key(name)
            param.requires_grad_(trainable)
            if (
                trainable and param.dtype != base_dtype
            ):  # one dtype for the whole model: FSDP2's policy casts it
                param.data = param.data.to(base_dtype)
            if ".lora_" in name:
                self.shapes[name] = tuple(param.shape)
        if not self.shapes:
            raise ValueError(
                f"lora.target_modules {self.section.target_modules!r} matched no module of the model"
            )

    # --- hooks read by clinray.train.fsdp.build_model -------------------------------------------------
    @staticmethod
    def fsdp_groups(layer: torch.nn.Module) -> list[torch.nn.Module]:
        """The LoRA A/B modules of one decoder layer: sharded together as their own ``fully_shard`` group."""
        from peft.tuners.lora import LoraLayer

        mods: list[torch.nn.Module] = []
        for module in layer.modules():
            if isinstance(module, LoraLayer):
                for name in module.lora_A:
                    mods += [module.lora_A[name], module.lora_B[name]]
        return mods

    @staticmethod
    def source_key(name: str) -> str | None:
        """The folder's name for a model entry; None for LoRA tensors (made by :meth:`initial_state`)."""
        if ".lora_" in name:
            return None
        name = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        return name.replace(f".modules_to_save.{ADAPTER}.", ".")

    def initial_state(self) -> dict[str, torch.Tensor]:
        """peft's default init, seeded: lora_A Kaiming-uniform (a = sqrt 5), lora_B zero (the update starts at 0)."""
        gen = torch.Generator().manual_seed(self.seed)
        out: dict[str, torch.Tensor] = {}
        for name in sorted(self.shapes):
            shape = self.shapes[name]
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, in)
                out[name] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            else:
                out[name] = torch.zeros(shape)
        return out


def lora_converter(section: LoRASection, *, seed: int = 0) -> LoRAConverter:
    """The converter that puts ``section``'s LoRA on a model before FSDP2 sharding."""
    return LoRAConverter(section, seed=seed)


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def trainable_state_dict(model) -> dict:
    """The trainable entries of ``get_model_state_dict`` (DTensor shards under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = _trainable_names(model)
    return {k: v for k, v in get_model_state_dict(model).items() if k in names}


def save_adapter(
    model, folder: str | Path, *, optimizer=None, state: dict | None = None, rank: int = 0
) -> Path:
    """Write the adapter (and optimizer state, if given) as DCP shards, every rank its own slice.

    Collective: every rank calls it with the same ``folder``. Rank 0 also writes ``clinray_adapter.json``.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = {"adapter": trainable_state_dict(model)}
    if optimizer is not None:
        target["optim"] = get_state_dict(model, optimizer)[1]
    dcp.save(target, checkpoint_id=str(folder))
    if rank == 0:
        meta = {"keys": sorted(target["adapter"]), "with_optimizer": optimizer is not None, **(state or {})}
        (folder / ADAPTER_STATE_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_adapter(model, folder: str | Path, *, optimizer=None) -> dict:
    """Restore what :func:`save_adapter` wrote into a model built with the same LoRA; return its state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    folder = Path(folder)
    meta_path = folder / ADAPTER_STATE_FILE
    if not meta_path.is_file() or not (folder / ".metadata").is_file():
        raise ValueError(
            f"{folder} is not a clinray adapter checkpoint (missing {ADAPTER_STATE_FILE} or .metadata)"
        )
    meta = json.loads(meta_path.read_text())
    adapter = trainable_state_dict(model)
    if sorted(adapter) != meta["keys"]:
        missing = sorted(set(meta["keys"]) ^ set(adapter))[:3]
        raise ValueError(
            f"adapter checkpoint {folder} does not fit this model's LoRA (keys differ, e.g. {missing})"
        )
    target = {"adapter": adapter}
    if optimizer is not None:
        if not meta["with_optimizer"]:
            raise ValueError(f"adapter checkpoint {folder} holds no optimizer state")
        target["optim"] = get_state_dict(model, optimizer)[1]
    dcp.load(target, checkpoint_id=str(folder))
    options = StateDictOptions(strict=False)
    if optimizer is None:
        set_model_state_dict(model, target["adapter"], options=options)
    else:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=target["adapter"],
            optim_state_dict=target["optim"],
            options=options,
        )
    return {k: v for k, v in meta.items() if k not in ("keys", "with_optimizer")}


def gather_adapter(model, *, rank: int = 0) -> dict[str, torch.Tensor]:
    """The full adapter tensors on rank 0 (CPU, fp32); ``{}`` elsewhere. Collective, in name order."""
    out: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    for name in sorted(_trainable_names(model)):
        tensor = params[name].detach()
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        if rank == 0:
            out[name] = full.to("cpu", torch.float32).clone()
    return out


def _cpu_peft_model(model_path: str | Path, section: LoRASection, adapter: dict[str, torch.Tensor]):
    """A CPU fp32 ``PeftModel`` over the base folder holding ``adapter`` (names as in the trained model)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_model = get_peft_model(base, section.peft_config(task_type="CAUSAL_LM"), adapter_name=ADAPTER)
    inner = peft_model.base_model.model  # the *ForCausalLM, whose names the trained model shares
    missing = set(adapter) - set(inner.state_dict())
    if missing:
        raise ValueError(f"adapter tensors with no place in a fresh peft model, e.g. {sorted(missing)[:3]}")
    inner.load_state_dict(adapter, strict=False)
    return peft_model.eval()


def _gate_batch(vocab_size: int, *, seed: int = 0, shape: tuple[int, int] = (2, 16)) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def merge_gate(
    peft_model,
    *,
    tolerance: float = MERGE_TOLERANCE,
    seed: int = 0,
    export_dtype: torch.dtype | None = None,
):
    """Merge and compare logits with the unmerged model on a fixed batch; return (merged, report).

    ``report["dtype"]`` is the dtype the merge ran in (fp32 for a model from :func:`_cpu_peft_model`).
    With ``export_dtype`` other than that, the merged model is also cast to it (in place) and the logits
    of the cast model are compared too (``export_max_abs_logit_diff``; informative, not gated: bf16
    weights drift by ~1e-2 whatever the merge).
    """
    ids = _gate_batch(peft_model.config.vocab_size, seed=seed)
    dtype = next(peft_model.parameters()).dtype
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits.float()
        merged = peft_model.merge_and_unload(safe_merge=True)
        after = merged(input_ids=ids).logits.float()
    diff = float((after - unmerged).abs().max())
    report = {
        "max_abs_logit_diff": diff,
        "dtype": str(dtype).removeprefix("torch."),
        "tolerance": tolerance,
        "batch_shape": list(ids.shape),
        "passed": diff <= tolerance,
    }
    if export_dtype is not None and export_dtype != dtype:
        merged.to(export_dtype)
        with torch.no_grad():
            cast = merged(input_ids=ids).logits.float()
        report["export_dtype"] = str(export_dtype).removeprefix("torch.")
        report["export_max_abs_logit_diff"] = float((cast - unmerged).abs().max())
    return merged, report


def _write_atomically(out: Path, write) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _copy_tokenizer(model_path: str | Path, dest: Path) -> None:
    for name in os.listdir(model_path):
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy2(Path(model_path) / name, dest / name)


def export_adapter(
    model, *, model_path: str | Path, section: LoRASection, out: str | Path, meta: dict, rank: int = 0
) -> Path | None:
    """A peft adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) for the base at
    ``model_path``. Collective (the gather); rank 0 writes and returns the folder."""
    adapter = gather_adapter(model, rank=rank)
    if rank != 0:
        return None
    peft_model = _cpu_peft_model(model_path, section, adapter)

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(tmp)
        (tmp / "clinray_meta.json").write_text(json.dumps({**meta, "base_model": str(model_path)}, indent=2))

    return _write_atomically(Path(out), write)


def export_merged(
    model,
    *,
    model_path: str | Path,
    section: LoRASection,
    out: str | Path,
    meta: dict,
    rank: int = 0,
    dtype: torch.dtype = torch.float32,
    tolerance: float = MERGE_TOLERANCE,
) -> Path | None:
    """HF weights with the adapter merged in (fp32 merge on a rank-0 CPU copy), written only if the
    merged model's logits match the unmerged ones within ``tolerance``; the gate's max |diff| and dtype
    go to ``clinray_meta.json``. Raises ValueError (nothing written) when the gate fails."""
    adapter = gather_adapter(model, rank=rank)
    if rank != 0:
        return None
    merged, report = merge_gate(_cpu_peft_model(model_path, section, adapter), tolerance=tolerance)
    if not report["passed"]:
        raise ValueError(
            f"merged export refused: max |logit diff| {report['max_abs_logit_diff']:.3g} > {tolerance:g} "
            f"(merge in {report['dtype']})"
        )

    def write(tmp: Path) -> None:
        merged.to(dtype).save_pretrained(tmp)
        _copy_tokenizer(model_path, tmp)
        full_meta = {**meta, "merge_gate": report, "export_dtype": str(dtype).removeprefix("torch.")}
        (tmp / "clinray_meta.json").write_text(json.dumps(full_meta, indent=2))

    return _write_atomically(Path(out), write)


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def export_lora(
    model,
    *,
    model_path: str | Path,
    section: LoRASection,
    out: str | Path,
    meta: dict,
    rank: int = 0,
    tolerance: float = MERGE_TOLERANCE,
) -> Path | None:
    """The HF export of a LoRA training run, as ``section.export`` says (collective; rank 0 writes).

    ``both``: merged HF weights (dtype ``section.merged_dtype``) in ``out`` and the peft adapter in
    ``out/adapter``; ``merged``: the weights only; ``adapter``: ``out`` is the peft adapter folder. One
    gather and one CPU fp32 peft model serve both. The merge is gated as in :func:`export_merged`
    (ValueError, nothing written, when merged and unmerged logits differ by more than ``tolerance``);
    ``clinray_meta.json`` records the gate (merge dtype, max |logit diff|), the dtype on disk and, for
    bf16, the drift of the saved weights.
    """
    adapter = gather_adapter(model, rank=rank)
    if rank != 0:
        return None
    peft_model = _cpu_peft_model(model_path, section, adapter)
    lora = {
        "r": section.r,
        "alpha": section.alpha,
        "target_modules": section.target_modules,
        "modules_to_save": list(section.modules_to_save),
        "export": section.export,
    }
    full_meta = {**meta, "lora": lora, "base_model": str(model_path)}

    def write(tmp: Path) -> None:
        if section.export in ("adapter", "both"):
            folder = tmp if section.export == "adapter" else tmp / "adapter"
            peft_model.save_pretrained(folder)  # before the merge, which folds the adapter away
            _copy_tokenizer(model_path, folder)
            (folder / "clinray_meta.json").write_text(
                json.dumps({**full_meta, "format": "peft_adapter"}, indent=2) + "\n"
            )
        if section.export == "adapter":
            return
        dtype = _dtype(section.merged_dtype)
        merged, report = merge_gate(peft_model, tolerance=tolerance, export_dtype=dtype)
        if not report["passed"]:
            raise ValueError(
                f"merged export refused: max |logit diff| {report['max_abs_logit_diff']:.3g} > {tolerance:g} "
                f"(merge in {report['dtype']})"
            )
        merged.save_pretrained(tmp)
        _copy_tokenizer(model_path, tmp)
        top = {**full_meta, "format": "merged", "merge_gate": report, "export_dtype": section.merged_dtype}
        if section.export == "both":
            top["adapter"] = "adapter"
        (tmp / "clinray_meta.json").write_text(json.dumps(top, indent=2) + "\n")

    return _write_atomically(Path(out), write)


_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B"))


def _read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise ValueError(
            f"{folder} is not a peft adapter folder (adapter_config.json + adapter_model.safetensors)"
        )
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{folder}: peft_type {config.get('peft_type')!r}, only LORA adapters concatenate")
    unsupported = [
        k
        for k in ("rank_pattern", "alpha_pattern", "use_dora", "layer_replication")
        if config.get(k) not in (None, {}, False, [])
    ]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise ValueError(
            f"{folder}: {unsupported} set, which a concatenated adapter cannot represent exactly"
        )
    return config, load_file(str(weights))


def _scaling(config: dict) -> float:
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def concat_adapters(
    folders: list[str | Path], out: str | Path, *, weights: list[float] | None = None
) -> Path:
    """One LoRA adapter folder equal to the sum of ``folders``' adapters on the same base (exact).

    Per module, ``A = [w1 s1 A1; w2 s2 A2; ...]`` (stacked on rows) and ``B = [B1 B2 ...]`` (on columns),
    with each adapter's scaling ``s = alpha / r`` (``alpha / sqrt r`` for rsLoRA) folded into its A, and
    ``r = lora_alpha = r1 + r2 + ...`` (scaling 1). A module one adapter does not target gets zero rows
    and columns for it, so every module has the same rank. The sum equals the stacked adapters with
    dropout off, which is inference; ``modules_to_save`` copies are carried over when one adapter alone
    has them (two of the same module cannot be summed: ValueError).
    """
    from safetensors.torch import save_file

    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ValueError("concat_adapters needs at least two adapter folders")
    weights = list(weights) if weights is not None else [1.0] * len(folders)
    if len(weights) != len(folders):
        raise ValueError(f"{len(weights)} weights for {len(folders)} adapters")
    read = [_read_adapter(f) for f in folders]
    bases = {c.get("base_model_name_or_path") for c, _ in read}
    if len(bases) > 1:
        raise ValueError(f"the adapters were trained on different bases: {sorted(map(str, bases))}")
    ranks = [c["r"] for c, _ in read]
    # module key prefix -> (pair suffixes, per adapter (A, B) or None)
    modules: dict[str, tuple[tuple[str, str], list]] = {}
    extra: dict[str, torch.Tensor] = {}
    extra_from: dict[str, Path] = {}
    for i, ((config, tensors), folder) in enumerate(zip(read, folders, strict=True)):
        for key, tensor in tensors.items():
            pair = next((p for p in _PAIRS if key.endswith(p[0]) or key.endswith(p[1])), None)
            if pair is None:
                if key in extra:
                    raise ValueError(f"{key} is saved by {extra_from[key]} and {folder}: it cannot be summed")
                extra[key], extra_from[key] = tensor, folder
                continue
            if key.endswith(pair[1]):
                continue
            prefix = key.removesuffix(pair[0])
            b_key = prefix + pair[1]
            if b_key not in tensors:
                raise ValueError(f"{folder}: {key} has no {pair[1].lstrip('.')} beside it")
            entry = modules.setdefault(prefix, (pair, [None] * len(folders)))
            entry[1][i] = (tensors[key].float() * (weights[i] * _scaling(config)), tensors[b_key].float())
    if not modules:
        raise ValueError(f"no LoRA tensors in {[str(f) for f in folders]}")
    state: dict[str, torch.Tensor] = {}
    for prefix, ((a_suffix, b_suffix), per) in modules.items():
        present = next(p for p in per if p is not None)
        a_cols, b_rows = present[0].shape[1], present[1].shape[0]
        a_parts, b_parts = [], []
        for rank, item in zip(ranks, per, strict=True):
            a, b = item if item is not None else (torch.zeros(rank, a_cols), torch.zeros(b_rows, rank))
            if a.shape != (rank, a_cols) or b.shape != (b_rows, rank):
                raise ValueError(
                    f"{prefix}: adapter shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit rank {rank}"
                )
            a_parts.append(a)
            b_parts.append(b)
        state[prefix + a_suffix] = torch.cat(a_parts, dim=0).contiguous()
        state[prefix + b_suffix] = torch.cat(b_parts, dim=1).contiguous()
    state.update(extra)
    total = sum(ranks)
    first = read[0][0]
    # the modules by full name (peft matches a name or a dotted suffix of it): exactly the ones adapted,
    # whatever each adapter's target_modules said (a list, a regex, all-linear)
    targets = {prefix.removeprefix("base_model.model.") for prefix in modules}
    saved = {name for config, _ in read for name in config.get("modules_to_save") or []}
    task_types = {c.get("task_type") for c, _ in read}
    config = {
        **first,
        "r": total,
        "lora_alpha": total,
        "use_rslora": False,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "modules_to_save": sorted(saved) or None,
        "task_type": task_types.pop() if len(task_types) == 1 else None,
    }

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "clinray_meta.json").write_text(
            json.dumps(
                {"concatenated_from": [str(f) for f in folders], "ranks": ranks, "weights": weights}, indent=2
            )
            + "\n"
        )

    return _write_atomically(Path(out), write)
