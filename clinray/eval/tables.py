"""Table-2-style tables: one row per model, one column per task, accuracy in percent.

Plain functions over the compact results of :mod:`clinray.eval.harness` (no lm-eval import), so a
table and its notes (skipped question rows) can be rebuilt from a ``results.json`` alone. Missing cells
(a task a model was not run on) show as ``-`` rather than failing the table.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

MISSING = "-"


def column_name(task: str) -> str:
    """Display name of a task column (``clinray_medqa_4`` -> ``medqa_4``)."""
    return task.removeprefix("clinray_")


def table_columns(tasks: list[str], merge: dict[str, list[str]] | None = None) -> list[str]:
    """Columns in task order; tasks listed under a ``merge`` column are replaced by that column."""
    merged_into = {task: name for name, members in (merge or {}).items() for task in members}
    columns: list[str] = []
    for task in tasks:
        column = merged_into.get(task, task)
        if column not in columns:
            columns.append(column)
    return columns


def _cell(result: dict, column: str, metric: str, merge: dict[str, list[str]]) -> tuple[float | None, int]:
    """(percent, questions) of one cell; a merged column is the question-weighted mean of its tasks."""
    members = merge.get(column, [column])
    total, count = 0.0, 0
    for task in members:
        value = result.get("results", {}).get(task, {}).get(metric)
        n = _task_size(result, task) or 1
        if value is None:
            return None, 0
        total, count = total + value * n, count + n
    return 100.0 * total / count, (count if any(_task_size(result, t) for t in members) else 0)


def build_table(
    results: list[dict], tasks: list[str], *, metric: str = "acc", merge: dict[str, list[str]] | None = None
) -> dict:
    """``{"columns", "rows": [{"model", "cells": {column: percent | None}}], "num_questions", "metric"}``.

    Args:
        results: compact per-model results (``model``, ``results``, ``num_questions``).
        tasks: the evaluated tasks, in column order.
        metric: ``acc`` or ``acc_norm``.
        merge: extra columns, name -> tasks averaged into it weighted by their number of questions.
    """
    merge = dict(merge or {})
    columns = table_columns(tasks, merge)
    rows = []
    num_questions: dict[str, int] = {}
    for result in results:
        cells = {}
        for column in columns:
            cells[column], n = _cell(result, column, metric, merge)
            if n:
                num_questions[column] = n
        rows.append({"model": result["model"], "cells": cells})
    return {"columns": columns, "rows": rows, "num_questions": num_questions, "metric": metric}


def _task_size(result: dict, task: str) -> int:
    """Questions behind a cell (a group's count is the sum of its subtasks', filled by the harness)."""
    return int(result.get("num_questions", {}).get(task, 0))


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def to_markdown(table: dict) -> str:
    """The table as Markdown, with a last line giving the number of questions per column."""
    cols = table["columns"]
    lines = [
        f"| model | {' | '.join(column_name(c) for c in cols)} |",
        f"|---|{'---:|' * len(cols)}",
    ]
    for row in table["rows"]:
        lines.append(f"| {row['model']} | {' | '.join(_fmt(row['cells'][c]) for c in cols)} |")
    sizes = [str(table["num_questions"].get(c, MISSING)) for c in cols]
    lines.append(f"| *questions* | {' | '.join(sizes)} |")
    return "\n".join(lines) + "\n"


def to_csv(table: dict) -> str:
    """The table as CSV (model, then one column per task; empty cell when missing)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", *table["columns"]])
    for row in table["rows"]:
        cells = row["cells"]
        writer.writerow(
            [row["model"], *("" if cells[c] is None else f"{cells[c]:.4f}" for c in table["columns"])]
        )
    return buf.getvalue()


def _skip_detail(report: dict) -> str:
    first: dict[str, dict] = {}
    for row in report.get("skipped", []):
        first.setdefault(row["reason"], row)
    parts = []
    for reason, n in report.get("skipped_by_reason", {}).items():
        row = first.get(reason)
        where = (
            f" (first at {row['locator']}{': ' + row['detail'] if row.get('detail') else ''})" if row else ""
        )
        parts.append(f"{n} x {reason}{where}")
    return "; ".join(parts)


def data_notes(results: list[dict]) -> list[str]:
    """One line per task whose loader skipped rows or warned (``data`` of each model's result), once per task.

    Every model reads the same files, so a task's line is shown once; models that read a task
    differently (another file) get a line each, named.
    """
    seen: dict[tuple, list[str]] = {}
    for result in results:
        for task, report in sorted(result.get("data", {}).items()):
            key = (task, json.dumps(report, sort_keys=True))
            seen.setdefault(key, []).append(result.get("model", "?"))
    tasks = [task for task, _ in seen]
    notes = []
    for (task, blob), models in seen.items():
        report = json.loads(blob)
        who = f" ({', '.join(models)})" if tasks.count(task) > 1 else ""
        if report.get("num_skipped"):
            total = report["num_skipped"] + report.get("num_questions", 0)
            notes.append(
                f"{task}{who}: skipped {report['num_skipped']} of {total} question rows in "
                f"{report.get('source', '?')}: {_skip_detail(report)}"
            )
        notes += [f"{task}{who}: {warning}" for warning in report.get("warnings", [])]
    return notes


def write_tables(table: dict, out_dir: str | Path, *, notes: list[str] | None = None) -> dict[str, Path]:
    """Write ``table.md`` (with ``notes`` under the table) and ``table.csv`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, cs = out / "table.md", out / "table.csv"
    tail = "".join(f"\n- {note}" for note in notes or []) + ("\n" if notes else "")
    md.write_text(
        f"Accuracy (%, {table['metric']}, full-answer likelihood unless the task ends in _letter)\n\n"
        + to_markdown(table)
        + tail
    )
    cs.write_text(to_csv(table))
    return {"table_md": md, "table_csv": cs}
