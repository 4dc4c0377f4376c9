"""Demo stage: Table-2-style accuracy of the demo's models on the tiny world's test questions, and the
checkpoint sweep (Figure 2) over the pretraining run's exports when the pretraining stage ran.

Models: ``tiny_model`` (random init) always; ``pretrained_model`` and ``sft_model`` when earlier stages
produced them. Tasks: whichever of the world's question files exist (MedQA 4 and 5 options, the MMLU
subjects present merged into one column, MedMCQA, PubMedQA), with full-answer likelihood.
"""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, StageResult

ORDER = 80
TITLE = "Evaluation (lm-eval, full-answer likelihood)"
BUDGET_S = 90

_MODELS = [("random_init", "tiny_model"), ("pretrained", "pretrained_model"), ("pretrained+sft", "sft_model")]


def world_tasks(questions: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The clinray tasks whose files exist under the world's ``questions`` folder, and the MMLU merge."""
    from clinray.eval.tasks.utils import MMLU_MEDICAL_SUBJECTS

    tasks = [
        t
        for t, f in [("clinray_medqa_4", "medqa/test.jsonl"), ("clinray_medqa_5", "medqa_5/test.jsonl")]
        if (questions / f).is_file()
    ]
    mmlu = [
        f"clinray_mmlu_{s}"
        for s in MMLU_MEDICAL_SUBJECTS
        if (questions / f"mmlu/test/{s}_test.csv").is_file()
    ]
    tasks += mmlu
    tasks += [
        t
        for t, f in [("clinray_medmcqa", "medmcqa/dev.json"), ("clinray_pubmedqa", "pubmedqa/ori_pqal.json")]
        if (questions / f).is_file()
    ]
    if not tasks:
        raise ValueError(f"no question files under {questions} (see docs/tiny_world.md)")
    return tasks, ({"mmlu_medical": mmlu} if mmlu else {})


def run(ctx: DemoContext) -> StageResult:
    from clinray.config import from_dict
    from clinray.eval.config import EvalConfig
    from clinray.eval.harness import run_eval
    from clinray.eval.sweep import find_checkpoints, run_sweep
    from clinray.eval.tables import column_name, to_markdown

    questions = Path(ctx.artifacts["world"]) / "questions"
    tasks, merge = world_tasks(questions)
    models = {name: ctx.artifacts[key] for name, key in _MODELS if ctx.artifacts.get(key)}
    base = {"tasks": tasks, "merge_columns": merge, "data_dir": str(questions), "device": "cpu"}
    cfg = from_dict(EvalConfig, {**base, "models": models, "out_dir": str(ctx.stage_dir("eval"))})
    result = run_eval(cfg)
    table = result["table"]
    notes = [
        "Accuracy (%) on the tiny world's test questions, full-answer likelihood (`acc`):",
        "",
        to_markdown(table),
    ]
    metrics = {
        f"{row['model']} {column_name(col)}": f"{row['cells'][col]:.1f}"
        for row in table["rows"]
        for col in table["columns"][:1]
        if row["cells"][col] is not None
    }
    outputs = {"eval_table": str(result["table_md"]), "eval_results": str(result["results_json"])}
    images: list[str] = []
    run_dir = ctx.artifacts.get("pretrain_run")
    if run_dir and (Path(run_dir) / "hf").is_dir() and find_checkpoints(run_dir):
        sweep_tasks = tasks[:1]  # MedQA only: keeps the sweep inside the stage's budget
        sweep_cfg = from_dict(
            EvalConfig,
            {
                **base,
                "tasks": sweep_tasks,
                "merge_columns": {},
                "out_dir": str(ctx.stage_dir("eval_sweep")),
                "sweep": {
                    "pretrain_run": run_dir,
                    "instruction_tune": False,
                    "base_model": ctx.artifacts["tiny_model"],
                },
            },
        )
        sweep = run_sweep(sweep_cfg, sft_hook=False)
        images.append(str(sweep["sweep_png"]))
        outputs["eval_sweep"] = str(sweep["sweep_png"])
        notes += [
            "",
            f"Checkpoint sweep over the starting model and {len(sweep['points']) - 1} pretraining exports ({sweep_tasks[0]}); "
            "the demo evaluates the raw checkpoints (the paper instruction-tunes each one first, which "
            "`clinray eval --sweep` does when an SFT hook is available).",
            "",
            to_markdown(sweep["table"]),
        ]
    else:
        notes += ["", "No pretraining run exports (`pretrain_run/hf/step_*`): checkpoint sweep skipped."]
    return StageResult(outputs=outputs, metrics=metrics, notes=notes, images=images)
