"""Demo stage: build the Milvus Lite example store from the world (``index`` job), then the accuracy of
each Medprompt strategy on a few MedQA test questions (``medprompt_eval`` job, Figure 3).

The index holds the world's MedQA and MedMCQA training questions with verified CoT (the CoT stage's
verified chains first, when it kept any), embedded by Ray Data actors; the best model so far (SFT, else pretrained, else the random tiny model) answers. With a
tiny model most completions name no option, so the paper's reading (option likelihood after the
reasoning) and the parsed vote can differ a lot: the table shows both.
"""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, Section
from clinray.demo import best_model as _best_model

ORDER = 90
TITLE = "Medprompt: example store and prompting strategies"
BUDGET_S = 90
NEEDS = ("world", "tiny_model")
USES = ("pretrained_model", "sft_model", "cot_rows")
MAKES = ("index", "medprompt_results")
INDEX_RECIPE = "tiny/index"
RECIPE = "tiny/medprompt_eval"
NUM_QUESTIONS = 3
MAX_NEW_TOKENS = 32


def best_model(ctx: DemoContext) -> tuple[str, str]:
    return _best_model(ctx, stage="Medprompt")


def index_overrides(ctx: DemoContext) -> list[str]:
    import json

    from clinray.demo_stages.cot import verified_rows

    rows = verified_rows(ctx)
    return [
        *([f"cot={json.dumps([rows])}"] if rows else []),
        f"world={ctx.artifacts['world']}",
        f"store.uri={ctx.stage_dir('medprompt') / 'index.db'}",
        "store.index_type=FLAT",
        "drop_existing=true",
    ]


def overrides(ctx: DemoContext) -> list[str]:
    return [
        f"setup.engine.model={best_model(ctx)[1]}",
        f"setup.store.uri={ctx.stage_dir('medprompt') / 'index.db'}",
        f"setup.medprompt.max_new_tokens={MAX_NEW_TOKENS}",
        f"setup.medprompt.seed={ctx.seed}",
        f"data_dir={Path(ctx.artifacts['world']) / 'questions'}",
        f"limit={NUM_QUESTIONS}",
        f"out_dir={ctx.stage_dir('medprompt')}",
    ]


JOBS = {"index": (INDEX_RECIPE, index_overrides), "medprompt_eval": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def run(ctx: DemoContext) -> Section:
    index = ctx.run_job("index", INDEX_RECIPE, index_overrides(ctx))
    result = ctx.run_job("medprompt_eval", RECIPE, overrides(ctx))
    model_key = best_model(ctx)[0]
    metrics = {
        "model": model_key,
        "examples indexed": index.count,
        "rejected (by reason)": index.report["rejected_by_reason"],
        "index build (s)": index.report["wall_s"],
    }
    notes = [
        f"{result.num_questions} MedQA test questions answered by `{model_key}` with each strategy "
        f"({MAX_NEW_TOKENS} new tokens a run); per-run prompts and completions: "
        f"`{result.out_dir / 'medprompt_samples.jsonl'}`.",
        "",
        *result.table(),
    ]
    return Section(
        outputs={**index.outputs(), **result.outputs()},
        metrics=metrics,
        notes=notes,
        images=[str(result.png)],
        headline=["", f"Medprompt ({model_key}, {result.num_questions} questions):", *result.table()],
    )
