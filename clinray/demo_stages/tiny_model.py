"""Demo stage: train the tokenizer on the tiny world's corpus and save a random tiny Mistral."""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, Section

ORDER = 20
TITLE = "Tiny model and tokenizer"
BUDGET_S = 30
NEEDS = ("world",)
MAKES = ("tiny_model",)


def run(ctx: DemoContext) -> Section:
    from transformers import AutoConfig, AutoTokenizer

    from clinray.models.tiny import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(seed=ctx.seed)
    out = build_tiny_model(Path(ctx.artifacts["world"]) / "corpus", ctx.stage_dir("tiny_model"), cfg)
    tok = AutoTokenizer.from_pretrained(out)
    conf = AutoConfig.from_pretrained(out)
    return Section(
        outputs={"tiny_model": str(out)},
        metrics={
            "architecture": conf.architectures[0],
            "vocab_size": len(tok),
            "layers x width": f"{conf.num_hidden_layers} x {conf.hidden_size}",
        },
    )
