"""``make demo``: the whole pipeline on the tiny world, on a local Ray cluster, with a report.

Stages are the modules of :mod:`clinray.demo_stages`, run in the order of their ``ORDER`` number. Each
module defines ``ORDER`` (int), ``TITLE`` (str), ``BUDGET_S`` (seconds on a 2-core machine), ``NEEDS``
(artifact keys it reads), ``MAKES`` (artifact keys it writes), optionally ``USES`` (keys it reads when
present) and ``progress(ctx) -> str`` (a live status), and ``run(ctx) -> Section``. Stages that run a
pipeline stage call :meth:`DemoContext.run_job`, the same runner as ``clinray <stage>`` and
``ray_jobs``, so the demo checks configs, writes ``config.yaml`` and judges results exactly as they do.

Artifacts are paths on disk, kept in ``RUN_DIR/artifacts.json`` after every stage; each stage writes its
report section to ``RUN_DIR/sections/``, and ``report.md`` is assembled from the sections on disk. So
``clinray demo --resume RUN_DIR --only pack`` re-runs one stage from a finished run's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import pkgutil
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clinray.demo_stages as _stages

__all__ = ["Section", "DemoContext", "StageFailed", "discover_stages", "run_demo"]

ARTIFACTS = "artifacts.json"
SECTIONS = "sections"


class StageFailed(RuntimeError):
    """A stage whose job returned a result that is not ok."""


def exit_code(exc: BaseException | None) -> int:
    """A stage's outcome as the job runner's exit code: 0 ok, 1 not ok, 2 a user error (bad config)."""
    if exc is None:
        return 0
    return 2 if isinstance(exc, ValueError) else 1


@dataclasses.dataclass(kw_only=True)
class Section:
    """What a demo stage reports."""

    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    """Named output paths (stored in the run's artifacts)."""
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Figures worth a glance: counts, losses, accuracies."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Markdown lines for the report (tables welcome)."""
    images: list[str] = dataclasses.field(default_factory=list)
    """PNG paths to embed in the report."""
    headline: list[str] = dataclasses.field(default_factory=list)
    """The few lines the terminal shows at the end (the results that matter)."""


@dataclasses.dataclass(kw_only=True)
class DemoContext:
    """Shared state of one demo run."""

    run_dir: Path
    """``runs/demo/<timestamp>``: every stage writes under it."""
    seed: int = 0
    """Seed of the tiny world and of every stage."""
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    """Paths produced so far, by well-known key."""
    overrides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Extra ``--set`` overrides per job name, applied last (tests shrink stages with them)."""
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The StageResult of each job run by this process, by job name."""

    def stage_dir(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_job(self, job: str, recipe: str, overrides: list[str]):
        """Run one pipeline stage through the job runner; raise StageFailed when its result is not ok."""
        from clinray.jobs import execute

        result = execute(job, recipe, [*overrides, *self.overrides.get(job, [])])
        self.results[job] = result
        if not result.ok:
            raise StageFailed(f"{job}: {'; '.join(result.problems)}")
        return result


#: The demo's models, best first: what a stage that needs "the best model so far" takes.
BEST_MODELS = ("sft_model", "pretrained_model", "tiny_model")


def best_model(ctx: DemoContext, *, stage: str) -> tuple[str, str]:
    """``(artifact key, path)`` of the best model the run has made so far (SFT, pretrained, random)."""
    for key in BEST_MODELS:
        if ctx.artifacts.get(key):
            return key, ctx.artifacts[key]
    raise ValueError(f"the {stage} stage needs a model: run the tiny model stage first")


def discover_stages() -> list[Any]:
    modules = [
        importlib.import_module(f"clinray.demo_stages.{m.name}")
        for m in pkgutil.iter_modules(_stages.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.ORDER)


def stage_name(module) -> str:
    return module.__name__.rsplit(".", 1)[-1]


def _makers(stages: list[Any]) -> dict[str, str]:
    return {key: stage_name(m) for m in stages for key in m.MAKES}


def _render_report(run_dir: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((run_dir / SECTIONS).glob("*.json"))]
    total = sum(r["wall_s"] for r in rows)
    lines = [
        "# clinray demo report",
        "",
        f"Run directory: `{run_dir}`  ",
        f"Started: {run_dir.name}; stage wall time {total:.1f} s in all.",
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
            lines += [
                "| metric | value |",
                "|---|---|",
                *[f"| {k} | {v} |" for k, v in row["metrics"].items()],
                "",
            ]
        lines += row["notes"]
        for image in row["images"]:
            path = Path(image)
            rel = path.resolve().relative_to(run_dir.resolve()) if path.is_absolute() else image
            lines.append(f"![{path.stem}]({rel})")
        if row.get("error"):
            lines += ["```", row["error"], "```"]
    return "\n".join(lines) + "\n"


class _Ticker:
    """One live status line per stage on a terminal (elapsed time and the stage's own progress)."""

    def __init__(self, label: str, module, ctx: DemoContext):
        self.label, self.module, self.ctx = label, module, ctx
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = None
        if sys.stdout.isatty():
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        else:
            print(f"{label} ...", flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            extra = ""
            if hasattr(self.module, "progress"):
                try:
                    extra = self.module.progress(self.ctx)
                except Exception:  # a status line must never break a stage
                    extra = ""
            status = f"{self.label} {time.perf_counter() - self.start:5.0f} s  {extra}"
            print(f"\r\x1b[2K{status[:150]}", end="", flush=True)

    def done(self, status: str) -> float:
        wall = time.perf_counter() - self.start
        self._stop.set()
        if self._thread:
            self._thread.join()
            print("\r\x1b[2K", end="")
        print(f"{self.label} {status} in {wall:.1f} s", flush=True)
        return wall


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send this process's standard error (Python logging and warnings, Ray's C++ core worker lines,
    progress bars of the libraries) to the run's log file; the terminal keeps the demo's own lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 2)
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(handler)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            root.removeHandler(handler)
            root.setLevel(level)


def _run_stage(module, ctx: DemoContext, label: str) -> dict:
    row: dict[str, Any] = {"title": module.TITLE, "budget_s": module.BUDGET_S, "status": "ok", "exit_code": 0}
    row.update(dataclasses.asdict(Section()))
    ticker = _Ticker(label, module, ctx)
    try:
        section: Section = module.run(ctx)
        missing = [key for key in module.MAKES if key not in section.outputs]
        if missing:
            raise StageFailed(f"stage {stage_name(module)} did not make {missing}")
        ctx.artifacts.update(section.outputs)
        row.update(dataclasses.asdict(section))
    except Exception as exc:  # report and stop: later stages depend on this one
        reason = f"{type(exc).__name__}: {exc}"
        row.update(status="FAILED", error=traceback.format_exc(), reason=reason, exit_code=exit_code(exc))
    status = row["status"]
    row["wall_s"] = ticker.done(status if status != "ok" else "ok")
    if status == "ok" and row["wall_s"] > module.BUDGET_S:
        row["status"] = "ok (over budget)"
    return row


def run_demo(
    *,
    out_root: str | Path = "runs/demo",
    seed: int = 0,
    only: list[str] | None = None,
    resume: str | Path | None = None,
    overrides: dict[str, list[str]] | None = None,
) -> tuple[Path, int]:
    """Run the demo stages (all, or ``only``) on a local Ray cluster; return the report and an exit code.

    Args:
        out_root: folder of new runs (``<out_root>/<timestamp>``).
        seed: seed of the world and every stage.
        only: stage module names to run (their ``NEEDS`` must be on disk: from earlier stages or ``resume``).
        resume: an earlier run folder whose artifacts the stages read and whose report is updated.
        overrides: extra ``--set`` overrides per job name.
    """
    if resume:
        run_dir = Path(resume).resolve()
        if not (run_dir / ARTIFACTS).is_file():
            raise ValueError(f"--resume {str(resume)!r} is not a demo run folder (no {ARTIFACTS})")
        artifacts = json.loads((run_dir / ARTIFACTS).read_text())
    else:
        run_dir = Path(out_root).resolve() / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        artifacts = {}
    stages = discover_stages()
    names = [stage_name(m) for m in stages]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ValueError(f"no demo stage {unknown}; stages: {', '.join(names)}")
    chosen = [m for m in stages if not only or stage_name(m) in only]
    ctx = DemoContext(run_dir=run_dir, seed=seed, artifacts=artifacts, overrides=dict(overrides or {}))
    _check_needs(chosen, ctx, makers=_makers(stages))
    (run_dir / SECTIONS).mkdir(parents=True, exist_ok=True)
    print(f"clinray demo: {len(chosen)} stage(s), run folder {run_dir} (logs: demo.log)", flush=True)
    with _stderr_to(run_dir / "demo.log"):
        code, headlines = _run_stages(chosen, ctx)
    report = run_dir / "report.md"
    report.write_text(_render_report(run_dir))
    print(f"report: {report}", flush=True)
    if headlines:
        print("\nResults", *headlines, sep="\n", flush=True)
    return report, code


def _check_needs(chosen: list[Any], ctx: DemoContext, *, makers: dict[str, str]) -> None:
    """Before Ray starts: every stage's NEEDS is on disk or made by an earlier chosen stage."""
    available = {k for k, v in ctx.artifacts.items() if Path(v).exists()}
    for module in chosen:
        missing = [key for key in module.NEEDS if key not in available]
        if missing:
            hint = ", ".join(f"{k!r} (made by stage {makers.get(k, '?')})" for k in missing)
            raise ValueError(
                f"stage {stage_name(module)} needs {hint}: run it first or --resume a run that has it"
            )
        available |= set(module.MAKES)


def _run_stages(chosen: list[Any], ctx: DemoContext) -> tuple[int, list[str]]:
    """Run the chosen stages in order inside one ray_session(); stop at the first failure."""
    from clinray.ray_session import ray_session

    run_dir = ctx.run_dir
    code, headlines = 0, []
    with ray_session():  # the caller's Ray, RAY_ADDRESS's cluster, or a private local one
        for i, module in enumerate(chosen, 1):
            label = f"[{i}/{len(chosen)}] {module.TITLE}"
            row = _run_stage(module, ctx, label)
            name = f"{module.ORDER:02d}_{stage_name(module)}.json"
            (run_dir / SECTIONS / name).write_text(json.dumps(row, indent=2, default=str))
            (run_dir / ARTIFACTS).write_text(json.dumps(ctx.artifacts, indent=2))
            if row["status"] == "FAILED":
                print(f"  {row['reason']}", flush=True)
                code = row["exit_code"]
                break
            headlines += row["headline"]
    return code, headlines
