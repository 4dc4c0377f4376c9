"""Demo stage: instruction tuning, four ways (``sft`` job), for the toy Table 2.

F and N tune the starting model, P+F and P+N the pretrained one; N and P+N add NEFTune (alpha 5). All
four use the world's MedQA and MedMCQA *train* questions (the 100 train facts) in the Figure 4/5
format, decontaminated against the test questions, packed best-fit into 512-token rows, loss on the
answers only, on 2 Ray Train workers. The held-out facts appear only in the corpus, so only a model
that learnt them in pretraining can answer the test questions after SFT (``docs/tiny_world.md``). The
CoT stage (after this one: its teacher is P+F) writes verified chains; on a re-run of this stage
(``--resume RUN --only sft``) they join the mixture as a third source (``cot``, all of its rows, the
world's two sources drawn as before).
"""

from __future__ import annotations

import json
from pathlib import Path

from clinray.demo import DemoContext, Section

ORDER = 70
TITLE = "Instruction tuning: F, N, P+F, P+N (Ray Train, FSDP2, packed, NEFTune)"
BUDGET_S = 270
NEEDS = ("world", "tiny_model", "pretrained_model")
USES = ("cot_rows",)
MAKES = ("sft_model", "neftune_model", "sft_base_model", "neftune_base_model")
RECIPE = "tiny/sft"
NEFTUNE_RECIPE = "tiny/sft_neftune"
#: Run name -> (recipe, model artifact it starts from, artifact it makes). P+F last: it is JOBS' run.
RUNS = {
    "F": (RECIPE, "tiny_model", "sft_base_model"),
    "N": (NEFTUNE_RECIPE, "tiny_model", "neftune_base_model"),
    "P+N": (NEFTUNE_RECIPE, "pretrained_model", "neftune_model"),
    "P+F": (RECIPE, "pretrained_model", "sft_model"),
}


def cot_mixture(ctx: DemoContext) -> tuple[Path, int] | None:
    """``tiny/sft_mix`` (both recipes' mixture) plus the verified CoT rows as source ``cot``, and its
    total (None: the CoT stage kept no chain).

    The world's two sources are drawn exactly as without CoT (``base`` samples, the most the recipe's
    ratios allow) and every CoT row once: each source's share is its draw over ``base + n``, and the
    total is set to ``base + n`` so that no float rounding of the ratios drops a sample.
    """
    from clinray.config import dump
    from clinray.demo_stages.cot import verified_rows
    from clinray.sft.mixture import SourceSpec, load_mixture, read_mixture

    rows = verified_rows(ctx)
    if rows is None:
        return None
    questions = Path(ctx.artifacts["world"]) / "questions"
    mixture = load_mixture("tiny/sft_mix", [f"data_root={questions}"])
    counts = {name: len(got) for name, got in read_mixture(mixture).items()}
    base = min(counts[name] * 100 / spec.ratio for name, spec in mixture.sources.items())
    n = sum(1 for line in Path(rows).read_text(encoding="utf-8").splitlines() if line.strip())
    for spec in mixture.sources.values():
        spec.ratio = spec.ratio * base / (base + n)
    others = sum(spec.ratio for spec in mixture.sources.values())
    mixture.sources["cot"] = SourceSpec(layout="chat", path=str(rows), ratio=100 - others)
    return dump(mixture, ctx.stage_dir("sft") / "sft_mix_with_cot.yaml"), round(base) + n


def run_overrides(ctx: DemoContext, name: str) -> list[str]:
    _, start, _ = RUNS[name]
    questions = Path(ctx.artifacts["world"]) / "questions"
    mixture = cot_mixture(ctx)
    return [
        *([f"sft.mixture={mixture[0]}", f"sft.total_samples={mixture[1]}"] if mixture else []),
        f"model.path={ctx.artifacts[start]}",
        f"sft.paths.medqa={questions / 'medqa' / 'train.jsonl'}",
        f"sft.paths.medmcqa={questions / 'medmcqa' / 'train.json'}",
        "sft.decontaminate.enabled=true",
        f"sft.decontaminate.questions_root={questions}",
        f"run.storage_path={ctx.stage_dir('sft')}",
        f"run.name={name.replace('+', '_')}",
        f"train.seed={ctx.seed}",
    ]


def overrides(ctx: DemoContext) -> list[str]:
    return run_overrides(ctx, "P+F")


JOBS = {"sft": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context); the other runs differ
only in their start model, recipe and run name."""


def progress(ctx: DemoContext) -> str:
    """The run in progress and its last logged step."""
    folder = ctx.run_dir / "sft"
    runs = sorted(folder.glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not runs:
        return "preparing data"
    lines = runs[-1].read_text().splitlines()
    row = json.loads(lines[-1]) if lines else {}
    return f"{runs[-1].parent.name.replace('_', '+')}: step {row.get('step', 0)}  loss {row.get('loss', float('nan')):.3f}"


def run(ctx: DemoContext) -> Section:
    rows, outputs, headline = [], {}, []
    for name, (recipe, _, makes) in RUNS.items():
        result = ctx.run_job("sft", recipe, run_overrides(ctx, name))
        outputs[makes] = str(result.hf_final)
        last, packing, acc = result.last, result.data["packing"][0], result.data["accounting"]
        losses = " / ".join(f"{b:.3f}" for _, (a, b) in result.losses().items() if b is not None)
        rows.append(
            f"| {name} | `{Path(ctx.artifacts[RUNS[name][1]]).parent.name}/{Path(ctx.artifacts[RUNS[name][1]]).name}` "
            f"| {last['step']} | {losses} | {packing['fill']:.3f} | {packing['samples_per_row']} "
            f"| {round(last['tokens_per_s']):,} |"
        )
        headline.append(f"sft {name:4s} {last['step']} steps, loss {losses}")
    samples = acc["samples"]
    notes = [
        f"Each run: {acc['conversations']['drawn']} train questions ({acc['conversations']['contaminated']} dropped as "
        f"copies of test questions) x option orders = {samples['packed']} samples, "
        f"{len(result.data['packing'])} epochs, each packed anew (best-fit decreasing into "
        f"{result.data['seq_len']}-token rows; too long: {samples['too_long']}, no trainable token: "
        f"{samples['no_trainable_tokens']}). Loss on the answers and their EOS only; NEFTune alpha 5 with L each "
        "sample's own length for N and P+N."
        + (
            f" The mixture adds the CoT stage's verified chains: {acc['per_source']['cot']['taken']} as source "
            f"`cot` (`{ctx.stage_dir('sft') / 'sft_mix_with_cot.yaml'}`)."
            if "cot" in acc.get("per_source", {})
            else ""
        ),
        "",
        "| run | starts from | steps | final loss medqa / medmcqa | fill | samples/row | tokens/s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Packing report and accounting: `{result.data_dir}/manifest.json`; rejects: `{acc['rejects']}`.",
    ]
    outputs.update({"sft_run": str(result.run_dir), "sft_loss_plot": str(result.plot)})
    return Section(
        outputs=outputs,
        metrics={
            "samples per run": samples["packed"],
            "rows per epoch": packing["rows"],
            "fill": packing["fill"],
        },
        notes=notes,
        images=[str(result.plot)],
        headline=headline,
    )
