"""``clinray sft`` on Ray Train V2 (2 workers, FSDP2 over gloo): the data stage, packing, NEFTune and the
loop in SFT mode (full parameters). A LoRA + NEFTune run (``tiny/sft_lora``, 4 steps) checkpoints its
adapters alone, exports merged weights and the peft adapter with the same logits, and a worker killed
mid-run resumes it to the same losses and the same adapter weights: the resumed run must also redraw
the same NEFTune noise (seeded per rank and micro-batch). A full-parameter run's resume is the
pretraining tests' (the same loop and checkpoint code).

Each step is 2 workers x 2 rows x 256 tokens = 1,024 tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clinray.config import load
from clinray.train.config import TrainConfig
from clinray.train.metrics import read_metrics

NUM_STEPS = 6
TOLERANCE = 1e-4


def _cfg(
    storage: Path, name: str, model: Path, world: Path, *extra: str, recipe: str = "tiny/sft_neftune"
) -> TrainConfig:
    questions = world / "questions"
    return load(
        TrainConfig,
        recipe,
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


# --- LoRA through the loop: adapter-only checkpoints, the merged + adapter export, a killed worker ----
LORA_STEPS, LORA_FAIL_AT = 4, 2
LORA = (
    f"train.max_steps={LORA_STEPS}",
    "train.checkpoint_every=2",
    "lora.r=4",
    "lora.alpha=8",
    "lora.dropout=0.0",  # LoRA dropout draws from torch's global RNG, which a resume does not restore
    "neftune.alpha=5",  # the resumed run must also redraw the same noise (seeded per rank and micro-batch)
)


def _lora_cfg(storage: Path, name: str, model: Path, world: Path, *extra: str) -> TrainConfig:
    return _cfg(storage, name, model, world, *LORA, *extra, recipe="tiny/sft_lora")


def _reuse_packed_rows(source_run: Path, cfg: TrainConfig) -> None:
    """Copy an earlier run's packed rows into ``cfg``'s run when they are what it would pack (same
    fingerprint), as a resumed run reuses its own: the data stage is tested above, not here."""
    from clinray.sft.prepare import MANIFEST, _fingerprint, load_mixture
    from clinray.train.trainer import run_folders

    manifest = json.loads((source_run / "sft_data" / MANIFEST).read_text())
    if manifest["fingerprint"] == _fingerprint(cfg, load_mixture(cfg)):
        shutil.copytree(source_run / "sft_data", run_folders(cfg)[0] / "sft_data")


@pytest.fixture(scope="module")
def lora_run(uninterrupted, ray_local, tiny_model_dir, world_dir, tmp_path_factory):
    from clinray.sft.prepare import run_sft

    cfg = _lora_cfg(tmp_path_factory.mktemp("sft_lora"), "lora", tiny_model_dir, world_dir)
    _reuse_packed_rows(Path(uninterrupted[0].run_dir), cfg)
    result = run_sft(cfg)
    return result, read_metrics(Path(result.run_dir) / "metrics.jsonl")


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_lora_run_exports_merged_weights_and_adapter_with_equal_logits(lora_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import AutoModelForCausalLM

    result, rows = lora_run
    assert result.ok, result.problems
    assert [r["step"] for r in rows] == list(range(1, LORA_STEPS + 1))
    final = Path(result.hf_final)
    meta = json.loads((final / "clinray_meta.json").read_text())
    assert meta["step"] == LORA_STEPS and meta["format"] == "merged" and meta["adapter"] == "adapter"
    gate = meta["merge_gate"]
    assert gate["dtype"] == "float32" and gate["passed"] and gate["max_abs_logit_diff"] <= 1e-5
    assert meta["export_dtype"] == "float32"
    ids = torch.randint(4, 4000, (2, 24), generator=torch.Generator().manual_seed(0))

    def fresh():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    merged = _logits(AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32), ids)
    adapter = _logits(PeftModel.from_pretrained(fresh(), final / "adapter"), ids)
    assert float((merged - adapter).abs().max()) <= 1e-5
    assert float((adapter - _logits(fresh(), ids)).abs().max()) > 1e-3  # the adapter trained
    # the checkpoint holds the adapters and their AdamW state, not the frozen base
    keys = list(FileSystemReader(result.checkpoint).read_metadata().state_dict_metadata)
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys), model_keys[:3]
    assert any(k.startswith("optim.state.") and ".lora_A." in k for k in keys)


def test_killed_lora_worker_resumes_to_identical_adapter_weights(
    lora_run, ray_local, tiny_model_dir, world_dir, tmp_path
):
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from clinray.sft.prepare import run_sft

    clean, clean_rows = lora_run
    killed = _lora_cfg(
        tmp_path,
        "lora_killed",
        tiny_model_dir,
        world_dir,
        f"train.fail_at_step={LORA_FAIL_AT}",
        "train.save_final=false",  # the step-4 checkpoint is compared, not an export
    )
    _reuse_packed_rows(Path(clean.run_dir), killed)
    result = run_sft(killed)
    run_dir = Path(result.run_dir)
    assert result.ok and (run_dir / f".failed_once_at_{LORA_FAIL_AT}").exists(), "the worker was never killed"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert all(r["resumed_from"] == LORA_FAIL_AT for r in rows if r["step"] > LORA_FAIL_AT)
    for ours, ref in zip(rows, clean_rows, strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], abs=TOLERANCE), ours["step"]
    # both runs' step-4 checkpoints, gathered offline: the same adapters and the same AdamW moments
    name = f"checkpoint_{LORA_STEPS:07d}"
    dcp_to_torch_save(run_dir / name, tmp_path / "ours.pt")
    dcp_to_torch_save(Path(clean.run_dir) / name, tmp_path / "ref.pt")
    ours, ref = torch.load(tmp_path / "ours.pt"), torch.load(tmp_path / "ref.pt")
    assert sorted(ours["model"]) == sorted(ref["model"]) and len(ref["model"]) == 2 * 7 * 4  # A, B x 7 x 4
    worst = max(float((ours["model"][k] - ref["model"][k]).abs().max()) for k in ref["model"])
    assert worst <= 1e-6, worst
    moments = list(ref["optim"]["state"].items())
    assert len(moments) == len(ref["model"])
    for key, state in moments:
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(ours["optim"]["state"][key][m], state[m], atol=1e-7, rtol=0), (key, m)
