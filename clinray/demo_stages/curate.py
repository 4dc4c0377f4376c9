"""Demo stage: curate the tiny world's corpus (parse, normalize, filter, dedup, decontaminate), fully accounted."""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, StageResult

ORDER = 30
TITLE = "Curation: parse, filter, dedup, decontaminate"
BUDGET_S = 90


def run(ctx: DemoContext) -> StageResult:
    from clinray.config import load
    from clinray.data.pipeline import CurateConfig, run_curation

    world = Path(ctx.artifacts["world"])
    recipe = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "curate.yaml"
    out = ctx.stage_dir("curate")
    overrides = [f"input_root={world / 'corpus'}", f"output.dir={out}", "output.overwrite=true"]
    if "decontaminate" in CurateConfig.__dataclass_fields__:  # the world's benchmarks, for decontamination
        overrides.append(f"decontaminate.questions_root={world / 'questions'}")
    cfg = load(CurateConfig, recipe, overrides)
    result = run_curation(cfg)
    if result.problems:
        raise RuntimeError(f"curation accounting does not balance: {result.problems}")
    rows = ["| stage | rows in | kept | dropped (by reason) |", "|---|---|---|---|"]
    for name, s in result.stages.items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.dropped.items())) or "-"
        rows.append(f"| {name} | {s.num_rows_in} | {s.num_rows_out} | {reasons} |")
    parse = result.stages["parse"]
    notes = [
        f"{parse.extra.get('num_files_in', 0)} input files; every file and record ends kept or in the rejects "
        f"(`{result.rejects_dir}`) with its reason. Full report: `{result.report_md}`.",
        "",
        *rows,
    ]
    return StageResult(
        outputs={"curated": str(result.docs_dir), "curation_report": str(result.report_json)},
        metrics={
            "documents kept": result.num_docs,
            "documents parsed": parse.num_rows_out,
            "rejected inputs/records at parse": parse.num_dropped,
            "wall time (s)": round(result.wall_s, 1),
        },
        notes=notes,
        images=[str(result.funnel_png)],
    )
