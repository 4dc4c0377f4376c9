"""Checkpoint sweep (the paper's Figure 2): accuracy against pretraining tokens.

Pretraining writes Hugging Face exports ``<run>/hf/step_<N>/`` (and ``hf/final/``), each with a
``clinray_meta.json`` ``{"step", "tokens_seen", "source_run"}``. The sweep finds them, optionally
instruction-tunes each one (the paper fine-tunes every checkpoint before evaluating it), evaluates all
of them in parallel with :func:`clinray.eval.harness.run_eval` (one Ray task per checkpoint), and
plots one line per task against ``tokens_seen``.

Instruction tuning is declared, not looked up: the caller passes an :class:`InstructionTuner`
(``tuner(model_dir, *, out_dir, config) -> Path``) to :func:`run_sweep`. Without one, a sweep with
``sweep.instruction_tune`` on warns and evaluates the raw checkpoints, saying so in its notes and the
plot's title rather than faking a fine-tune. The trade-off: the sweep owns no training code and never
starts a fine-tune because some module appeared; whoever runs it decides which SFT it gets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from clinray.eval.config import EvalConfig
from clinray.eval.tables import column_name
from clinray.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from clinray.eval.harness import EvalResult

log = logging.getLogger(__name__)

NO_TUNER_NOTE = "instruction tuning requested but no tuner was passed: raw checkpoints evaluated"
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


class InstructionTuner(Protocol):
    """Tunes one checkpoint, returns the tuned HF folder."""

    def __call__(self, model_dir: Path, *, out_dir: Path, config: str) -> Path:
        """Instruction-tune ``model_dir`` into ``out_dir`` with the SFT recipe ``config``."""
        ...


def _choose_tuner(tuner: InstructionTuner | None, *, requested: bool) -> tuple[InstructionTuner | None, str]:
    """The tuner the sweep uses (None: raw checkpoints) and the note saying so (a warning if unmet)."""
    if not requested:
        note = "instruction tuning off: raw pretraining checkpoints evaluated"
        log.info(note)
        return None, note
    if tuner is None:
        log.warning(NO_TUNER_NOTE)
        return None, NO_TUNER_NOTE
    note = f"each checkpoint instruction-tuned with {getattr(tuner, '__name__', repr(tuner))}"
    log.info(note)
    return tuner, note


def _tuned_models(
    checkpoints: Sequence[Checkpoint], tuner: InstructionTuner | None, out: Path, *, config: str = ""
) -> dict[str, str]:
    """Row name -> model folder: each checkpoint tuned once into ``out/sft/<name>``, or as is."""
    models = {}
    for ckpt in checkpoints:
        path = ckpt.path
        if tuner is not None:
            path = Path(tuner(ckpt.path, out_dir=out / "sft" / ckpt.name, config=config))
        models[ckpt.name] = str(path)
    return models


def run_sweep(cfg: EvalConfig, *, tuner: InstructionTuner | None = None) -> EvalResult:
    """Evaluate every checkpoint of ``cfg.sweep.pretrain_run``; write sweep.json/.csv/.png under out_dir.

    Args:
        cfg: the eval config; ``models`` is replaced by the checkpoints.
        tuner: instruction-tunes each checkpoint before it is evaluated, when
            ``cfg.sweep.instruction_tune`` is on; without one the raw checkpoints are evaluated (a
            warning and a note).
    """
    from clinray.eval.harness import run_eval

    sweep = cfg.sweep
    checkpoints = find_checkpoints(sweep.pretrain_run, include_final=sweep.include_final)
    if not checkpoints:
        raise ValueError(f"no finished HF exports (hf/step_*/clinray_meta.json) under {sweep.pretrain_run!r}")
    if sweep.base_model:
        checkpoints.insert(0, Checkpoint(name="base", path=Path(sweep.base_model), step=0, tokens_seen=0))
    out = Path(cfg.out_dir)
    tuner, note = _choose_tuner(tuner, requested=sweep.instruction_tune)
    notes = [note]
    models = _tuned_models(checkpoints, tuner, out, config=sweep.sft_config)
    eval_cfg = dataclasses.replace(cfg, models=models)
    result = run_eval(eval_cfg)
    points = []
    for ckpt, row in zip(checkpoints, result.table["rows"], strict=True):
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
    columns = result.table["columns"]
    keys = ["checkpoint", "step", "tokens_seen", *columns]
    csv_lines = [",".join(keys)] + [",".join("" if p[k] is None else str(p[k]) for k in keys) for p in points]
    (out / "sweep.csv").write_text("\n".join(csv_lines) + "\n")
    png = plot_sweep(points, columns, out / "sweep.png", metric=cfg.metric, tuned=tuner is not None)
    return dataclasses.replace(result, points=points, notes=[*result.notes, *notes], sweep_png=png)


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
