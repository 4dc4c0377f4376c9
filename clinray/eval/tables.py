"""Table-2-style tables: one row per model, one column per task, accuracy in percent.

Plain functions over the compact results of :mod:`clinray.eval.harness` (no lm-eval import), so a
table can be rebuilt from a ``results.json`` alone. Missing cells (a task a model was not run on)
show as ``-`` rather than failing the table.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

MISSING = "-"


def column_name(task: str) -> str:
    """Display name of a task column (``clinray_medqa_4`` -> ``medqa_4``)."""
    return task.removeprefix("clinray_")


def build_table(results: list[dict], tasks: list[str], *, metric: str = "acc") -> dict:
    """``{"columns", "rows": [{"model", "cells": {task: percent | None}}], "num_questions", "metric"}``."""
    rows = []
    num_questions: dict[str, int] = {}
    for result in results:
        cells = {}
        for task in tasks:
            value = result.get("results", {}).get(task, {}).get(metric)
            cells[task] = None if value is None else 100.0 * value
        rows.append({"model": result["model"], "cells": cells})
        for task in tasks:
            n = _task_size(result, task)
            if n:
                num_questions[task] = n
    return {"columns": list(tasks), "rows": rows, "num_questions": num_questions, "metric": metric}


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


def write_tables(table: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.md`` and ``table.csv`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, cs = out / "table.md", out / "table.csv"
    md.write_text(
        f"Accuracy (%, {table['metric']}, full-answer likelihood unless the task ends in _letter)\n\n"
        + to_markdown(table)
    )
    cs.write_text(to_csv(table))
    return {"table_md": md, "table_csv": cs}
