"""The LoRA section of a training config, apart from :mod:`clinray.train.lora` so that loading a config
imports neither torch nor peft (a user error must come back in well under a second, before Ray or any
model code loads).
"""

from __future__ import annotations

import dataclasses

__all__ = ["LoRASection", "EXPORTS"]

#: What a LoRA run's export folder holds (``lora.export``).
EXPORTS = ("both", "merged", "adapter")


@dataclasses.dataclass(kw_only=True, slots=True)
class LoRASection:
    """LoRA (peft ``LoraConfig``) on the run's model; ``r: 0`` trains the full model as before."""

    r: int = 0
    """Rank of each adapter; 0 turns LoRA off."""
    alpha: float = 16.0
    """``lora_alpha``: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input while training."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt (``[q_proj, v_proj]``), or ``all-linear`` (every linear layer but the LM head)."""
    modules_to_save: list[str] = dataclasses.field(default_factory=list)
    """Modules trained in full beside the adapters and saved with them (e.g. ``[lm_head]``)."""
    export: str = "both"
    """What a run's HF exports (``<run>/hf/step_<N>``, ``hf/final``) hold: ``both`` (default: merged HF
    weights in the folder, so every consumer of ``hf/final`` reads it as a plain model, plus the peft
    adapter in its ``adapter/`` subfolder), ``merged`` (the weights only) or ``adapter`` (the folder is
    the peft adapter alone: small, but eval and serving need the base beside it)."""
    merged_dtype: str = "float32"
    """dtype of the merged weights on disk. The merge itself is always done in fp32 and gated (logits
    within 1e-5 of the unmerged model); ``float32`` keeps that file exact, ``bfloat16`` halves it and
    drifts by ~1e-2 in logits (measured and written to ``clinray_meta.json``)."""

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"lora.r must be >= 0 (0: off), got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ValueError(
                f"lora.target_modules {self.target_modules!r}: give a list of module names or 'all-linear'"
            )
        if self.export not in EXPORTS:
            raise ValueError(f"lora.export must be one of {list(EXPORTS)}, got {self.export!r}")
        if self.merged_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"lora.merged_dtype must be float32 or bfloat16, got {self.merged_dtype!r}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError(
                "lora.target_modules is empty: name modules (e.g. [q_proj, v_proj]) or 'all-linear'"
            )

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def peft_config(self, **extra):
        """The ``peft.LoraConfig`` of this section (``extra``: e.g. ``task_type``)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=list(self.modules_to_save) or None,
            **extra,
        )
