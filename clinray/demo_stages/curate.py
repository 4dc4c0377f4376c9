"""Demo stage: curate the tiny world's corpus (parse, normalize, filter, exact and near-dup, substring
dedup, decontaminate) with the ``curate`` job and the ``tiny/curate`` recipe, fully accounted."""

from __future__ import annotations

from pathlib import Path

from clinray.demo import DemoContext, Section

ORDER = 30
TITLE = "Curation: parse, filter, dedup, decontaminate"
BUDGET_S = 90
NEEDS = ("world",)
MAKES = ("curated", "curation_report")
RECIPE = "tiny/curate"


def overrides(ctx: DemoContext) -> list[str]:
    world = Path(ctx.artifacts["world"])
    return [
        f"input_root={world / 'corpus'}",
        f"output.dir={ctx.stage_dir('curate')}",
        "output.overwrite=true",
        f"decontaminate.questions_root={world / 'questions'}",
    ]


JOBS = {"curate": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def run(ctx: DemoContext) -> Section:
    result = ctx.run_job("curate", RECIPE, overrides(ctx))
    stages, parse = result.stages, result.stages["parse"]
    removed = {
        "near-duplicates": stages["minhash"].num_dropped if "minhash" in stages else 0,
        "contaminated": stages["decontaminate"].num_dropped if "decontaminate" in stages else 0,
        "substring bytes": sum(
            s.extra.get("num_bytes_removed", 0) for n, s in stages.items() if n.startswith("substring")
        ),
    }
    notes = [
        f"{parse.extra.get('num_files_in', 0)} input files; every file and record ends kept or in the rejects "
        f"(`{result.rejects_dir}`) with its reason. Full report: `{result.report_md}`.",
        "",
        *result.funnel_rows(),
    ]
    headline = (
        f"curation  {parse.num_rows_out} documents parsed ({parse.num_dropped} inputs rejected) -> "
        f"{result.num_docs} kept; removed {removed['near-duplicates']} near-duplicates, "
        f"{removed['substring bytes']:,} repeated bytes, {removed['contaminated']} contaminated"
    )
    return Section(
        outputs=result.outputs(),
        metrics={
            "documents kept": result.num_docs,
            "documents parsed": parse.num_rows_out,
            "rejected inputs/records at parse": parse.num_dropped,
            **{f"removed: {k}": v for k, v in removed.items()},
            "wall time (s)": round(result.wall_s, 1),
        },
        notes=notes,
        images=[str(result.funnel_png)],
        headline=[headline],
    )
