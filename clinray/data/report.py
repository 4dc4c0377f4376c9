"""Curation report: ``report.json``, ``report.md`` and a PNG funnel chart from the stage accounting.

The report is built only from the summed per-batch stats and the rejects files (never from the
documents), so it costs nothing extra at any scale; the rejects also give, per benchmark, the question
ids that removed documents hit (flagged documents carry theirs in ``metadata.contamination``). It also
checks the accounting identities and says so: rows in = kept + dropped for every stage, and each
stage's rows in = the previous stage's rows out.
"""

from __future__ import annotations

import json
from pathlib import Path

from clinray.data.decontaminate import contamination_summary
from clinray.data.stage import StageStats, read_rejects
from clinray.plotting import pyplot, save_figure

#: Question ids listed per benchmark in ``report.md`` (all of them are in ``report.json``).
MAX_IDS_SHOWN = 10


def check_identities(stats: dict[str, StageStats]) -> list[str]:
    """Human-readable violations of the accounting identities (empty when everything adds up)."""
    problems = []
    previous = None
    for name, s in stats.items():
        if not s.balanced():
            problems.append(
                f"{name}: rows in {s.num_rows_in} != out {s.num_rows_out} + dropped {s.num_dropped}"
            )
        if previous is not None and s.num_rows_in != previous.num_rows_out:
            problems.append(
                f"{name}: rows in {s.num_rows_in} != {previous.stage} rows out {previous.num_rows_out}"
            )
        previous = s
    parse = stats.get("parse")
    if parse is not None and parse.extra:
        files = parse.extra.get("num_files_in", 0)
        ended = parse.extra.get("num_files_with_docs", 0) + parse.extra.get("num_files_without_docs", 0)
        if files != ended:
            problems.append(f"parse: {files} files in but {ended} accounted for")
    return problems


def _funnel_png(stats: dict[str, StageStats], path: Path) -> Path:
    plt = pyplot()

    names = list(stats)
    kept = [stats[n].num_rows_out for n in names]
    dropped = [stats[n].num_dropped for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 2))
    y = range(len(names))[::-1]
    ax.barh(list(y), kept, color="#2b8cbe", label="kept")
    ax.barh(list(y), dropped, left=kept, color="#e34a33", label="dropped")
    for yi, k, d in zip(y, kept, dropped):
        ax.text(k + d, yi, f"  {k:,} kept / {d:,} dropped", va="center", fontsize=8)
    ax.set_yticks(list(y), names)
    ax.set_xlabel("documents")
    ax.set_title("Curation funnel")
    ax.set_xlim(0, max([k + d for k, d in zip(kept, dropped)] + [1]) * 1.45)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    return save_figure(fig, path, dpi=110)


def _markdown(stats: dict[str, StageStats], *, wall_s: float, problems: list[str], rejects_by: dict) -> str:
    lines = [
        "# Curation report",
        "",
        f"Total wall time: {wall_s:.1f} s.",
        "",
        "| stage | rows in | rows out | dropped | MB in | MB out | busy s | span s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s.num_rows_in:,} | {s.num_rows_out:,} | {s.num_dropped:,} | "
            f"{s.num_bytes_in / 1e6:.2f} | {s.num_bytes_out / 1e6:.2f} | {s.busy_s:.1f} | {s.wall_s:.1f} |"
        )
    lines += ["", "## Dropped, by stage and reason", "", "| stage | reason | rows |", "|---|---|---|"]
    for name, s in stats.items():
        for reason, n in sorted(s.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {reason} | {n:,} |")
    parse = stats.get("parse")
    if parse is not None and parse.extra:
        lines += ["", "Input files: " + ", ".join(f"{k} = {v:,}" for k, v in sorted(parse.extra.items()))]
    # stage-specific counters (cluster sizes, bytes removed per substring pass, hits, the index)
    detailed = [(n, s) for n, s in stats.items() if n != "parse" and s.extra]
    if detailed:
        lines += ["", "## Stage details", "", "| stage | counter | value |", "|---|---|---|"]
        lines += [f"| {n} | {k} | {v:,} |" for n, s in detailed for k, v in sorted(s.extra.items())]
    if rejects_by.get("contamination"):
        lines += [
            "",
            "## Contamination (documents removed, by benchmark)",
            "",
            "| benchmark | documents | question ids |",
            "|---|---|---|",
        ]
        for bench, entry in rejects_by["contamination"].items():
            ids = entry["question_ids"]
            shown = ", ".join(ids[:MAX_IDS_SHOWN]) + (
                f" (+{len(ids) - MAX_IDS_SHOWN})" if len(ids) > MAX_IDS_SHOWN else ""
            )
            lines.append(f"| {bench} | {entry['num_docs']:,} | {shown} |")
    lines += ["", "## Accounting check", ""]
    lines += [f"- VIOLATION: {p}" for p in problems] or [
        "Every stage balances: rows in = kept + dropped, and each stage receives what the previous one kept."
    ]
    if rejects_by.get("examples"):
        lines += [
            "",
            "## Example rejects",
            "",
            "| stage | reason | input | locator | detail |",
            "|---|---|---|---|---|",
        ]
        for ex in rejects_by["examples"]:
            detail = (ex["detail"] or "").replace("|", "/").replace("\n", " ")[:100]
            lines.append(
                f"| {ex['stage']} | {ex['reason']} | {Path(ex['input_file']).name} | {ex['locator']} | {detail} |"
            )
    return "\n".join(lines) + "\n"


def write_report(stats: dict[str, StageStats], *, out_dir: str | Path, wall_s: float, sink_root: str) -> dict:
    """Write ``report.json``, ``report.md`` and ``funnel.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    problems = check_identities(stats)
    rejects = read_rejects(sink_root)
    examples, seen = [], set()
    listed = rejects.select(["stage", "reason", "input_file", "locator", "detail"]).to_pylist()
    for row in listed:
        if (row["stage"], row["reason"]) not in seen:
            seen.add((row["stage"], row["reason"]))
            examples.append(row)
    contamination = contamination_summary(listed)
    report = {
        "wall_s": round(wall_s, 3),
        "stages": {name: s.to_dict() for name, s in stats.items()},
        "num_docs_out": list(stats.values())[-1].num_rows_out if stats else 0,
        "num_rejects": rejects.num_rows,
        "contamination": contamination,
        "identities_hold": not problems,
        "problems": problems,
    }
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "funnel.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    rejects_by = {"examples": examples, "contamination": contamination}
    paths["md"].write_text(_markdown(stats, wall_s=wall_s, problems=problems, rejects_by=rejects_by))
    _funnel_png(stats, paths["png"])
    return paths
