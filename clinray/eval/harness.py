"""``clinray eval``: models x tasks through lm-eval, one Ray task per model, Table-2-style outputs.

Each model is evaluated by :func:`evaluate_model` inside its own Ray task (``num_gpus_per_model`` GPUs
or ``num_cpus_per_model`` CPU slots), which runs lm-eval's ``simple_evaluate`` with clinray's task
folder on the include path and the data folder in the task metadata, i.e. exactly what
``lm_eval --include_path clinray/eval/tasks --metadata '{"data_dir": ...}'`` runs, so the numbers are
the same as lm-eval's own CLI. The driver gathers compact results (metrics, per-sample log lines, and
what each task's loader skipped, by reason) and writes ``results.json``, ``table.md``, ``table.csv``
and ``samples/<model>/<task>.jsonl``; skipped rows and data warnings are also logged on the driver and
listed in the table's notes.

The trade-off: whole models are the unit of parallelism (no sharding of one model's questions over
workers), which keeps lm-eval's results bit-identical to a single-process run and suits both a
checkpoint sweep (many small jobs) and a Table 2 (a few models, one GPU each).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from clinray.config import dump, from_dict, to_dict
from clinray.eval.config import EvalConfig
from clinray.eval.tables import build_table, data_notes, to_markdown, write_tables
from clinray.results import StageResult

log = logging.getLogger(__name__)

#: The folder of clinray's task YAML files (pass it to lm-eval as ``--include_path``).
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def task_metadata(cfg: EvalConfig) -> dict[str, Any]:
    """The metadata every clinray task loader receives (data folder, per-task files, hub switch)."""
    data_dir = cfg.data_dir or os.environ.get("CLINRAY_DATA_DIR", "")
    return {
        "data_dir": str(Path(data_dir).resolve()) if data_dir else "",
        "paths": dict(cfg.paths),
        "use_hub": cfg.use_hub,
        "medmcqa_cop_base": cfg.cop_base,
    }


def _device(cfg: EvalConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() and cfg.num_gpus_per_model > 0 else "cpu"


def _sample_line(sample: dict) -> dict:
    """A compact per-question log line from an lm-eval sample."""
    doc = sample.get("doc", {})
    lls = [float(r[0]) for r in sample.get("filtered_resps", [])]
    arguments = sample.get("arguments") or []
    line = {
        "doc_id": sample.get("doc_id"),
        "id": doc.get("id"),
        "target": sample.get("target"),
        "prediction": max(range(len(lls)), key=lls.__getitem__) if lls else None,
        "loglikelihoods": lls,
        "choices": [a[1].strip() for a in arguments],
        "prompt": arguments[0][0] if arguments else None,
    }
    for key in ("acc", "acc_norm"):
        if key in sample:
            line[key] = sample[key]
    return line


def _metrics(task_result: dict) -> dict[str, float]:
    out = {}
    for key, value in task_result.items():
        name, _, filt = key.partition(",")
        if filt and isinstance(value, int | float):
            out[name] = float(value)
    return out


def evaluate_model(name: str, model: str, cfg: EvalConfig | dict) -> dict:
    """Evaluate one model on ``cfg.tasks`` in this process; return metrics and per-sample log lines."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import clinray.eval.scorer  # noqa: F401  (registers --model clinray)
    from clinray.eval.tasks import take_load_reports

    if isinstance(cfg, dict):
        cfg = from_dict(EvalConfig, cfg)
    start = time.perf_counter()
    builtin = any(
        not t.startswith("clinray_") for t in cfg.tasks
    )  # indexing lm-eval's own tasks takes seconds
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=builtin, metadata=task_metadata(cfg))
    take_load_reports()  # a reused Ray worker may hold an earlier evaluation's reports
    out = lm_eval.simple_evaluate(
        model=cfg.scorer,
        model_args={"pretrained": str(model), "dtype": cfg.dtype},
        tasks=list(cfg.tasks),
        task_manager=manager,
        device=_device(cfg),
        batch_size=cfg.batch_size,
        limit=cfg.limit or None,
        log_samples=cfg.log_samples,
        verbosity="WARNING",
    )
    results = {task: _metrics(r) for task, r in out["results"].items()}
    samples = {task: [_sample_line(s) for s in rows] for task, rows in (out.get("samples") or {}).items()}
    num_questions = {
        task: int(n.get("effective", n.get("original", 0))) for task, n in out["n-samples"].items()
    }
    subtasks = out.get("group_subtasks", {})

    def size(task: str) -> int:
        return num_questions.get(task) or sum(size(sub) for sub in subtasks.get(task, []))

    num_questions.update({group: size(group) for group in subtasks})
    return {
        "model": name,
        "path": str(model),
        "scorer": cfg.scorer,
        "wall_s": time.perf_counter() - start,
        "results": results,
        "num_questions": num_questions,
        "groups": sorted(out.get("groups", {})),
        "data": take_load_reports(),
        "samples": samples,
    }


def evaluate_models(cfg: EvalConfig) -> list[dict]:
    """Evaluate every model of ``cfg.models`` in parallel, one Ray task each; results in config order."""
    import ray
    from ray.exceptions import RayTaskError

    if not cfg.models:
        raise ValueError(
            "no models to evaluate: set models: {name: path} in the config or pass --model NAME=PATH"
        )
    if not ray.is_initialized():
        raise ValueError(
            "Ray is not initialized: call ray.init() first (the CLI and ray_jobs/evaluate.py do)"
        )
    remote = ray.remote(num_cpus=cfg.num_cpus_per_model, num_gpus=cfg.num_gpus_per_model, max_retries=0)(
        evaluate_model
    )
    plain = to_dict(cfg)
    refs = [remote.remote(name, path, plain) for name, path in cfg.models.items()]
    results = []
    for name, ref in zip(cfg.models, refs, strict=True):
        try:
            result = ray.get(ref)
        except RayTaskError as exc:
            if isinstance(exc.cause, ValueError):  # a question file the user must fix: one line, no traceback
                raise ValueError(f"evaluating {name}: {exc.cause}") from None
            raise
        log.info("evaluated %s in %.1f s", name, result["wall_s"])
        results.append(result)
    for line in data_notes(results):  # the driver's console, not only the Ray worker's log
        log.warning("%s", line)
    return results


def write_results(results: list[dict], cfg: EvalConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json (without samples), sample logs, and the Markdown/CSV table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")
    paths: dict[str, Path] = {}
    for result in results:
        for task, lines in result.get("samples", {}).items():
            path = out / "samples" / result["model"] / f"{task}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    compact = [{k: v for k, v in r.items() if k != "samples"} for r in results]
    notes = data_notes(compact)
    paths["results_json"] = out / "results.json"
    paths["results_json"].write_text(
        json.dumps({"tasks": cfg.tasks, "metric": cfg.metric, "notes": notes, "models": compact}, indent=2)
    )
    table = build_table(compact, cfg.tasks, metric=cfg.metric, merge=cfg.merge_columns)
    paths.update(write_tables(table, out, notes=notes))
    return paths


@dataclasses.dataclass(kw_only=True)
class EvalResult(StageResult):
    """An evaluation's table (models x benchmarks), its files and, for a sweep, the points of Figure 2."""

    out_dir: Path
    results: list[dict]
    """Per model: metrics per task, question counts, wall time (no samples)."""
    table: dict
    """``{"columns", "rows"}`` as built by :func:`clinray.eval.tables.build_table`."""
    results_json: Path
    table_md: Path
    table_csv: Path
    notes: list[str] = dataclasses.field(default_factory=list)
    """Lines printed under the table: skipped question rows by task and reason, data warnings, sweep notes."""
    points: list[dict] | None = None
    """Sweep only: one point per checkpoint (step, tokens seen, cells)."""
    sweep_png: Path | None = None

    def outputs(self) -> dict[str, str]:
        out = {"eval_table": str(self.table_md), "eval_results": str(self.results_json)}
        if self.sweep_png:
            out["eval_sweep"] = str(self.sweep_png)
        return out

    def summary(self) -> str:
        return "\n".join([to_markdown(self.table), *self.notes, StageResult.summary(self)])


def run_eval(cfg: EvalConfig) -> EvalResult:
    """Evaluate every model of ``cfg``, write every output under ``cfg.out_dir``, return the table."""
    results = evaluate_models(cfg)
    paths = write_results(results, cfg, cfg.out_dir)
    compact = [{k: v for k, v in r.items() if k != "samples"} for r in results]
    table = build_table(compact, cfg.tasks, metric=cfg.metric, merge=cfg.merge_columns)
    empty = [r["model"] for r in compact if not any(r["num_questions"].values())]
    return EvalResult(
        out_dir=Path(cfg.out_dir),
        results=compact,
        table=table,
        config_path=Path(cfg.out_dir) / "config.yaml",
        problems=[f"model {m!r} was scored on no question" for m in empty],
        notes=data_notes(compact),
        **paths,
    )


def run_evaluation(cfg: EvalConfig) -> EvalResult:
    """The ``eval`` stage: the checkpoint sweep when ``sweep.pretrain_run`` is set, else the models.

    The sweep instruction-tunes each checkpoint with ``clinray sft`` and the ``sweep.sft_config``
    recipe (:class:`clinray.sft.prepare.SFTTuner`) when ``sweep.instruction_tune`` is on.
    """
    from clinray.eval.sweep import run_sweep

    if not cfg.sweep.pretrain_run:
        return run_eval(cfg)
    tuner = None
    if cfg.sweep.instruction_tune and cfg.sweep.sft_config:
        from clinray.sft.prepare import SFTTuner

        tuner = SFTTuner(overrides=tuple(cfg.sweep.sft_overrides))
    return run_sweep(cfg, tuner=tuner)
