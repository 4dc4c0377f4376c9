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
