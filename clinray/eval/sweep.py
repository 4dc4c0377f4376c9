"""Checkpoint sweep (the paper's Figure 2): accuracy against pretraining tokens.

Pretraining writes Hugging Face exports ``<run>/hf/step_<N>/`` (and ``hf/final/``), each with a
``clinray_meta.json`` ``{"step", "tokens_seen", "source_run"}``. The sweep finds them, optionally
instruction-tunes each one (the paper fine-tunes every checkpoint before evaluating it), evaluates all
of them in parallel with :func:`clinray.eval.harness.run_eval` (one Ray task per checkpoint), and
plots one line per task against ``tokens_seen``.

Instruction tuning is a hook, ``instruction_tune(model_dir, *, out_dir, config) -> Path``, looked up at
``clinray.train.sft:instruction_tune``; where it does not exist (yet), the sweep evaluates the raw
checkpoints and says so in its notes rather than faking a fine-tune. The trade-off: the sweep owns no
training code, so it always tunes with whatever SFT the platform has.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinray.eval.config import EvalConfig
from clinray.eval.tables import column_name
from clinray.plotting import pyplot, save_figure

log = logging.getLogger(__name__)

SFT_HOOK = "clinray.train.sft:instruction_tune"
_STEP = re.compile(r"^step_(\d+)$")


@dataclasses.dataclass(kw_only=True, frozen=True)
class Checkpoint:
    """One pretraining export."""

    name: str
    """Folder name (``step_200``, ``final``)."""
    path: Path
    """The HF folder."""
    step: int
    """Optimizer step of the export."""
    tokens_seen: int
    """Pretraining tokens consumed when it was written."""


def find_checkpoints(run_dir: str | Path, *, include_final: bool = True) -> list[Checkpoint]:
    """The HF exports of a pretraining run, sorted by tokens seen (half-written ``*.tmp-*`` skipped)."""
    hf = Path(run_dir) / "hf"
    if not hf.is_dir():
        raise ValueError(f"{str(hf)!r} does not exist: point sweep.pretrain_run at a pretraining run folder")
    found = []
    for folder in sorted(hf.iterdir()):
        if not (_STEP.match(folder.name) or (include_final and folder.name == "final")):
            continue
        meta_path = folder / "clinray_meta.json"
        if not meta_path.is_file():
            log.warning("skipping %s: no clinray_meta.json (not a finished export)", folder)
            continue
        meta = json.loads(meta_path.read_text())
        found.append(
            Checkpoint(
                name=folder.name,
                path=folder,
                step=int(meta.get("step", 0)),
                tokens_seen=int(meta.get("tokens_seen", 0)),
            )
        )
    # a final export duplicating the last step export adds no point
    by_tokens = {}
    for ckpt in sorted(found, key=lambda c: (c.tokens_seen, c.name == "final")):
        by_tokens.setdefault(ckpt.tokens_seen, ckpt)
    return sorted(by_tokens.values(), key=lambda c: c.tokens_seen)


def resolve_sft_hook(spec: str = SFT_HOOK) -> tuple[Callable | None, str]:
    """The instruction-tuning function named ``module:function``, or None and the reason."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, f"instruction tuning skipped: {spec} is not available ({exc})"
    hook = getattr(module, attr, None)
    if hook is None:
        return None, f"instruction tuning skipped: {module_name} has no {attr}()"
    return hook, f"each checkpoint instruction-tuned with {spec}"


def run_sweep(cfg: EvalConfig, *, sft_hook: Callable | None | bool = True) -> dict[str, Any]:
    """Evaluate every checkpoint of ``cfg.sweep.pretrain_run``; write sweep.json/.csv/.png under out_dir.

    Args:
        cfg: the eval config; ``models`` is replaced by the checkpoints.
        sft_hook: True to look the hook up, False/None to skip tuning, or a callable to use.
    """
    from clinray.eval.harness import run_eval

    sweep = cfg.sweep
    checkpoints = find_checkpoints(sweep.pretrain_run, include_final=sweep.include_final)
    if not checkpoints:
        raise ValueError(f"no finished HF exports (hf/step_*/clinray_meta.json) under {sweep.pretrain_run!r}")
    if sweep.base_model:
        checkpoints.insert(0, Checkpoint(name="base", path=Path(sweep.base_model), step=0, tokens_seen=0))
    out = Path(cfg.out_dir)
    notes = []
    hook = None
    if sweep.instruction_tune and sft_hook is True:
        hook, note = resolve_sft_hook()
        notes.append(note)
    elif sweep.instruction_tune and callable(sft_hook):
        hook = sft_hook
        notes.append(f"each checkpoint instruction-tuned with {getattr(hook, '__name__', hook)}")
    else:
        notes.append("instruction tuning off: raw pretraining checkpoints evaluated")
    log.info(notes[-1])
    models = {}
    for ckpt in checkpoints:
        path = ckpt.path
        if hook is not None:
            path = Path(hook(ckpt.path, out_dir=out / "sft" / ckpt.name, config=sweep.sft_config))
        models[ckpt.name] = str(path)
    eval_cfg = dataclasses.replace(cfg, models=models)
    result = run_eval(eval_cfg)
    points = []
    for ckpt, row in zip(checkpoints, result["table"]["rows"], strict=True):
        points.append(
            {
                "checkpoint": ckpt.name,
                "step": ckpt.step,
                "tokens_seen": ckpt.tokens_seen,
                "model": models[ckpt.name],
                **row["cells"],
            }
        )
    (out / "sweep.json").write_text(
        json.dumps({"metric": sweep.metric, "notes": notes, "points": points}, indent=2)
    )
    columns = result["table"]["columns"]
    keys = ["checkpoint", "step", "tokens_seen", *columns]
    csv_lines = [",".join(keys)] + [",".join("" if p[k] is None else str(p[k]) for k in keys) for p in points]
    (out / "sweep.csv").write_text("\n".join(csv_lines) + "\n")
    png = plot_sweep(points, columns, out / "sweep.png", metric=cfg.metric, tuned=hook is not None)
    return {**result, "points": points, "notes": notes, "sweep_png": png}


def plot_sweep(
    points: list[dict], columns: list[str], out_png: str | Path, *, metric: str, tuned: bool
) -> Path:
    """Accuracy (%) against pretraining tokens, one line per table column (Figure 2)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    xs = [p["tokens_seen"] for p in points]
    for column in columns:
        ys = [p[column] for p in points]
        if any(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", label=column_name(column))
    ax.set_xlabel("pretraining tokens")
    ax.set_ylabel(f"{metric} (%)")
    stage = "instruction-tuned checkpoints" if tuned else "raw checkpoints, no instruction tuning"
    ax.set_title(f"Accuracy vs pretraining tokens ({stage})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)
