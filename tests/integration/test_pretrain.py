"""Pretraining on Ray Train V2 with FSDP2 over gloo on CPU: 2 workers, the tiny world, the tiny model.

Two short runs share the module: an uninterrupted one, and one whose rank 1 is killed just after the
checkpoint of step 5 and that resumes by itself (``FailureConfig(max_failures=1)``). Data order comes
from the checkpointed data position, so the resumed losses must equal the uninterrupted ones; the
tolerance is 1e-4 absolute on a loss of about 5 (observed: bitwise equal on CPU, same thread count).
Each step is 2 workers x 4 blocks x 64 tokens x 2 accumulation = 1024 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinray.config import load
from clinray.train.config import PretrainConfig
from clinray.train.metrics import read_metrics

NUM_STEPS, FAIL_AT = 10, 5
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def blocks_dir(world_dir, tiny_model_dir, tmp_path_factory) -> Path:
    from clinray.train.data import blocks_from_corpus

    out = tmp_path_factory.mktemp("blocks")
    blocks_from_corpus(world_dir / "corpus", tiny_model_dir, out, seq_len=64)
    return out


def _cfg(storage: Path, name: str, model: Path, blocks: Path, *extra: str) -> PretrainConfig:
    return load(
        PretrainConfig,
        "tiny/pretrain",
        [
            f"model.path={model}",
            f"data.path={blocks}",
            f"run.storage_path={storage}",
            f"run.name={name}",
            "train.global_batch_tokens=1024",
            "train.micro_batch_size=4",
            f"train.max_steps={NUM_STEPS}",
            "train.token_budget=0",
            "train.max_time_s=0",
            "train.checkpoint_every=5",
            "train.hf_export_every=0",
            "train.log_every=1",
            "optim.max_lr=3e-3",
            "scaling.num_workers=2",
            "run.max_failures=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tiny_model_dir, blocks_dir, tmp_path_factory):
    from clinray.train.trainer import run_pretrain

    storage = tmp_path_factory.mktemp("runs")
    summary = run_pretrain(_cfg(storage, "clean", tiny_model_dir, blocks_dir))
    return summary, read_metrics(Path(summary.run_dir) / "metrics.jsonl")


def test_two_worker_fsdp_lowers_clinical_loss(uninterrupted):
    summary, rows = uninterrupted
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    for row in rows:  # both per-source losses are reported at every step
        assert row["loss_clinical"] is not None and row["loss_general"] is not None
        assert row["tokens_per_s"] > 0 and row["grad_norm"] > 0
    first = sum(r["loss_clinical"] for r in rows[:2]) / 2
    last = sum(r["loss_clinical"] for r in rows[-2:]) / 2
    assert last < first - 0.5, f"clinical loss did not drop: {first:.3f} -> {last:.3f}"
    assert rows[-1]["tokens_seen"] == NUM_STEPS * 1024
    assert rows[0]["lr"] == pytest.approx(0.1 * 3e-3)  # the loop follows the schedule: warm-up from 0.1 x max
    final = Path(summary.hf_final)
    meta = json.loads((final / "clinray_meta.json").read_text())
    assert meta["step"] == NUM_STEPS and meta["tokens_seen"] == NUM_STEPS * 1024
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert Path(summary.plot).stat().st_size > 1000
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final)  # the export loads as a plain HF model
    assert model.config.num_hidden_layers == 4


def test_killed_worker_resumes_and_matches(uninterrupted, ray_local, tiny_model_dir, blocks_dir, tmp_path):
    from clinray.train.trainer import run_pretrain

    _, clean = uninterrupted
    summary = run_pretrain(
        _cfg(tmp_path, "killed", tiny_model_dir, blocks_dir, f"train.fail_at_step={FAIL_AT}")
    )
    run_dir = Path(summary.run_dir)
    assert (run_dir / f".failed_once_at_{FAIL_AT}").exists(), "the worker was never killed"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    resumed = [r for r in rows if r["step"] > FAIL_AT]
    assert all(r["resumed_from"] == FAIL_AT for r in resumed), "did not resume from the step-5 checkpoint"
    for ours, ref in zip(rows, clean):
        for key in ("loss", "loss_clinical", "loss_general"):
            assert ours[key] == pytest.approx(ref[key], abs=TOLERANCE), (ours["step"], key)
    assert len(list(run_dir.glob("checkpoint_0*"))) <= 2  # num_to_keep


def test_bad_batch_geometry_is_actionable(tiny_model_dir, blocks_dir, tmp_path):
    from clinray.train.trainer import plan_run

    cfg = _cfg(tmp_path, "bad", tiny_model_dir, blocks_dir, "train.global_batch_tokens=1000")
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        plan_run(cfg)


def test_killed_during_a_checkpoint_save_resumes_from_the_previous_one(
    uninterrupted, ray_local, tiny_model_dir, blocks_dir, tmp_path
):
    """Rank 1 dies after writing its shard of step 10's checkpoint and before reporting it: Ray never
    registers that checkpoint, the group restarts from step 5's, and the losses match the clean run."""
    from clinray.train.trainer import run_pretrain

    _, clean = uninterrupted
    summary = run_pretrain(
        _cfg(
            tmp_path,
            "killed_in_save",
            tiny_model_dir,
            blocks_dir,
            f"train.fail_during_save_at_step={NUM_STEPS}",
        )
    )
    run_dir = Path(summary.run_dir)
    assert (run_dir / f".failed_during_save_at_{NUM_STEPS}").exists(), "the worker was never killed"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    assert all(r["resumed_from"] == FAIL_AT for r in rows if r["step"] > FAIL_AT), "not resumed from step 5"
    for ours, ref in zip(rows, clean, strict=True):
        for key in ("loss", "loss_clinical", "loss_general"):
            assert ours[key] == pytest.approx(ref[key], abs=TOLERANCE), (ours["step"], key)
    assert summary.ok and (Path(summary.hf_final) / "model.safetensors").is_file()
