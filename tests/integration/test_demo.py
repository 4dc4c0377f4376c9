"""``clinray demo`` end to end at toy size, then ``--resume RUN --only pack`` from the files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from clinray.demo import discover_stages

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]
NUM_STAGES = len(discover_stages())

#: Toy sizes: a few training steps, a few questions (the stages and their jobs are the real ones).
SMALL = [
    "pretrain:train.max_steps=4",
    "pretrain:train.hf_export_every=2",
    "cot:limit=4",
    "cot:k=2",
    "cot:max_new_tokens=16",
    "sft:train.max_steps=2",
    "sft:sft.option_orders=1",
    "sft:sft.epochs=1",
    "eval:limit=5",
    "peft:clinical.steps=4",
    "peft:clinical.seq_len=64",
    "peft:task.seq_len=64",
    "peft:task.epochs=2",
    "peft:task.batch_size=8",
    "peft:synthetic.num_train=64",
    "peft:synthetic.num_test=40",
    "peft:bootstrap_samples=50",
    "medprompt_eval:limit=1",
    "medprompt_eval:strategies=[zero_shot_cot,cot_ensemble]",
]


def _demo(*args: str, cwd) -> subprocess.CompletedProcess:
    small = [f"--set={s}" for s in SMALL]
    return subprocess.run(
        [sys.executable, "-m", "clinray.cli", "demo", *args, *small],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    proc = _demo("--out", str(cwd / "runs"), cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (cwd / "runs").iterdir()
    return proc, run_dir


def test_demo_is_short_and_ends_with_the_results(demo_run):
    proc, run_dir = demo_run
    lines = proc.stdout.rstrip().splitlines()
    assert len(lines) <= 80, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert lines[-1].startswith("|"), "the terminal ends with a results table"
    out = proc.stdout
    for needle in (
        "curation ",
        "documents parsed",
        "loss clinical",
        "Accuracy (%)",
        "| base |",
        "| P+N |",
        "P+F vs F",
        "peft AUROC macro/micro",
    ):
        assert needle in out, needle
    sections = sorted(p.name for p in (run_dir / "sections").glob("*.json"))
    assert len(sections) == NUM_STAGES and all(
        json.loads((run_dir / "sections" / s).read_text())["status"].startswith("ok") for s in sections
    )
    report = (run_dir / "report.md").read_text()
    assert report.count("\n## ") == NUM_STAGES and "Checkpoint sweep" in report
    assert "Toy Table 2" in report and "Knowledge probe" in report
    assert "| stacked: task adapter on the frozen clinical adapter |" in report and "Step 1 helped" in report


def test_resume_reruns_one_stage_from_disk(demo_run, tmp_path):
    _, run_dir = demo_run
    before = json.loads((run_dir / "sections" / "50_pack.json").read_text())
    artifacts = json.loads((run_dir / "artifacts.json").read_text())
    proc = _demo("--resume", str(run_dir), "--only", "pack", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/1] Mixture and packing" in proc.stdout
    after = json.loads((run_dir / "sections" / "50_pack.json").read_text())
    assert after["status"].startswith("ok") and after["wall_s"] != before["wall_s"]
    assert json.loads((run_dir / "artifacts.json").read_text()) == artifacts  # same paths, rewritten in place
    assert (run_dir / "report.md").read_text().count(
        "\n## "
    ) == NUM_STAGES  # assembled from every section on disk


def test_a_stage_whose_inputs_are_missing_stops_before_ray(tmp_path):
    start = time.perf_counter()
    proc = _demo("--out", str(tmp_path / "runs"), "--only", "pretrain", cwd=tmp_path)
    assert proc.returncode == 2 and time.perf_counter() - start < 10
    assert "needs 'token_blocks' (made by stage pack)" in proc.stderr and "Traceback" not in proc.stderr


def test_curate_runs_from_a_folder_outside_the_checkout(world_dir, tmp_path):
    """Recipes are package data: a job finds ``tiny/curate`` wherever it runs."""
    out = tmp_path / "curated"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clinray.cli",
            "curate",
            "--config",
            "tiny/curate",
            "--input-root",
            str(world_dir / "corpus"),
            "--out",
            str(out),
            "--set",
            f"decontaminate.questions_root={world_dir / 'questions'}",
            "--num-cpus",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        "documents kept" in proc.stdout and (out / "config.yaml").is_file() and (out / "_SUCCESS").is_file()
    )
