"""Demo stage: near-dup (MinHash LSH), substring dedup (400 then 100 bytes) and decontamination.

Runs on the curated documents (``ctx.artifacts["curated"]``) with full stage accounting and writes the
deduplicated documents (``deduped``). When the curation run already applied all of these stages (they
are part of the curation pipeline), its counts are reported and its documents passed on, not redone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from clinray.demo import DemoContext, StageResult

ORDER = 40
TITLE = "Near-dup, substring dedup, decontamination"
BUDGET_S = 90
ISSUE_C_STAGES = ("minhash", "substring_400", "substring_100", "decontaminate")


def _working(batch):
    import pyarrow as pa

    from clinray.data.schema import DOCUMENT_COLUMNS

    table = batch.select(list(DOCUMENT_COLUMNS))
    nulls = pa.nulls(table.num_rows, pa.string())
    return table.append_column("_reason", nulls).append_column("_detail", nulls)


def _rows(stats: dict) -> list[str]:
    rows = []
    for name in ISSUE_C_STAGES:
        s = stats.get(name)
        if s is None:
            continue
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "-"
        extra = ", ".join(f"{k} {v:,}" for k, v in sorted(s["extra"].items())) or "-"
        rows.append(f"| {name} | {s['num_rows_in']} | {s['num_rows_out']} | {dropped} | {extra} |")
    return rows


def _from_curation(ctx: DemoContext, stats: dict) -> StageResult:
    """The curation run already applied these stages: report them, reuse its documents."""
    header = ["| stage | rows in | kept | dropped | counters |", "|---|---|---|---|---|"]
    sub = sum(stats[f"substring_{t}"]["extra"].get("num_bytes_removed", 0) for t in (400, 100))
    return StageResult(
        outputs={"deduped": ctx.artifacts["curated"]},
        metrics={
            "documents in": stats["minhash"]["num_rows_in"],
            "documents out": stats["decontaminate"]["num_rows_out"],
            "near-duplicates removed": stats["minhash"]["num_dropped"],
            "substring bytes removed": sub,
            "contaminated documents removed": stats["decontaminate"]["num_dropped"],
        },
        notes=[
            "Applied inside the curation run (stage 30); its documents are the deduplicated set.",
            "",
            *header,
            *_rows(stats),
        ],
    )


def run(ctx: DemoContext) -> StageResult:
    import ray

    from clinray.data.decontaminate import DecontamConfig, decontaminate
    from clinray.data.dedup_minhash import MinHashConfig, minhash_dedup
    from clinray.data.dedup_substring import SubstringConfig, substring_dedup
    from clinray.data.report import write_report
    from clinray.data.stage import collect_stats

    report = ctx.artifacts.get("curation_report")
    if report and Path(report).is_file():
        earlier = json.loads(Path(report).read_text())["stages"]
        if all(name in earlier and earlier[name]["num_rows_in"] for name in ISSUE_C_STAGES):
            return _from_curation(ctx, earlier)
    out = ctx.stage_dir("dedup")
    sink = str(out / "accounting")
    start = time.time()
    ds = ray.data.read_parquet(ctx.artifacts["curated"]).map_batches(_working, batch_format="pyarrow")
    ds = minhash_dedup(ds, MinHashConfig(num_partitions=2), sink_root=sink)
    ds = substring_dedup(ds, SubstringConfig(), sink_root=sink)
    questions = Path(ctx.artifacts["world"]) / "questions"
    ds = decontaminate(ds, DecontamConfig(questions_root=str(questions)), sink_root=sink)
    docs_dir = out / "docs"
    ds.drop_columns(["_reason", "_detail"]).write_parquet(str(docs_dir), partition_cols=["domain"])
    wall_s = time.time() - start
    stats = collect_stats(sink, order=ISSUE_C_STAGES)
    paths = write_report(stats, out_dir=out, wall_s=wall_s, sink_root=sink)
    here = {k: v.to_dict() for k, v in stats.items()}
    header = ["| stage | rows in | kept | dropped | counters |", "|---|---|---|---|---|"]
    notes = ["This pass, on the curated documents:", "", *header, *_rows(here)]
    notes += [
        "",
        f"Clusters: `{out / 'accounting/details/minhash_clusters.parquet'}`; report: `{paths['md']}`.",
    ]
    last = stats[ISSUE_C_STAGES[-1]]
    return StageResult(
        outputs={"deduped": str(docs_dir), "dedup_report": str(paths["json"])},
        metrics={
            "documents in": stats["minhash"].num_rows_in,
            "documents out": last.num_rows_out,
            "near-duplicates removed": stats["minhash"].num_dropped,
            "substring bytes removed": sum(
                stats[f"substring_{t}"].extra.get("num_bytes_removed", 0) for t in (400, 100)
            ),
            "contaminated documents removed": last.num_dropped,
            "wall time (s)": round(wall_s, 1),
        },
        notes=notes,
        images=[str(paths["png"])],
    )
