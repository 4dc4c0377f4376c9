"""Demo stage: continued pretraining of the tiny Mistral on the packed tiny world (2 workers, FSDP2/gloo).

Uses ``configs/tiny/pretrain.yaml``: a token budget sized to about 150 s of training on 2 cores (what the
later fine-tuning needs, ARCHITECTURE.md), with ``max_time_s`` as a safety cap. Reads the packing
stage's ``token_blocks``; without them, tokenizes the world's corpus per domain into blocks itself.
"""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, StageResult

ORDER = 60
TITLE = "Continued pretraining (Ray Train, FSDP2)"
BUDGET_S = 200


def _blocks(ctx: DemoContext) -> tuple[str, str]:
    if "token_blocks" in ctx.artifacts:
        return ctx.artifacts["token_blocks"], "packing stage"
    from clinray.train.data import blocks_from_corpus

    out = ctx.stage_dir("pretrain") / "blocks"
    blocks_from_corpus(Path(ctx.artifacts["world"]) / "corpus", ctx.artifacts["tiny_model"], out, seq_len=128)
    return str(out), "fallback: the world's corpus tokenized per domain (no packing stage output)"


def run(ctx: DemoContext) -> StageResult:
    from clinray.config import load
    from clinray.train.config import PretrainConfig
    from clinray.train.trainer import run_pretrain

    blocks, origin = _blocks(ctx)
    recipe = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "pretrain.yaml"
    cfg = load(
        PretrainConfig,
        recipe,
        [
            f"model.path={ctx.artifacts['tiny_model']}",
            f"data.path={blocks}",
            f"run.storage_path={ctx.stage_dir('pretrain')}",
            "run.name=run",
            f"train.seed={ctx.seed}",
        ],
    )
    summary = run_pretrain(cfg)
    first, last = summary["first"], summary["last"]
    capped = last["step"] < summary["total_steps"]
    notes = [
        f"Token blocks from the {origin}. {last['step']} of {summary['total_steps']} planned steps of "
        f"{cfg.train.global_batch_tokens} tokens (accumulation {summary['grad_accum']}), warm-up "
        f"{cfg.optim.warmup_fraction:.0%} then cosine"
        + (f"; stopped by the {cfg.train.max_time_s:.0f} s safety cap (slow machine)" if capped else "")
        + f". Metrics: `{summary['run_dir']}/metrics.jsonl` and TensorBoard.",
    ]
    fmt = lambda v: round(v, 3) if isinstance(v, float) else v  # noqa: E731
    return StageResult(
        outputs={"pretrained_model": summary["hf_final"], "pretrain_run": summary["run_dir"]},
        metrics={
            "steps": last["step"],
            "tokens seen": last["tokens_seen"],
            "clinical loss first -> last": f"{fmt(first['loss_clinical'])} -> {fmt(last['loss_clinical'])}",
            "general loss first -> last": f"{fmt(first['loss_general'])} -> {fmt(last['loss_general'])}",
            "tokens/s (2 workers, last interval)": round(last["tokens_per_s"]),
        },
        notes=notes,
        images=[summary["plot"]],
    )
