"""Demo stage: verified chain-of-thought (``cot`` job) with the tuned model P+F as the teacher.

A few tens of the world's MedQA and MedMCQA train questions, k = 5 chains each with the options shuffled
per chain; only chains whose Figure 5 answer maps back to the gold option are kept, and the kept rows go
to the Medprompt example store (the next stage's index). The teacher must write the Figure 5 format:
in the tiny world only a tuned model does (measured on a demo run: P, never tuned to the chat format,
had 0 of 120 chains verified, with or without few-shot examples; P+F 26 of 120 at 96 new tokens), so
the stage runs after SFT, as the paper's teacher was an instruction-tuned model. The SFT mixture reads
the same rows as source ``cot``: ``clinray demo --resume RUN --only sft`` tunes again with them.
"""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, Section

ORDER = 75
TITLE = "Verified chain-of-thought (Ray Data, teacher P+F)"
BUDGET_S = 90
NEEDS = ("world", "sft_model")
MAKES = ("cot_rows", "cot_report")
RECIPE = "tiny/cot"
NUM_QUESTIONS = 12
"""Questions per file (MedQA and MedMCQA train)."""
K = 5
MAX_NEW_TOKENS = 96


def overrides(ctx: DemoContext) -> list[str]:
    return [
        f"world={ctx.artifacts['world']}",
        f"teacher.model={ctx.artifacts['sft_model']}",
        f"limit={NUM_QUESTIONS}",
        f"k={K}",
        f"max_new_tokens={MAX_NEW_TOKENS}",
        f"seed={ctx.seed}",
        "min_written=0",
        f"out_dir={ctx.stage_dir('cot')}",
    ]


JOBS = {"cot": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def verified_rows(ctx: DemoContext) -> str | None:
    """The stage's ``cot.jsonl`` when it holds at least one verified chain (what SFT and the index add)."""
    path = ctx.artifacts.get("cot_rows")
    return path if path and Path(path).is_file() and Path(path).stat().st_size > 0 else None


def run(ctx: DemoContext) -> Section:
    from clinray.cot.report import acceptance_table

    result = ctx.run_job("cot", RECIPE, overrides(ctx))
    r = result.report
    q, s, total = r["questions"], r["samples"], r["total"]
    rate = f"{100 * total['acceptance_rate']:.1f}%"
    unparseable = ", ".join(f"{k} {v}" for k, v in s["unparseable_by_reason"].items()) or "none"
    notes = [
        f"{q['generated']} train questions ({q['contaminated']} dropped as copies of test questions) x {r['k']} "
        f"chains from P+F, options shuffled per chain, {r['max_new_tokens']} new tokens: {s['accepted']} verified "
        f"(answer mapped back = gold), {s['wrong_answer']} wrong answer, {s['unparseable']} unparseable "
        f"({unparseable}). {result.num_written} rows go to the example store (the next stage's index) and, on "
        "`clinray demo --resume RUN --only sft`, to the SFT mixture as source `cot`."
        + ("" if result.num_written else " None here: the index uses the world's own data alone."),
        "",
        *acceptance_table("source", r["by_source"]),
        "",
        f"Rows: `{result.rows_path}`; rejects with reasons: `{result.rejects_path}`; report: "
        f"`{result.out_dir / 'cot_report.md'}`.",
    ]
    return Section(
        outputs=result.outputs(),
        metrics={
            "questions x chains": f"{q['generated']} x {r['k']}",
            "acceptance rate": f"{rate} ({s['accepted']} of {s['planned']})",
            "verified rows written": result.num_written,
            "unparseable (by reason)": s["unparseable_by_reason"],
        },
        notes=notes,
        headline=[
            f"cot       {s['accepted']} of {s['planned']} chains from P+F verified ({rate}); "
            f"{result.num_written} rows to the index"
        ],
    )
