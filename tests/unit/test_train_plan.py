"""The run plan the driver hands to Ray Train workers."""

from __future__ import annotations

import json
from pathlib import Path

from clinray.config import load
from clinray.train.config import PretrainConfig
from clinray.train.trainer import plan_run

RECIPE = "tiny/pretrain"


def test_relative_paths_reach_workers_absolute(tmp_path, monkeypatch):
    """Workers run in their own working directory, so the driver must resolve relative paths."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mistral",
                "max_position_embeddings": 1024,
                "num_hidden_layers": 4,
                "hidden_size": 128,
            }
        )
    )
    (tmp_path / "blocks").mkdir()
    manifest = {
        "seq_len": 128,
        "tokenizer": "model",
        "num_blocks": 2,
        "tokens_per_source": {"clinical": 256},
        "blocks_per_source": {"clinical": 2},
        "epochs": 1,
        "mixture": None,
    }
    (tmp_path / "blocks" / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    cfg = load(PretrainConfig, RECIPE, ["model.path=model", "data.path=blocks", "run.storage_path=runs"])
    plan = plan_run(cfg)
    assert cfg.model.path == str(tmp_path / "model")
    assert cfg.data.path == str(tmp_path / "blocks")
    assert Path(plan.run_dir).is_absolute()


def test_a_finished_run_is_recognized_and_a_partial_one_is_not(tmp_path):
    from clinray.train.plan import RunPlan
    from clinray.train.trainer import finished_checkpoint

    plan = RunPlan(seq_len=8, total_steps=4, run_dir=str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    (tmp_path / "checkpoint_0000004").mkdir()
    (tmp_path / "checkpoint_0000004" / "clinray_state.json").write_text("{}")
    assert finished_checkpoint(tmp_path, plan) is None  # no final export yet: the run must export it
    (tmp_path / "hf" / "final").mkdir(parents=True)
    (tmp_path / "hf" / "final" / "clinray_meta.json").write_text(json.dumps({"step": 4}))
    assert finished_checkpoint(tmp_path, plan) == str(tmp_path / "checkpoint_0000004")
    more = RunPlan(seq_len=8, total_steps=6, run_dir=str(tmp_path))
    assert finished_checkpoint(tmp_path, more) is None  # more steps asked: it trains on
    (tmp_path / "checkpoint_0000004" / "clinray_state.json").unlink()
    assert finished_checkpoint(tmp_path, plan) is None  # the last checkpoint incomplete
