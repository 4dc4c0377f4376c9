"""``clinray sft`` on Ray Train V2 (2 workers, FSDP2 over gloo): the data stage, packing, NEFTune, the
loop in SFT mode, and a killed worker that resumes mid-epoch to the same losses as an uninterrupted run.

Each step is 2 workers x 2 rows x 256 tokens = 1,024 tokens; NEFTune is on, so the resumed run must
also redraw the same noise (it is seeded per rank and micro-batch) to match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinray.config import load
from clinray.train.config import TrainConfig
from clinray.train.metrics import read_metrics

NUM_STEPS, FAIL_AT = 6, 3
TOLERANCE = 1e-4


def _cfg(storage: Path, name: str, model: Path, world: Path, *extra: str) -> TrainConfig:
    questions = world / "questions"
    return load(
        TrainConfig,
        "tiny/sft_neftune",
        [
            f"model.path={model}",
            f"sft.paths.medqa={questions / 'medqa' / 'train.jsonl'}",
            f"sft.paths.medmcqa={questions / 'medmcqa' / 'train.json'}",
            "sft.option_orders=1",
            "sft.epochs=2",
            "sft.seq_len=256",
            "sft.decontaminate.enabled=true",
            f"sft.decontaminate.questions_root={questions}",
            f"run.storage_path={storage}",
            f"run.name={name}",
            "train.global_batch_tokens=1024",
            "train.micro_batch_size=2",
            f"train.max_steps={NUM_STEPS}",
            "train.max_time_s=0",
            "train.checkpoint_every=3",
            "train.log_every=1",
            "run.max_failures=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tiny_model_dir, world_dir, tmp_path_factory):
    from clinray.sft.prepare import run_sft

    result = run_sft(_cfg(tmp_path_factory.mktemp("sft"), "clean", tiny_model_dir, world_dir))
    return result, read_metrics(Path(result.run_dir) / "metrics.jsonl")


def test_sft_trains_on_packed_answers_with_balanced_accounting(uninterrupted):
    result, rows = uninterrupted
    assert result.ok, result.problems
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    # loss per mixture source (a step of 4 rows may hold one source only)
    assert any(r["loss_medqa"] is not None for r in rows) and any(r["loss_medmcqa"] is not None for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    acc = result.data["accounting"]
    assert acc["conversations"]["balanced"] and acc["samples"]["balanced"]
    assert acc["conversations"]["read"] == 200 and acc["conversations"]["contaminated"] == 0
    packing = result.data["packing"]
    assert len(packing) == 2 and packing[0]["rows"] > 0 and 0.5 < packing[0]["fill"] <= 1.0
    epochs = sorted(Path(result.data_dir).glob("epoch-*.parquet"))
    assert len(epochs) == 2
    meta = json.loads((Path(result.hf_final) / "clinray_meta.json").read_text())
    assert meta["task"] == "sft" and meta["step"] == NUM_STEPS
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(result.hf_final).config.num_hidden_layers == 4


def test_killed_sft_worker_resumes_mid_epoch_and_matches(
    uninterrupted, ray_local, tiny_model_dir, world_dir, tmp_path
):
    from clinray.sft.prepare import run_sft

    _, clean = uninterrupted
    result = run_sft(_cfg(tmp_path, "killed", tiny_model_dir, world_dir, f"train.fail_at_step={FAIL_AT}"))
    run_dir = Path(result.run_dir)
    assert (run_dir / f".failed_once_at_{FAIL_AT}").exists(), "the worker was never killed"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    assert all(r["resumed_from"] == FAIL_AT for r in rows if r["step"] > FAIL_AT)
    for ours, ref in zip(rows, clean, strict=True):
        for key in ("loss", "loss_medqa", "loss_medmcqa"):
            assert ours[key] == pytest.approx(ref[key], abs=TOLERANCE), (ours["step"], key)


def test_a_copied_test_question_is_dropped_and_counted(ray_local, tiny_model_dir, world_dir, tmp_path):
    from clinray.sft.prepare import prepare_sft_data

    test_row = json.loads((world_dir / "questions" / "medqa" / "test.jsonl").read_text().splitlines()[0])
    leak = tmp_path / "leak.jsonl"
    rows = [{"instruction": test_row["question"], "output": test_row["answer"]}]
    rows += [{"instruction": f"Name drug number {i}.", "output": f"Drug {i}."} for i in range(9)]
    leak.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(
        f"sources:\n  medqa:\n    layout: medqa\n    path: {world_dir / 'questions' / 'medqa' / 'train.jsonl'}\n"
        "    ratio: 90\n"
        f"  web:\n    layout: jsonl\n    path: {leak}\n    ratio: 10\n"
        "    field_map: {prompt: instruction, response: output}\n"
    )
    cfg = _cfg(
        tmp_path,
        "leak",
        tiny_model_dir,
        world_dir,
        f"sft.mixture={mixture}",
        "sft.paths={}",
        "data.sources=[medqa, web]",
    )
    manifest = prepare_sft_data(cfg, tmp_path / "data")
    acc = manifest["accounting"]
    assert acc["conversations"]["contaminated"] == 1 and acc["conversations"]["balanced"]
    rejects = [json.loads(line) for line in Path(acc["rejects"]).read_text().splitlines()]
    hit = [r for r in rejects if r["reason"] == "contaminated"]
    assert len(hit) == 1 and "medqa" in hit[0]["detail"]
    assert prepare_sft_data(cfg, tmp_path / "data")["fingerprint"] == manifest["fingerprint"]  # reused
