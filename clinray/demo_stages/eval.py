"""Demo stage: Table-2-style accuracy of the demo's models on the tiny world's test questions (``eval``
job, ``tiny/eval`` recipe), and the checkpoint sweep (Figure 2) over the pretraining run's exports.

Models, the rows of the paper's Table 2: ``base`` (the random tiny model) always; F, N (SFT and NEFTune
on it), P (pretrained), P+F and P+N when earlier stages made them. Full-answer likelihood on MedQA (4 and
5 options), the MMLU subjects present merged into one column, MedMCQA and PubMedQA. The report adds the
toy Table 2 on held-out MedQA with 95% intervals and says in words whether the paper's orderings held.
"""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, Section

ORDER = 80
TITLE = "Evaluation (lm-eval, full-answer likelihood)"
BUDGET_S = 90
NEEDS = ("world", "tiny_model")
USES = (
    "pretrained_model",
    "sft_model",
    "neftune_model",
    "sft_base_model",
    "neftune_base_model",
    "pretrain_run",
)
MAKES = ("eval_table", "eval_results")
RECIPE = "tiny/eval"
SWEEP_TASK = "clinray_medqa_4"  # MedQA only: keeps the sweep inside the stage's budget

_MODELS = [
    ("base", "tiny_model"),
    ("F", "sft_base_model"),
    ("N", "neftune_base_model"),
    ("P", "pretrained_model"),
    ("P+F", "sft_model"),
    ("P+N", "neftune_model"),
]
TABLE2_TASK = "clinray_medqa_4"  # 100 held-out-fact questions: the column the toy Table 2 reads


def overrides(ctx: DemoContext) -> list[str]:
    models = [f"models.{name}={ctx.artifacts[key]}" for name, key in _MODELS if ctx.artifacts.get(key)]
    questions = Path(ctx.artifacts["world"]) / "questions"
    return [*models, f"data_dir={questions}", f"out_dir={ctx.stage_dir('eval')}"]


def sweep_overrides(ctx: DemoContext) -> list[str]:
    return [
        f"data_dir={Path(ctx.artifacts['world']) / 'questions'}",
        f"out_dir={ctx.stage_dir('eval_sweep')}",
        f"tasks=[{SWEEP_TASK}]",
        "merge_columns={}",
        f"sweep.pretrain_run={ctx.artifacts['pretrain_run']}",
        "sweep.instruction_tune=false",
        f"sweep.base_model={ctx.artifacts['tiny_model']}",
    ]


def _has_exports(ctx: DemoContext) -> bool:
    run_dir = ctx.artifacts.get("pretrain_run")
    return bool(run_dir) and any((Path(run_dir) / "hf").glob("step_*/clinray_meta.json"))


JOBS = {"eval": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def run(ctx: DemoContext) -> Section:
    from clinray.eval.table2 import compare, table2_markdown
    from clinray.eval.tables import column_name, to_markdown

    result = ctx.run_job("eval", RECIPE, overrides(ctx))
    table = result.table
    notes = [
        "Accuracy (%) on the tiny world's test questions, full-answer likelihood (`acc`):",
        "",
        to_markdown(table),
        *(f"- {note}" for note in result.notes),  # skipped question rows and data warnings, if any
    ]
    words: list[str] = []
    if TABLE2_TASK in table["columns"]:
        acc = {row["model"]: row["cells"].get(TABLE2_TASK) for row in table["rows"]}
        n = _num_questions(ctx)
        words = compare(acc, n)
        notes += [
            "",
            f"### Toy Table 2 ({column_name(TABLE2_TASK)}, {n} questions on held-out facts, chance 25%)",
            "",
            table2_markdown(acc, n, column=column_name(TABLE2_TASK)),
            *(f"- {line}" for line in words),
        ]
    metrics = {
        f"{row['model']} {column_name(col)}": f"{row['cells'][col]:.1f}"
        for row in table["rows"]
        for col in table["columns"][:1]
        if row["cells"][col] is not None
    }
    outputs, images = result.outputs(), []
    if _has_exports(ctx):
        sweep = ctx.run_job("eval", RECIPE, sweep_overrides(ctx))
        images.append(str(sweep.sweep_png))
        outputs["eval_sweep"] = str(sweep.sweep_png)
        notes += [
            "",
            f"Checkpoint sweep over the starting model and {len(sweep.points) - 1} pretraining exports ({SWEEP_TASK}); "
            "the demo evaluates the raw checkpoints (the paper instruction-tunes each one first).",
            "",
            to_markdown(sweep.table),
        ]
    else:
        notes += ["", "No pretraining exports (`pretrain_run/hf/step_*`): checkpoint sweep skipped."]
    return Section(
        outputs=outputs,
        metrics=metrics,
        notes=notes,
        images=images,
        headline=["", "Accuracy (%), full-answer likelihood:", to_markdown(table).rstrip(), *words],
    )


def _num_questions(ctx: DemoContext) -> int:
    path = Path(ctx.artifacts["world"]) / "questions" / "medqa" / "test.jsonl"
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
