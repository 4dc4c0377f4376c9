"""The two-step comparison as one entry: step 1, then three step-2 variants, and their AUROC table.

Variants on the same notes, seed and head initialization: ``stacked`` (task adapter on the frozen step-1
adapter, the paper's recipe), ``task_only`` (task adapter, no step 1), ``head_only`` (the classifier head
alone, which is what the reference code ends up training). Data: the synthetic outcome task of the tiny
world (written to MIMIC-style CSV and read back through the loader), or local MIMIC-style CSV files.
Single-process CPU, no Ray: the trade-off is no scaling, in exchange for a whole comparison in about a
minute at tiny size that any machine can rerun.

Outputs under ``out``: ``report.json`` and ``auroc.md`` (the table side by side, and whether step 1
helped against the noise), ``clinical_adapter/`` (step 1), ``adapters/pair/`` (the clinical and the task
adapter of the stacked variant) and ``adapters/concat/`` (the two as one exact adapter of rank r1 + r2,
checked against the pair's logits), each with the trained head.
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
    export_stacked,
    macro_micro_auroc,
    paired_bootstrap,
    predict,
    stacked_classifier,
    train_classifier,
    train_clinical_adapter,
)
from clinray.results import StageResult, missing_dir, missing_file, missing_model

__all__ = ["CSVSection", "SyntheticSection", "PeftConfig", "PeftResult", "run_peft", "auroc_markdown"]


@dataclasses.dataclass(kw_only=True, slots=True)
class CSVSection:
    """Local MIMIC-style CSV files (used instead of the synthetic task when ``train`` is set)."""

    train: str = ""
    """Training notes (step 2)."""
    test: str = ""
    """Test notes: the AUROC table is computed on them."""
    clinical: str = ""
    """Clinical notes for step 1 (their ``text_column``; labels are not read); empty: the tiny world's
    clinical corpus (``world_dir``)."""
    text_column: str = "text"
    """The note text column."""
    label_columns: list[str] | None = None
    """0/1 label columns (wide layout); None: every column but the text, the id and ``codes_column``."""
    id_column: str | None = None
    """A column of note ids (None: line numbers)."""
    codes_column: str | None = None
    """A column of comma-separated codes, one label per code (diagnoses, procedures), instead of wide columns."""


@dataclasses.dataclass(kw_only=True, slots=True)
class SyntheticSection:
    """The tiny world's outcome-prediction task (:func:`clinray.peft_clinical.data.synthetic_outcome_task`)."""

    num_labels: int = 6
    """Conditions to predict (labels)."""
    num_train: int = 240
    """Training notes."""
    num_test: int = 160
    """Test notes."""
    present_prob: float = 0.3
    """Chance that a note's patient has each condition."""
    distractors: int = 2
    """Cues of conditions outside the label set in each note."""
    held_out_cue: str | None = None
    """A cue kind (test, finding, drug) kept out of the training notes and alone in the test notes."""
    seed: int = 0
    """Seed of the notes."""

    def __post_init__(self) -> None:
        if self.num_labels < 1 or self.num_train < 1 or self.num_test < 2:
            raise ValueError("synthetic: num_labels >= 1, num_train >= 1 and num_test >= 2 are needed")
        if not 0 < self.present_prob < 1:
            raise ValueError(f"synthetic.present_prob must be in (0, 1), got {self.present_prob}")


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
    """The synthetic task (when ``csv.train`` is empty)."""
    csv: CSVSection = dataclasses.field(default_factory=CSVSection)
    """Local MIMIC-style CSV files instead of the tiny world."""
    bootstrap_samples: int = 500
    """Paired bootstrap resamples of the test notes (stacked vs task adapter alone)."""
    seed: int = 0
    """Seed of step 1, of every step-2 variant (same head init) and of the bootstrap."""

    def __post_init__(self) -> None:
        if self.bootstrap_samples < 1:
            raise ValueError(f"bootstrap_samples must be >= 1, got {self.bootstrap_samples}")
        if self.clinical.r < 1:
            raise ValueError("clinical.r must be >= 1: step 1 trains a LoRA adapter")
        if self.task.r < 1:
            raise ValueError("task.r must be >= 1 (the head-alone variant runs anyway, beside the adapters)")

    def check_inputs(self) -> list[str]:
        problems = missing_model(self.model_path, "model_path")
        if not (self.csv.train and self.csv.clinical):  # the world gives the task, step 1's text, or both
            problems += missing_dir(self.world_dir, "world_dir")
        if self.csv.train:
            problems += missing_file(self.csv.train, "csv.train") + missing_file(self.csv.test, "csv.test")
        if self.csv.clinical:
            problems += missing_file(self.csv.clinical, "csv.clinical")
        return problems


#: Variant -> what it is, for the table.
VARIANTS = {
    "stacked": "task adapter on the frozen clinical adapter",
    "task_only": "task adapter, no step 1",
    "head_only": "classifier head alone",
}


@dataclasses.dataclass(kw_only=True)
class PeftResult(StageResult):
    """The two-step comparison: the AUROC table and the adapters."""

    report_path: Path
    """``report.json``: the table, step 1's losses, the bootstrap, the concatenation check."""
    table_path: Path
    """``auroc.md``: the table in Markdown."""
    out_dir: Path
    table: dict

    def outputs(self) -> dict[str, str]:
        out = {
            "peft_report": str(self.report_path),
            "peft_table": str(self.table_path),
            "clinical_adapter": str(self.out_dir / "clinical_adapter"),
        }
        export = self.table.get("export") or {}
        if export:
            out.update(peft_adapter_pair=export["pair"], peft_adapter_concat=export["concat"])
        return out

    def summary(self) -> str:
        return "\n".join([auroc_markdown(self.table).rstrip(), super().summary()])


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def auroc_markdown(table: dict) -> str:
    """The three variants side by side (macro and micro AUROC), then whether step 1 helped."""
    boot = table["stacked_minus_task_only_macro_ci95"]
    lines = [
        "| variant | macro AUROC | micro AUROC | trainable params | final loss |",
        "|---|---|---|---|---|",
    ]
    for name, row in table["variants"].items():
        lines.append(
            f"| {name}: {VARIANTS.get(name, name)} | {_fmt(row['macro'])} | {_fmt(row['micro'])} "
            f"| {row['trainable_params']:,} | {row['loss_last']:.3f} |"
        )
    interval = (
        f"[{boot['low']:+.3f}, {boot['high']:+.3f}]" if boot.get("low") is not None else "(no valid resample)"
    )
    lines += [
        "",
        f"Step 1 helped: {table['step1_helped']}. Macro AUROC stacked minus task adapter alone: 95% interval "
        f"{interval}, paired bootstrap over {table['test_notes']} test notes ({boot['samples']} resamples).",
    ]
    export = table.get("export")
    if export:
        lines.append(
            f"Exported: the pair (`{export['pair']}`) and one concatenated adapter of rank "
            f"{export['concat_rank']} (`{export['concat']}`): max |logit diff| {export['max_abs_logit_diff']:.1e} "
            f"vs the pair (fp32, limit {export['tolerance']:g})."
        )
    return "\n".join(lines) + "\n"


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
    texts = (
        load_notes_csv(
            cfg.csv.clinical, text_column=cfg.csv.text_column, label_columns=[], require_labels=False
        ).texts
        if cfg.csv.clinical
        else clinical_texts(cfg.world_dir)
    )
    step1 = train_clinical_adapter(
        cfg.model_path,
        texts,
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
        if name == "stacked":
            gate = tokenizer(
                test.texts[:16],
                truncation=True,
                max_length=cfg.task.seq_len,
                padding=True,
                return_tensors="pt",
            )
            table["export"] = export_stacked(
                model,
                cfg.model_path,
                out / "adapters",
                num_labels=len(train.label_names),
                input_ids=gate["input_ids"],
                attention_mask=gate["attention_mask"],
            )
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
    table_path = out / "auroc.md"
    table_path.write_text(auroc_markdown(table))
    # the paper's claim is about the adapters; the head alone may sit at chance on a random base
    problems = [
        f"{name}: {kind} AUROC {v[kind]} not above 0.5"
        for name, v in table["variants"].items()
        for kind in ("macro", "micro")
        if name != "head_only" and (v[kind] is None or v[kind] <= 0.5)
    ]
    if not table["export"]["passed"]:
        problems.append(
            f"the concatenated adapter differs from the pair by {table['export']['max_abs_logit_diff']:.2g} "
            f"in logits (limit {table['export']['tolerance']:g})"
        )
    return PeftResult(
        config_path=config_path,
        problems=problems,
        report_path=report_path,
        table_path=table_path,
        out_dir=out,
        table=table,
    )
