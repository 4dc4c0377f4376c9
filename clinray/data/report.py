"""Curation report: ``report.json``, ``report.md`` and a PNG funnel chart from the stage accounting.

The report is built only from the summed per-batch stats, the per-pass timings and the rejects files
(never from the documents), and it streams: the counts by stage and reason come from the stats records,
and the rejects are read file by file in record batches of their small columns (never the text), for
the example rejects (the first per stage and reason) and, per benchmark, the question ids that removed
documents hit (flagged documents carry theirs in ``metadata.contamination``). The driver's memory is
bounded by a batch, not by the number of rejects (measured: 1M rejects, see
``tests/unit/test_report_scale.py``). It also checks the accounting identities and says so: rows in =
kept + dropped for every stage, each stage's rows in = the previous stage's rows out, and every dropped
row has its reject record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from clinray.data.accounting import iter_rejects
from clinray.data.decontaminate import STAGE as DECONTAMINATE
from clinray.data.decontaminate import contamination_summary
from clinray.data.stage import StageStats
from clinray.data.timings import read_passes
from clinray.plotting import pyplot, save_figure

#: Question ids listed per benchmark in ``report.md`` (all of them are in ``report.json``).
MAX_IDS_SHOWN = 10
#: Columns of the rejects the report reads (``text``, the large one, is never read).
REPORT_COLUMNS = ("stage", "reason", "input_file", "locator", "detail")
#: Keys of a pass record that are not counters.
PASS_FIELDS = ("stage", "pass", "seconds", "end")


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


def _pass_counters(record: dict) -> str:
    return ", ".join(
        f"{k} = {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} = {v}"
        for k, v in record.items()
        if k not in PASS_FIELDS
    )


def _markdown(
    stats: dict[str, StageStats], *, wall_s: float, problems: list[str], rejects_by: dict, passes: list[dict]
) -> str:
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
    if passes:
        lines += [
            "",
            "## Passes (in the order they ended; wall seconds)",
            "",
            "| stage | pass | seconds | counters |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p.get('stage')} | {p.get('pass')} | {p.get('seconds', 0):.2f} | {_pass_counters(p) or '-'} |"
            for p in passes
        ]
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
        "Every stage balances: rows in = kept + dropped, each stage receives what the previous one kept, "
        "and every dropped row has its reject record."
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


def _merge_contamination(total: dict[str, dict], part: dict[str, dict]) -> None:
    for bench, entry in part.items():
        into = total.setdefault(bench, {"num_docs": 0, "question_ids": set()})
        into["num_docs"] += entry["num_docs"]
        into["question_ids"].update(entry["question_ids"])


def summarize_rejects(sink_root: str | Path, *, batch_rows: int | None = None) -> dict:
    """One streaming pass over the rejects: their count, the count per ``(stage, reason)``, the first
    reject of each (in file order, the examples) and the contamination summary per benchmark.

    Bounded memory: a record batch of the small columns at a time; what is kept grows with the number
    of distinct reasons and with the benchmarks' question ids (a few thousand per benchmark: the
    evaluation sets, not the corpus), never with the number of rejects.
    """
    kwargs = {} if batch_rows is None else {"batch_rows": batch_rows}
    num_rejects, counts, examples = 0, {}, {}
    contamination: dict[str, dict] = {}
    for batch in iter_rejects(sink_root, columns=REPORT_COLUMNS, **kwargs):
        num_rejects += batch.num_rows
        keys = pc.binary_join_element_wise(batch["stage"], batch["reason"], "\x1f")
        for item in pc.value_counts(keys).to_pylist():
            key = tuple(item["values"].split("\x1f", 1))
            counts[key] = counts.get(key, 0) + item["counts"]
            if key not in examples:
                row = pc.index(keys, item["values"]).as_py()
                examples[key] = {c: batch.column(c)[row].as_py() for c in REPORT_COLUMNS}
        hit = pc.and_(pc.equal(batch["stage"], DECONTAMINATE), pc.equal(batch["reason"], "contaminated"))
        if pc.any(hit).as_py():
            rows = pa.Table.from_batches([batch]).filter(hit).select(["stage", "reason", "detail"])
            _merge_contamination(contamination, contamination_summary(rows.to_pylist()))
    return {
        "num_rejects": num_rejects,
        "counts": counts,
        "examples": list(examples.values()),
        "contamination": {
            b: {"num_docs": e["num_docs"], "question_ids": sorted(e["question_ids"])}
            for b, e in sorted(contamination.items())
        },
    }


def check_rejects(stats: dict[str, StageStats], counts: dict[tuple[str, str], int]) -> list[str]:
    """Violations of "every dropped row has its reject record": per stage and reason, the rows the
    stats drop against the reject records written (empty when they agree)."""
    problems = []
    dropped = {(name, reason): n for name, s in stats.items() for reason, n in s.dropped.items() if n}
    for stage, reason in sorted(set(dropped) | set(counts)):
        want, got = dropped.get((stage, reason), 0), counts.get((stage, reason), 0)
        if want != got:
            problems.append(f"{stage}: {want:,} rows dropped as {reason} but {got:,} reject records")
    return problems


def write_report(stats: dict[str, StageStats], *, out_dir: str | Path, wall_s: float, sink_root: str) -> dict:
    """Write ``report.json``, ``report.md`` and ``funnel.png`` into ``out_dir``; return their paths.

    Streams the rejects (:func:`summarize_rejects`): safe with millions of them.
    """
    out = Path(out_dir)
    rejects = summarize_rejects(sink_root)
    problems = check_identities(stats) + check_rejects(stats, rejects["counts"])
    passes = read_passes(sink_root)
    report = {
        "wall_s": round(wall_s, 3),
        "stages": {name: s.to_dict() for name, s in stats.items()},
        "passes": passes,
        "num_docs_out": list(stats.values())[-1].num_rows_out if stats else 0,
        "num_rejects": rejects["num_rejects"],
        "contamination": rejects["contamination"],
        "identities_hold": not problems,
        "problems": problems,
    }
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "funnel.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    rejects_by = {"examples": rejects["examples"], "contamination": rejects["contamination"]}
    paths["md"].write_text(
        _markdown(stats, wall_s=wall_s, problems=problems, rejects_by=rejects_by, passes=passes)
    )
    _funnel_png(stats, paths["png"])
    return paths
