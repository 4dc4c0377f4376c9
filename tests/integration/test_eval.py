"""``clinray eval`` on the tiny world: same accuracy as lm-eval's own CLI, tables, sample logs, sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clinray.eval.harness import TASKS_DIR

#: lm-eval's CLI in a subprocess and evaluations on the local Ray cluster: well over 20 s on 2 cores.
pytestmark = [pytest.mark.ray, pytest.mark.slow]

LM_EVAL = Path(sys.executable).parent / "lm_eval"
LIMIT = 40  # first 40 test questions: the same ones in lm-eval's CLI and in clinray eval


def _lm_eval_cli_acc(model: Path, questions: Path, out: Path, task: str) -> float:
    """Run lm-eval's own CLI with the hf model on one clinray task; return its acc."""
    cmd = [
        str(LM_EVAL),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model},dtype=float32",
        "--include_path",
        str(TASKS_DIR),
        "--tasks",
        task,
        "--device",
        "cpu",
        "--batch_size",
        "8",
        "--metadata",
        json.dumps({"data_dir": str(questions)}),
        "--output_path",
        str(out),
        "--limit",
        str(LIMIT),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(out.rglob("results_*.json"))
    return json.loads(path.read_text())["results"][task]["acc,none"]


def test_clinray_eval_matches_lm_eval_cli(ray_local, world_dir, tiny_model_dir, tmp_path):
    from clinray.config import load
    from clinray.eval.config import EvalConfig
    from clinray.eval.harness import run_eval

    questions = world_dir / "questions"
    cli_acc = _lm_eval_cli_acc(tiny_model_dir, questions, tmp_path / "cli", "clinray_medqa_4")
    cfg = load(
        EvalConfig,
        None,
        {
            "models": {"tiny": str(tiny_model_dir), "tiny_again": str(tiny_model_dir)},
            "tasks": ["clinray_medqa_4", "clinray_medqa_4_letter"],
            "data_dir": str(questions),
            "out_dir": str(tmp_path / "eval"),
            "device": "cpu",
            "limit": LIMIT,
        },
    )
    result = run_eval(cfg)
    fast, other = result.results
    assert fast["results"]["clinray_medqa_4"]["acc"] == pytest.approx(cli_acc, abs=1e-9)
    assert other["results"]["clinray_medqa_4"]["acc"] == pytest.approx(cli_acc, abs=1e-9)
    num_test = min(LIMIT, len((questions / "medqa" / "test.jsonl").read_text().splitlines()))
    assert fast["num_questions"]["clinray_medqa_4"] == num_test
    # outputs: table (rows = models, columns = tasks), CSV, results.json, per-sample logs
    md = result.table_md.read_text()
    assert "| model | medqa_4 | medqa_4_letter |" in md and f"| tiny | {100 * cli_acc:.2f} |" in md
    assert result.table_csv.read_text().splitlines()[0] == "model,clinray_medqa_4,clinray_medqa_4_letter"
    saved = json.loads(result.results_json.read_text())
    assert [m["model"] for m in saved["models"]] == ["tiny", "tiny_again"]
    lines = [
        json.loads(x) for x in (tmp_path / "eval/samples/tiny/clinray_medqa_4.jsonl").read_text().splitlines()
    ]
    assert len(lines) == num_test
    assert all(
        len(x["loglikelihoods"]) == 4 and x["prompt"].endswith("The correct answer is:") for x in lines
    )
    assert sum(x["prediction"] == x["target"] for x in lines) / num_test == pytest.approx(cli_acc)
    letter = (tmp_path / "eval/samples/tiny/clinray_medqa_4_letter.jsonl").read_text().splitlines()
    assert json.loads(letter[0])["choices"] == ["A", "B", "C", "D"]


def test_checkpoint_sweep_plots_accuracy_against_tokens(ray_local, world_dir, tiny_model_dir, tmp_path):
    from clinray.config import load
    from clinray.eval.config import EvalConfig
    from clinray.eval.sweep import run_sweep

    run = tmp_path / "pretrain"
    for step in (40, 20):
        export = run / "hf" / f"step_{step}"
        export.mkdir(parents=True)
        for f in tiny_model_dir.iterdir():
            (export / f.name).symlink_to(f)
        meta = {"step": step, "tokens_seen": step * 4096, "source_run": str(run)}
        (export / "clinray_meta.json").write_text(json.dumps(meta))
    cfg = load(
        EvalConfig,
        None,
        {
            "tasks": ["clinray_medqa_4"],
            "data_dir": str(world_dir / "questions"),
            "limit": 20,
            "out_dir": str(tmp_path / "sweep"),
            "device": "cpu",
            "sweep": {"pretrain_run": str(run), "instruction_tune": False, "base_model": str(tiny_model_dir)},
        },
    )
    result = run_sweep(cfg)
    assert [p["tokens_seen"] for p in result.points] == [0, 20 * 4096, 40 * 4096]  # base model at 0
    assert len({p["clinray_medqa_4"] for p in result.points}) == 1  # same weights, same accuracy
    assert any("instruction tuning off" in n for n in result.notes)  # said in the notes, never faked
    png = result.sweep_png
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert (
        (tmp_path / "sweep" / "sweep.csv")
        .read_text()
        .startswith("checkpoint,step,tokens_seen,clinray_medqa_4")
    )


def test_skipped_rows_reach_results_json_and_the_summary(ray_local, tiny_model_dir, tmp_path, caplog):
    """A MedMCQA file with one malformed row: its count and reason on the driver, in results.json and notes."""
    import logging

    from clinray.config import load
    from clinray.eval.config import EvalConfig
    from clinray.eval.harness import run_eval

    stems = [
        "A 45-year-old man has crushing substernal chest pain radiating to the left arm for 30 minutes. "
        "Which of the following drugs reduces mortality when given immediately?",
        "A 23-year-old woman has fever, dysuria and flank pain. Her temperature is 39.2 C. Which of the "
        "following is the most likely causal organism?",
        "A 60-year-old woman has fatigue and a hemoglobin of 8.9 g/dL with an MCV of 112 fL. Which of the "
        "following is the most likely deficiency?",
    ]
    options = [
        ["Aspirin", "Nitroglycerin", "Morphine", "Furosemide"],
        ["Escherichia coli", "Proteus mirabilis", "Klebsiella pneumoniae", "Enterococcus faecalis"],
        ["Vitamin B12", "Iron", "Folate", "Vitamin B6"],
    ]
    rows = [
        {"id": f"mm{i}", "question": s, **dict(zip(("opa", "opb", "opc", "opd"), o)), "cop": c}
        for i, (s, o, c) in enumerate(zip(stems, options, [1, 4, 1]))
    ]
    rows.insert(1, {**rows[0], "id": "mm-bad", "cop": 9})  # the malformed row
    data = tmp_path / "data"
    (data / "medmcqa").mkdir(parents=True)
    (data / "medmcqa" / "dev.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load(
        EvalConfig,
        None,
        {
            "models": {"tiny": str(tiny_model_dir)},
            "tasks": ["clinray_medmcqa"],
            "data_dir": str(data),
            "out_dir": str(tmp_path / "eval"),
            "device": "cpu",
        },
    )
    with caplog.at_level(logging.WARNING, logger="clinray.eval.harness"):
        result = run_eval(cfg)
    assert result.results[0]["num_questions"]["clinray_medmcqa"] == 3
    saved = json.loads(result.results_json.read_text())
    report = saved["models"][0]["data"]["clinray_medmcqa"]
    assert (
        report["skipped_by_reason"] == {"bad_answer": 1} and report["skipped"][0]["locator"] == "dev.json:2"
    )
    line = "clinray_medmcqa: skipped 1 of 4 question rows"
    assert any(n.startswith(line) for n in saved["notes"])
    assert line in result.summary() and "bad_answer (first at dev.json:2" in result.summary()
    assert line in caplog.text  # logged on the driver, not only in the Ray worker's log
    assert line in result.table_md.read_text()
    samples = (tmp_path / "eval/samples/tiny/clinray_medmcqa.jsonl").read_text().splitlines()
    assert [json.loads(s)["id"] for s in samples] == ["medmcqa/dev/mm0", "medmcqa/dev/mm1", "medmcqa/dev/mm2"]
    # a 5-option file where the 4-option task looks: one line naming clinray_medqa_5, no remote traceback
    five = {"question": stems[0], "options": dict(zip("ABCDE", [*options[0], "Heparin"])), "answer_idx": "A"}
    (data / "medqa").mkdir()
    (data / "medqa" / "test.jsonl").write_text(json.dumps(five) + "\n")
    bad = load(
        EvalConfig, None, {**to_plain(cfg), "tasks": ["clinray_medqa_4"], "out_dir": str(tmp_path / "e2")}
    )
    with pytest.raises(ValueError, match="clinray_medqa_5") as err:
        run_eval(bad)
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


def to_plain(cfg) -> dict:
    from clinray.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k in ("models", "data_dir", "device")}
