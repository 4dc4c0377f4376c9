"""The two-step comparison as one entry: step 1, then three step-2 variants, and their AUROC table.

Variants on the same notes, seed and head initialization: ``stacked`` (task adapter on the frozen step-1
adapter, the paper's recipe), ``task_only`` (task adapter, no step 1), ``head_only`` (the classifier head
alone, which is what the reference code ends up training). Data: the synthetic outcome task of the tiny
world (written to MIMIC-style CSV and read back through the loader), or local MIMIC-style CSV files.
Single-process CPU, no Ray: the trade-off is no scaling, in exchange for a whole comparison in about a
minute at tiny size that any machine can rerun.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from clinray.peft_clinical.data import load_notes_csv, synthetic_outcome_task, write_notes_csv
from clinray.peft_clinical.recipe import (
    StepConfig,
    clinical_texts,
    macro_micro_auroc,
    paired_bootstrap,
    predict,
    stacked_classifier,
    train_classifier,
    train_clinical_adapter,
)
from clinray.results import StageResult, missing_dir, missing_file, missing_model

__all__ = ["CSVSection", "SyntheticSection", "PeftConfig", "PeftResult", "run_peft"]


@dataclasses.dataclass(kw_only=True, slots=True)
class CSVSection:
    """Local MIMIC-style CSV files (used instead of the synthetic task when ``train`` is set)."""

    train: str = ""
    test: str = ""
    text_column: str = "text"
    label_columns: list[str] | None = None
    id_column: str | None = None
    codes_column: str | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class SyntheticSection:
    """The tiny world's outcome-prediction task (:func:`clinray.peft_clinical.data.synthetic_outcome_task`)."""

    num_labels: int = 6
    num_train: int = 240
    num_test: int = 160
    present_prob: float = 0.3
    distractors: int = 2
    held_out_cue: str | None = None
    seed: int = 0


@dataclasses.dataclass(kw_only=True, slots=True)
class PeftConfig:
    """Root config of the two-step clinical PEFT comparison."""

    model_path: str = ""
    """Base model (HF folder): the tiny model, or a pretrained one."""
    world_dir: str = ""
    """The tiny world: its clinical corpus for step 1 and (without ``csv.train``) the synthetic task."""
    out: str = "runs/peft/tiny"
    """Output folder: adapters, CSVs, report.json."""
    clinical: StepConfig = dataclasses.field(default_factory=lambda: StepConfig(steps=60, lr=2e-3))
    """Step 1."""
    task: StepConfig = dataclasses.field(
        default_factory=lambda: StepConfig(lr=3e-3, epochs=4, batch_size=16, seq_len=96)
    )
    """Step 2 (each variant)."""
    synthetic: SyntheticSection = dataclasses.field(default_factory=SyntheticSection)
    csv: CSVSection = dataclasses.field(default_factory=CSVSection)
    bootstrap_samples: int = 500
    seed: int = 0

    def check_inputs(self) -> list[str]:
        problems = missing_model(self.model_path, "model_path") + missing_dir(self.world_dir, "world_dir")
        if self.csv.train:
            problems += missing_file(self.csv.train, "csv.train") + missing_file(self.csv.test, "csv.test")
        return problems


@dataclasses.dataclass(kw_only=True)
class PeftResult(StageResult):
    report_path: Path
    table: dict

    def outputs(self) -> dict[str, str]:
        return {"peft_report": str(self.report_path)}

    def summary(self) -> str:
        lines = [
            f"{k}: macro {v['macro']:.3f} micro {v['micro']:.3f}" for k, v in self.table["variants"].items()
        ]
        lines.append(f"step 1 helped: {self.table['step1_helped']}")
        return "\n".join([*lines, super().summary()])


def _data(cfg: PeftConfig, out: Path):
    if cfg.csv.train:
        kw = dict(
            text_column=cfg.csv.text_column,
            label_columns=cfg.csv.label_columns,
            id_column=cfg.csv.id_column,
            codes_column=cfg.csv.codes_column,
        )
        train = load_notes_csv(cfg.csv.train, **kw)
        return train, load_notes_csv(
            cfg.csv.test, **kw, label_names=train.label_names if cfg.csv.codes_column else None
        )
    s = cfg.synthetic
    task = synthetic_outcome_task(
        cfg.world_dir,
        num_labels=s.num_labels,
        num_train=s.num_train,
        num_test=s.num_test,
        seed=s.seed,
        present_prob=s.present_prob,
        distractors=s.distractors,
        held_out_cue=s.held_out_cue,
    )
    paths = [write_notes_csv(task.train, out / "train.csv"), write_notes_csv(task.test, out / "test.csv")]
    return tuple(load_notes_csv(p, id_column="id") for p in paths)


def run_peft(cfg: PeftConfig) -> PeftResult:
    """Step 1, the three step-2 variants, and the AUROC table with a paired bootstrap (stacked vs task_only)."""
    from transformers import AutoTokenizer

    from clinray.config import dump

    problems = cfg.check_inputs()
    if problems:
        raise ValueError("; ".join(problems))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = dump(cfg, out / "config.yaml")
    start = time.perf_counter()
    train, test = _data(cfg, out)
    step1 = train_clinical_adapter(
        cfg.model_path,
        clinical_texts(cfg.world_dir),
        cfg.clinical,
        out=out / "clinical_adapter",
        seed=cfg.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    labels = torch.tensor(test.labels)
    variants = {
        "stacked": dict(clinical_dir=out / "clinical_adapter", task_r=cfg.task.r),
        "task_only": dict(clinical_dir=None, task_r=cfg.task.r),
        "head_only": dict(clinical_dir=None, task_r=0),
    }
    table: dict = {"variants": {}, "step1": step1, "train_notes": len(train), "test_notes": len(test)}
    scores = {}
    for name, kw in variants.items():
        model = stacked_classifier(
            cfg.model_path,
            num_labels=len(train.label_names),
            task_alpha=cfg.task.alpha,
            target_modules=cfg.task.target_modules,
            seed=cfg.seed,
            **kw,
        )
        fit = train_classifier(model, tokenizer, train, cfg.task, seed=cfg.seed)
        scores[name] = predict(model, tokenizer, test, seq_len=cfg.task.seq_len)
        table["variants"][name] = {**macro_micro_auroc(scores[name], labels), **fit}
        if name == "stacked" and cfg.task.r:
            model.save_pretrained(out / "task_adapters")  # the pair: clinical/ and task/ adapter folders
            torch.save(model.get_base_model().score.state_dict(), out / "task_adapters" / "score_head.pt")
    boot = paired_bootstrap(
        scores["stacked"], scores["task_only"], labels, samples=cfg.bootstrap_samples, seed=cfg.seed
    )
    table["stacked_minus_task_only_macro_ci95"] = boot
    helped = boot["low"] is not None and boot["low"] > 0
    table["step1_helped"] = (
        "yes (the 95% interval of the macro-AUROC gain is above 0)"
        if helped
        else "not shown (the 95% interval of the macro-AUROC difference includes 0 or is below it)"
    )
    table["seconds"] = round(time.perf_counter() - start, 1)
    table["bad_rows"] = {"train": train.bad_rows, "test": test.bad_rows}
    report_path = out / "report.json"
    report_path.write_text(json.dumps(table, indent=2) + "\n")
    problems = [
        f"{name}: macro AUROC {v['macro']} not above 0.5"
        for name, v in table["variants"].items()
        if name != "head_only" and (v["macro"] is None or v["macro"] <= 0.5)
    ]
    return PeftResult(config_path=config_path, problems=problems, report_path=report_path, table=table)
