"""Typed configs of training: continued pretraining and, with ``train.task: sft``, instruction tuning.

One root :class:`TrainConfig` (``PretrainConfig`` is the same class) composes the sections a run needs:
the model to load, the token blocks to read (pretraining) or the SFT mixture to prepare and pack
(``sft``), NEFTune, the optimizer and schedule, the batch and budget, FSDP2, Ray Train scaling and the
run (storage, failures, checkpoints). One loop trains both tasks; ``train.task`` selects the data path. Every number of the paper's Table 1 is a field here, so the recipes in
``clinray/configs/paper/`` are plain YAML. The trade-off: the config is strict and verbose, in exchange for no
silent typo in an 80-GPU run.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from clinray.data.decontam_config import DecontamConfig
from clinray.train.lora_config import LoRASection


@dataclasses.dataclass(kw_only=True, slots=True)
class ModelSection:
    """Which model to train and how to place it."""

    path: str = ""
    """Local Hugging Face folder (config, safetensors, tokenizer): the tiny model, Mistral-7B, Mixtral-8x7B."""
    init_on_meta: bool = True
    """Build on the meta device, shard, then load the weights from rank 0 (needed for 7B+ models)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (saves memory, costs ~30% compute)."""
    compile: bool = False
    """``torch.compile`` each decoder layer before sharding (GPU; slow to start on CPU)."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers: ``sdpa``, ``eager`` or ``flash_attention_2``."""

    def __post_init__(self) -> None:
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            raise ValueError(
                f"model.attn_implementation {self.attn_implementation!r} is not one of sdpa, eager, "
                "flash_attention_2"
            )


@dataclasses.dataclass(kw_only=True, slots=True)
class DataSection:
    """The token-block Parquet written by ``clinray pack``."""

    path: str = ""
    """Folder of Parquet parts with ``input_ids`` (list<int32>, seq_len each) and ``source``, plus manifest.json."""
    sources: list[str] = dataclasses.field(default_factory=lambda: ["clinical", "general"])
    """Mixture components whose loss is tracked separately (the paper's Figure 1); others count as 'other'."""
    shuffle_seed: int = 0
    """Seed of the per-epoch order of the blocks (epoch e uses shuffle_seed + e)."""
    shuffle_buffer_blocks: int = 1024
    """Local shuffle buffer of the reader, in blocks; 0 keeps file order."""

    materialize_below_mb: float = 1024.0
    """Read blocks smaller than this once into the object store (workers may then use every CPU); larger ones stream."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(
                "data.sources must name at least one mixture component, e.g. [clinical, general]"
            )
        if self.shuffle_buffer_blocks < 0:
            raise ValueError("data.shuffle_buffer_blocks must be >= 0 (0 disables shuffling)")


@dataclasses.dataclass(kw_only=True, slots=True)
class SFTSection:
    """Instruction-tuning data (``train.task: sft``): the mixture, its packing and its epochs."""

    mixture: str = ""
    """The SFT mixture: a recipe name (``tiny/sft_mix``, ``paper/sft_mix``: Table 3) or a YAML path."""
    data_root: str = ""
    """If set, the folder the mixture's relative source paths start from (overrides its ``data_root``)."""
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    """Source name -> local file or folder, overriding the mixture's path (``--set sft.paths.medqa=...``)."""
    total_samples: int = 0
    """Conversations drawn from the mixture; 0: the most the ratios allow without repeating a source."""
    option_orders: int = 1
    """Multiple-choice conversations appear with this many option orders (1: as given; the answer text
    follows its option)."""
    seq_len: int = 2048
    """Tokens per packed row (the model's context in the paper: 4,096 for Mistral, 32k for Mixtral)."""
    packing: Literal["bfd", "wrapped", "none"] = "bfd"
    """``bfd``: best-fit decreasing over the whole dataset, no sample cut; ``wrapped``: the paper's literal
    concatenation, cut every seq_len tokens; ``none``: one padded sample per row (the baseline)."""
    overlong: Literal["drop", "truncate"] = "drop"
    """Samples longer than seq_len: dropped (counted as too_long) or truncated to it."""
    epochs: int = 3
    """Passes over the SFT data (Table 1 / section 3.2: 3); each epoch is packed anew."""
    seed: int = 0
    """Seed of the mixture draw, the option orders and the packing (epoch e packs with seed + e)."""
    decontaminate: DecontamConfig = dataclasses.field(default_factory=lambda: DecontamConfig(enabled=False))
    """Drop conversations that copy evaluation questions (needs ``questions_root``)."""

    def __post_init__(self) -> None:
        for name in ("option_orders", "seq_len", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"sft.{name} must be >= 1, got {getattr(self, name)}")
        if self.total_samples < 0:
            raise ValueError("sft.total_samples must be >= 0 (0: as many as the ratios allow)")


@dataclasses.dataclass(kw_only=True, slots=True)
class NEFTuneSection:
    """NEFTune (section 3.3): uniform noise on the input embeddings while training."""

    alpha: float = 0.0
    """Noise scale (Table 1: 5 for the N runs); 0 turns NEFTune off."""
    scale: Literal["reference", "paper_sqrt_alpha"] = "reference"
    """``reference``: ``alpha / sqrt(L d)`` (NEFTune paper, its code, the HF hook); ``paper_sqrt_alpha``:
    ``sqrt(alpha / (L d))`` as the clinical paper prints it (2.24x less noise at alpha 5)."""
    length: Literal["sample", "row"] = "sample"
    """L of the formula: each packed sample's own length (correct), or the row's (what public code does,
    transformers#34659), kept for comparison."""

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"neftune.alpha must be >= 0 (0: off), got {self.alpha}")


@dataclasses.dataclass(kw_only=True, slots=True)
class OptimSection:
    """AdamW and the warm-up + cosine schedule (the paper's Table 1)."""

    max_lr: float = 7e-6
    """Peak learning rate (Table 1: 7e-6 for both Mistral-7B and Mixtral-8x7B pretraining)."""
    warmup_fraction: float = 0.01
    """Linear warm-up over this fraction of the steps (paper: 1%)."""
    warmup_start_factor: float = 0.1
    """Warm-up starts at this times max_lr (paper: 1/10)."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of max_lr (the paper does not state it)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (Table 1)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """AdamW weight decay (Table 1); not applied to norms and biases."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""

    def __post_init__(self) -> None:
        if self.max_lr <= 0:
            raise ValueError(f"optim.max_lr must be > 0, got {self.max_lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 < self.warmup_start_factor <= 1:
            raise ValueError(f"optim.warmup_start_factor must be in (0, 1], got {self.warmup_start_factor}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must both be in [0, 1), got {self.betas}")
        if self.grad_clip < 0:
            raise ValueError("optim.grad_clip must be >= 0 (0 disables clipping)")


@dataclasses.dataclass(kw_only=True, slots=True)
class TrainSection:
    """Batch, budget, logging and checkpoint cadence."""

    task: Literal["pretrain", "sft"] = "pretrain"
    """``pretrain``: token blocks from ``data.path``, loss on every token; ``sft``: the ``sft`` mixture,
    prepared and packed into the run folder, loss on the assistant's tokens only."""
    global_batch_tokens: int = 65_536
    """Tokens per optimizer step over all workers = workers x micro_batch_size x seq_len x accumulation."""
    micro_batch_size: int = 1
    """Blocks per worker per forward pass."""
    token_budget: int = 0
    """Tokens to train on; the number of steps is token_budget // global_batch_tokens (sft: the epochs
    decide, 0 here)."""
    max_steps: int = 0
    """If > 0, the number of optimizer steps (overrides token_budget), e.g. Table 1's 79,259."""
    max_time_s: float = 0.0
    """If > 0, stop (and checkpoint) after this many seconds even if the budget is not spent."""
    seed: int = 0
    """Seed of everything random in the loop."""
    log_every: int = 1
    """Report metrics every this many steps."""
    checkpoint_every: int = 0
    """Save a sharded DCP checkpoint every this many steps (and at the end); 0: only at the end."""
    hf_export_every: int = 0
    """Export an HF folder to <run>/hf/step_<N> every this many steps; 0: only <run>/hf/final."""
    save_final: bool = True
    """Checkpoint and export <run>/hf/final at the end (benchmarks turn it off to time training alone)."""
    fail_at_step: int = -1
    """Testing knob: rank 1 exits once after this step's checkpoint (guarded by a marker in the run dir)."""
    fail_during_save_at_step: int = -1
    """Testing knob: rank 1 exits once in the middle of this step's checkpoint save (its shard written, not
    yet reported), so the checkpoint is never registered and the run resumes from the one before."""

    def __post_init__(self) -> None:
        for name in ("global_batch_tokens", "micro_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("token_budget", "max_steps", "checkpoint_every", "hf_export_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.task == "pretrain" and self.token_budget == 0 and self.max_steps == 0:
            raise ValueError("set train.token_budget (tokens to train on) or train.max_steps")


@dataclasses.dataclass(kw_only=True, slots=True)
class FSDPSection:
    """FSDP2 (``fully_shard``) settings; model code holds no parallelism, ``fsdp.py`` applies these."""

    param_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Compute dtype of parameters; auto = bfloat16 on GPU, float32 on CPU."""
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the gradient reduce-scatter (paper: bf16 training; fp32 reduction is the safe default)."""
    reshard_after_forward: bool = True
    """Decoder layers, ZeRO-3 style: free gathered parameters after forward (False trades memory for less
    communication). The root (embeddings, final norm, LM head) keeps FSDP2's default, unsharded after
    forward, since backward needs it at once."""
    allow_tf32: bool = True
    """CUDA with fp32 compute (``param_dtype: float32``): let fp32 matmuls use TF32 tensor cores
    (``torch.set_float32_matmul_precision("high")``); MFU is then taken against the TF32 peak, else
    against the plain fp32 one."""


@dataclasses.dataclass(kw_only=True, slots=True)
class ScalingSection:
    """Ray Train ``ScalingConfig``."""

    num_workers: int = 2
    """Training workers (one per GPU on a cluster)."""
    use_gpu: bool = False
    """One GPU per worker; NCCL instead of gloo."""
    resources_per_worker: dict[str, float] = dataclasses.field(default_factory=lambda: {"CPU": 1})
    """Ray resources reserved by each worker."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How workers are placed over nodes (PACK fills a node's 8 GPUs first)."""
    accelerator_type: str | None = None
    """Required accelerator, e.g. H100 (None: any)."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"scaling.num_workers must be >= 1, got {self.num_workers}")


@dataclasses.dataclass(kw_only=True, slots=True)
class RunSection:
    """Ray Train ``RunConfig``: where the run lives and how it survives failures."""

    storage_path: str = "runs/pretrain"
    """Shared storage (local path, NFS, s3://) of checkpoints and metrics; must be shared across nodes."""
    name: str = "pretrain"
    """Run name; re-running with the same storage_path and name resumes from the last checkpoint."""
    max_failures: int = 3
    """Worker failures to recover from automatically (from the last checkpoint); -1: unlimited."""
    num_to_keep: int = 2
    """Sharded checkpoints kept on storage (the newest)."""
    peak_flops_per_device: float = 0.0
    """Peak FLOP/s of one device for MFU; 0: look the device up in the table of ``metrics.py``."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty folder name without '/', got {self.name!r}")
        if self.num_to_keep < 1:
            raise ValueError("run.num_to_keep must be >= 1")


@dataclasses.dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Root config of ``clinray pretrain`` (recipes ``tiny/pretrain``, ``paper/*_pretrain``) and ``clinray sft``
    (``train.task: sft``; recipes ``tiny/sft``, ``paper/mistral7b_sft``, ...)."""

    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    """Model folder and how to build it."""
    data: DataSection = dataclasses.field(default_factory=DataSection)
    """Token blocks (pretraining; sft: the mixture components tracked in ``data.sources``)."""
    sft: SFTSection = dataclasses.field(default_factory=SFTSection)
    """The SFT mixture and its packing (``train.task: sft``)."""
    neftune: NEFTuneSection = dataclasses.field(default_factory=NEFTuneSection)
    """NEFTune noise (``train.task: sft``; alpha 0 is off)."""
    lora: LoRASection = dataclasses.field(default_factory=LoRASection)
    """LoRA adapters instead of full fine-tuning (``lora.r: 0`` is off)."""
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    """AdamW and schedule."""
    train: TrainSection = dataclasses.field(default_factory=lambda: TrainSection(max_steps=10))
    """Batch, budget, cadence."""
    fsdp: FSDPSection = dataclasses.field(default_factory=FSDPSection)
    """FSDP2."""
    scaling: ScalingSection = dataclasses.field(default_factory=ScalingSection)
    """Ray Train workers."""
    run: RunSection = dataclasses.field(default_factory=RunSection)
    """Storage, failures, checkpoints."""

    def __post_init__(self) -> None:
        if self.train.task == "sft" and self.model.attn_implementation == "eager":
            raise ValueError(
                "model.attn_implementation eager would let packed SFT samples attend to each other (it "
                "needs a 4D mask the loop does not build): use sdpa (CPU) or flash_attention_2 (GPU)"
            )
        if self.train.task == "pretrain" and self.neftune.alpha:
            raise ValueError("neftune.alpha is for train.task: sft (NEFTune is an instruction-tuning method)")

    def check_inputs(self) -> list[str]:
        """Missing inputs and inconsistent batch geometry, all at once, before Ray starts."""
        if self.train.task == "sft":
            from clinray.sft.prepare import check_sft_inputs

            return check_sft_inputs(self)
        problems = self.missing_paths()
        if not problems:
            from clinray.train.trainer import plan_run

            try:
                plan_run(self)
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    def validate_paths(self) -> None:
        """Raise ValueError when the model or data folder is missing (called before starting workers)."""
        problems = self.missing_paths()
        if problems:
            raise ValueError("; ".join(problems))

    def missing_paths(self) -> list[str]:
        """The model folder and the token-block folder, when missing."""
        from clinray.results import missing_dir, missing_model

        return missing_model(self.model.path, "model.path") + missing_dir(
            self.data.path, "data.path (token blocks from `clinray pack`)"
        )


PretrainConfig = TrainConfig
"""The name the pretraining code and recipes have used: the same class."""
