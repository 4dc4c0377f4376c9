"""``make demo``: the whole pipeline on the tiny world, on a local Ray cluster, with a report.

Stages are the modules of :mod:`clinray.demo_stages`, run in the order of their ``ORDER`` number.
Each module defines ``ORDER`` (int), ``TITLE`` (str), ``BUDGET_S`` (seconds it should take on a
2-core machine) and ``run(ctx: DemoContext) -> StageResult``. Stages hand results to later ones
through ``ctx.artifacts`` (well-known keys: ``world``, ``tiny_model``, ``curated``, ``token_blocks``,
``pretrained_model``, ``sft_model``, ``index``, ...), always as paths on disk, never as objects, so each
stage can be re-run alone. The report lists every stage with its wall time against its budget, its
outputs, its metrics and any plots.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import pkgutil
import time
import traceback
from pathlib import Path
from typing import Any

import clinray.demo_stages as _stages


@dataclasses.dataclass(kw_only=True)
class StageResult:
    """What a demo stage reports."""

    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    """Named output paths (also stored in ``ctx.artifacts``)."""
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Figures worth a glance: counts, losses, accuracies."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Markdown lines for the report (tables welcome)."""
    images: list[str] = dataclasses.field(default_factory=list)
    """PNG paths to embed in the report."""


@dataclasses.dataclass(kw_only=True)
class DemoContext:
    """Shared state of one demo run."""

    run_dir: Path
    """``runs/demo/<timestamp>``: every stage writes under it."""
    seed: int = 0
    """Seed of the tiny world and of every stage."""
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    """Paths produced so far, by well-known key."""

    def stage_dir(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def discover_stages() -> list[Any]:
    modules = [
        importlib.import_module(f"clinray.demo_stages.{m.name}")
        for m in pkgutil.iter_modules(_stages.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.ORDER)


def _render_report(ctx: DemoContext, rows: list[dict], total_s: float) -> str:
    lines = [
        "# clinray demo report",
        "",
        f"Run directory: `{ctx.run_dir}`  ",
        f"Started: {ctx.run_dir.name}; total wall time {total_s:.1f} s.",
        "",
        "| # | stage | status | wall time (s) | budget (s) | outputs |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows, 1):
        outputs = "<br>".join(f"{k}: `{v}`" for k, v in row["outputs"].items())
        lines.append(
            f"| {i} | {row['title']} | {row['status']} | {row['wall_s']:.1f} | {row['budget_s']} | {outputs} |"
        )
    for row in rows:
        lines += ["", f"## {row['title']}", ""]
        if row["metrics"]:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in row["metrics"].items()]
            lines.append("")
        lines += row["notes"]
        for image in row["images"]:
            rel = (
                Path(image).resolve().relative_to(ctx.run_dir.resolve())
                if Path(image).is_absolute()
                else image
            )
            lines.append(f"![{Path(image).stem}]({rel})")
        if row.get("error"):
            lines += ["```", row["error"], "```"]
    return "\n".join(lines) + "\n"


def run_demo(*, out_root: str | Path = "runs/demo", seed: int = 0, only: list[str] | None = None) -> Path:
    """Run every demo stage in order on a local Ray cluster; return the report's path."""
    import ray

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    ctx = DemoContext(run_dir=Path(out_root).resolve() / stamp, seed=seed)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows: list[dict] = []
    start_all = time.perf_counter()
    failed = False
    try:
        for module in discover_stages():
            name = module.__name__.rsplit(".", 1)[-1]
            if only and name not in only:
                continue
            print(f"[demo] {module.TITLE} (budget {module.BUDGET_S} s) ...", flush=True)
            start = time.perf_counter()
            row = {
                "title": module.TITLE,
                "budget_s": module.BUDGET_S,
                "outputs": {},
                "metrics": {},
                "notes": [],
                "images": [],
            }
            try:
                result: StageResult = module.run(ctx)
                ctx.artifacts.update(result.outputs)
                row.update(status="ok", **dataclasses.asdict(result))
            except Exception:  # report and stop: later stages depend on this one
                row.update(status="FAILED", error=traceback.format_exc())
                failed = True
            row["wall_s"] = time.perf_counter() - start
            if row["status"] == "ok" and row["wall_s"] > module.BUDGET_S:
                row["status"] = "ok (over budget)"
            print(f"[demo] {module.TITLE}: {row['status']} in {row['wall_s']:.1f} s", flush=True)
            rows.append(row)
            if failed:
                break
    finally:
        ray.shutdown()
    total = time.perf_counter() - start_all
    report = ctx.run_dir / "report.md"
    report.write_text(_render_report(ctx, rows, total))
    (ctx.run_dir / "report.json").write_text(
        json.dumps({"total_s": total, "stages": rows, "artifacts": ctx.artifacts}, indent=2, default=str)
    )
    print(f"[demo] report: {report} (total {total:.1f} s)")
    if failed:
        raise RuntimeError(f"demo stage failed; see {report}")
    return report
