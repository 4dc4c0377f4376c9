"""Demo stage: mix the curated documents by token ratio, tokenize, and cut token blocks (``pack`` job)."""

from __future__ import annotations

from clinray.demo import DemoContext, Section

ORDER = 50
TITLE = "Mixture and packing into token blocks"
BUDGET_S = 60
NEEDS = ("curated", "tiny_model")
MAKES = ("token_blocks",)
RECIPE = "tiny/pack"


def overrides(ctx: DemoContext) -> list[str]:
    return [
        f"input_dir={ctx.artifacts['curated']}",
        f"output_dir={ctx.stage_dir('pack') / 'blocks'}",
        f"tokenizer={ctx.artifacts['tiny_model']}",
        "overwrite=true",
    ]


JOBS = {"pack": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def run(ctx: DemoContext) -> Section:
    result = ctx.run_job("pack", RECIPE, overrides(ctx))
    manifest = result.manifest
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
        f"{manifest['epochs']} epochs recorded for pretraining. Manifest: `{result.blocks_dir / 'manifest.json'}`.",
        "",
        *rows,
    ]
    tokens = ", ".join(f"{k} {v:,}" for k, v in manifest["tokens_per_source"].items())
    return Section(
        outputs=result.outputs(),
        metrics={
            "blocks": manifest["num_blocks"],
            "seq_len": manifest["seq_len"],
            **{f"tokens ({k})": v for k, v in manifest["tokens_per_source"].items()},
            "wall time (s)": manifest["wall_s"],
        },
        notes=notes,
        headline=[f"packing   {manifest['num_blocks']} blocks of {manifest['seq_len']} tokens ({tokens})"],
    )
