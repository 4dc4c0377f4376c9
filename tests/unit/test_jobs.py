"""The job runner's user-error path: checked before Ray starts, one line, exit 2, in well under 3 s."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from clinray import cli
from clinray.jobs import JOBS
from clinray.recipes import list_recipes, recipe_job, resolve_recipe

#: Runs one door in a fresh interpreter and reports whether Ray was started.
_PROBE = """
import sys, runpy
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    import ray
    print("RAY_STARTED" if ray.is_initialized() else "RAY_NOT_STARTED")
    raise
"""


def _door(module: str, *args: str, cwd=None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )
    return proc, time.perf_counter() - start


def _assert_one_line_error(proc, elapsed: float, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 3.0, f"took {elapsed:.1f} s"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "RAY_NOT_STARTED" in proc.stdout
    return lines[0]


@pytest.mark.parametrize("job", sorted(JOBS))
def test_a_job_without_config_exits_2(job):
    proc, _ = _door(f"ray_jobs.{JOBS[job].ray_job}")
    assert proc.returncode == 2
    assert "--config" in proc.stderr and "required" in proc.stderr


def test_bad_key_is_one_line(tmp_path):
    proc, elapsed = _door("clinray.cli", "curate", "--config", "tiny/curate", "--set", "length.min_word=3")
    _assert_one_line_error(proc, elapsed, "unknown config key 'length.min_word'", "min_words")


def test_bad_value_is_one_line():
    proc, elapsed = _door("ray_jobs.pack", "--config", "tiny/pack", "--set", "seq_len=1")
    _assert_one_line_error(proc, elapsed, "seq_len must be >= 2")


def test_every_missing_input_is_listed_at_once(tmp_path):
    (tmp_path / "corpus" / "clinical" / "text").mkdir(parents=True)
    (tmp_path / "corpus" / "clinical" / "text" / "a.txt").write_text("one document")
    proc, elapsed = _door(
        "ray_jobs.curate", "--config", "tiny/curate", "--set", f"input_root={tmp_path / 'corpus'}"
    )
    # six globs match nothing, and decontamination is on without its evaluation sets: the run refuses
    line = _assert_one_line_error(proc, elapsed, "7 problem(s)", "decontaminate.questions_root is not set")
    for glob in ("clinical/jats/*.nxml", "clinical/medline/*.xml.gz", "general/text/*.txt"):
        assert glob in line
    assert "clinical/text/*.txt" not in line  # that one matches a file


def test_missing_model_and_data_are_listed_together(tmp_path):
    proc, elapsed = _door(
        "clinray.cli",
        "pretrain",
        "--config",
        "tiny/pretrain",
        "--model",
        str(tmp_path / "no_model"),
        "--data",
        str(tmp_path / "no_blocks"),
    )
    _assert_one_line_error(proc, elapsed, "2 problem(s)", "no_model", "no_blocks")


def test_eval_lists_each_missing_task_file(tiny_model_dir, tmp_path):
    (tmp_path / "medqa").mkdir()
    proc, elapsed = _door(
        "clinray.cli",
        "eval",
        "--config",
        "tiny/eval",
        "--model",
        f"tiny={tiny_model_dir}",
        "--data-dir",
        str(tmp_path),
    )
    line = _assert_one_line_error(proc, elapsed, "medqa/test.jsonl", "pubmedqa/ori_pqal.json")
    assert "mmlu/test/anatomy_test.csv" in line


def test_unknown_recipe_lists_the_shipped_ones():
    proc, elapsed = _door("clinray.cli", "pack", "--config", "tiny/pak")
    _assert_one_line_error(proc, elapsed, "tiny/pack", "clinray recipes")


def test_recipes_resolve_from_any_folder(tmp_path):
    assert resolve_recipe("tiny/curate").is_file() and resolve_recipe("tiny/curate.yaml").is_file()
    names = list_recipes()
    assert "tiny/curate" in names and "paper/mistral7b_pretrain" in names
    assert recipe_job("paper/mistral7b_pretrain") == "pretrain" and recipe_job("tiny/medprompt_eval") in JOBS
    result = subprocess.run(
        [sys.executable, "-m", "clinray.cli", "recipes"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and "tiny/pretrain" in result.stdout


def test_every_recipe_names_a_job_or_tool():
    tools = set(cli.discover())
    for name in list_recipes():
        job = recipe_job(name)
        assert job in JOBS or job in tools, name
