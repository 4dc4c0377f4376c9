"""Demo stage: mix the deduplicated documents by token ratio, tokenize, and cut token blocks (``token_blocks``)."""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, StageResult

ORDER = 50
TITLE = "Mixture and packing into token blocks"
BUDGET_S = 60


def run(ctx: DemoContext) -> StageResult:
    from clinray.config import load
    from clinray.data.pack import PackConfig, run_pack

    recipe = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "pack.yaml"
    out = ctx.stage_dir("pack")
    source = ctx.artifacts.get("deduped") or ctx.artifacts["curated"]
    cfg = load(
        PackConfig,
        recipe,
        [f"input_dir={source}", f"output_dir={out / 'blocks'}", f"tokenizer={ctx.artifacts['tiny_model']}"],
    )
    manifest = run_pack(cfg)
    plan = manifest["mixture"]["components"]
    rows = [
        "| component | weight | available tokens | selected | in blocks | blocks |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in plan.items():
        rows.append(
            f"| {name} | {entry['weight']:g} | {entry['available_tokens']:,} | {entry['selected_tokens']:,} | "
            f"{manifest['tokens_per_source'][name]:,} | {manifest['blocks_per_source'][name]:,} |"
        )
    notes = [
        f"Mixture mode `{manifest['mixture']['mode']}` (the paper's 50:15 clinical:general token ratio); "
        f"blocks of {manifest['seq_len']} tokens, EOS between documents, one component per block; "
        f"{manifest['epochs']} epochs recorded for pretraining. Manifest: `{out / 'blocks' / 'manifest.json'}`.",
        "",
        *rows,
    ]
    return StageResult(
        outputs={"token_blocks": str(out / "blocks")},
        metrics={
            "blocks": manifest["num_blocks"],
            "seq_len": manifest["seq_len"],
            **{f"tokens ({k})": v for k, v in manifest["tokens_per_source"].items()},
            "wall time (s)": manifest["wall_s"],
        },
        notes=notes,
    )
