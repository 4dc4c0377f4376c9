"""LoRA under FSDP2 and the two-step clinical PEFT recipe, on toy models small enough for 2 CPU cores.

1. A trained LoRA adapter merges into HF weights whose logits equal the unmerged model's within 1e-5
   (fp32), and the exported adapter folder reloads through peft to the same logits.
2. Step 2 of the recipe: after one optimizer step the frozen clinical adapter has no gradient and is
   unchanged, while the task adapter received gradients and moved (the bug of the reference code is
   that only the head trains).
3. The MIMIC-style CSV loader counts a corrupt row with its reason and keeps the good ones.
4. Two gloo ranks (``torch.multiprocessing``, no Ray) train LoRA under FSDP2, checkpoint the adapter
   through DCP, and a fresh 2-rank model resumes to identical adapter weights.
5. A config with LoRA on loads from the shipped YAML recipe.
6. The step-2 pair (clinical + task adapter, different ranks, scalings and target modules) concatenates
   into one adapter of rank r1 + r2 with the same logits within 1e-5 (fp32); what a concatenation cannot
   represent exactly (DoRA) is refused.
7. The loop's export of a LoRA run writes the adapter alone, or merged weights whose metadata gives the
   merge's dtype (fp32), its gate and, for bf16 weights on disk, their measured drift.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

VOCAB = 320


def _tiny(folder: Path, *, layers: int = 2, hidden: int = 32) -> Path:
    from clinray.models.tiny import TinyModelConfig, build_model

    cfg = TinyModelConfig(
        num_layers=layers, hidden_size=hidden, num_heads=4, num_kv_heads=2, intermediate_size=48
    )
    build_model(cfg, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=3).save_pretrained(folder)
    return folder


def _cfg(model_dir: Path, **lora):
    from clinray.train.config import ModelSection, OptimSection, TrainConfig, TrainSection
    from clinray.train.lora import LoRASection

    return TrainConfig(
        model=ModelSection(path=str(model_dir)),
        optim=OptimSection(max_lr=5e-2, warmup_fraction=0.0, weight_decay=0.0),
        train=TrainSection(max_steps=4),
        lora=LoRASection(**{"r": 4, "alpha": 8.0, **lora}),
    )


def _batch(seed: int) -> dict:
    from clinray.train.data import DataPosition

    ids = torch.randint(4, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))
    return DataPosition(), {"input_ids": ids, "labels": ids, "source_id": torch.zeros(2, dtype=torch.long)}


def _train(model, optimizer, scheduler, steps: int, *, seed: int) -> None:
    from clinray.train.step import SourceLoss, train_step

    tracker = SourceLoss(["clinical"], torch.device("cpu"))
    batches = iter([_batch(seed + k) for k in range(steps)])
    for _ in range(steps):
        train_step(
            model, optimizer, scheduler, batches, tracker, accum=1, device=torch.device("cpu"), grad_clip=1.0
        )


def _init_pg(rank: int, world: int, tmp: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'store'}", rank=rank, world_size=world)


def _adapter_values(model) -> dict[str, torch.Tensor]:
    from clinray.train.lora import gather_adapter

    return gather_adapter(model, rank=0)


def _ranks_worker(rank: int, world: int, tmp: Path) -> None:
    import torch.distributed as dist

    from clinray.train.lora import export_merged, load_adapter, save_adapter
    from clinray.train.step import build_converters, build_training

    _init_pg(rank, world, tmp)
    cfg = _cfg(tmp / "base", target_modules="all-linear")
    converters, _ = build_converters(cfg, rank=rank)
    model, optimizer, scheduler = build_training(
        cfg, total_steps=4, device=torch.device("cpu"), converters=converters
    )
    report: dict = {
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "optimizer_params": sum(len(g["params"]) for g in optimizer.param_groups),
        "local_numel": {n: p.to_local().numel() for n, p in model.named_parameters() if p.requires_grad},
    }
    _train(model, optimizer, scheduler, 2, seed=10 * rank)
    save_adapter(model, tmp / "adapter_ckpt", optimizer=optimizer, state={"step": 2}, rank=rank)
    saved = _adapter_values(model)
    _train(model, optimizer, scheduler, 1, seed=100 + rank)  # move past the checkpoint
    moved = _adapter_values(model)

    converters, _ = build_converters(cfg, rank=rank)
    fresh, fresh_opt, _ = build_training(
        cfg, total_steps=4, device=torch.device("cpu"), converters=converters
    )
    initial = _adapter_values(fresh)
    state = load_adapter(fresh, tmp / "adapter_ckpt", optimizer=fresh_opt)
    resumed = _adapter_values(fresh)
    out = export_merged(
        fresh, model_path=tmp / "base", section=cfg.lora, out=tmp / "merged", meta={}, rank=rank
    )
    if rank == 0:
        report.update(
            state=state,
            resumed_equal=all(torch.equal(saved[k], resumed[k]) for k in saved),
            num_adapter=len(saved),
            moved_after_save=any(not torch.equal(saved[k], moved[k]) for k in saved),
            initial_differs=any(not torch.equal(saved[k], initial[k]) for k in saved if ".lora_B." in k),
            b_nonzero=all(bool(saved[k].abs().sum() > 0) for k in saved if ".lora_B." in k),
            merged_meta=json.loads((Path(out) / "clinray_meta.json").read_text()),
        )
        (tmp / "report.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_fsdp2_lora_adapter_checkpoint_resumes_identically(tmp_path):
    _tiny(tmp_path / "base")
    torch.multiprocessing.spawn(_ranks_worker, args=(2, tmp_path), nprocs=2, join=True)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["trainable"] and all(".lora_" in n for n in report["trainable"])
    assert report["optimizer_params"] == len(report["trainable"])  # AdamW holds the adapters only
    assert report["num_adapter"] == len(report["trainable"])
    assert report["b_nonzero"]  # lora_B left zero-init: training reached every adapter
    assert report["moved_after_save"] and report["initial_differs"]
    assert report["resumed_equal"]  # every rank's slice restored, not rank 0's alone
    assert report["state"] == {"step": 2}
    gate = report["merged_meta"]["merge_gate"]
    assert gate["passed"] and gate["max_abs_logit_diff"] <= 1e-5 and gate["dtype"] == "float32"


def _peft_lm(base: Path, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(
        lm, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    for name, param in model.named_parameters():  # a trained adapter: lora_B no longer zero
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def test_lora_merge_and_reload_logits_equal_unmerged(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from clinray.train.lora import merge_gate

    base = _tiny(tmp_path / "base")
    model = _peft_lm(base)
    ids = torch.randint(4, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(input_ids=ids).logits
    assert (unmerged - plain).abs().max() > 1e-3  # the adapter changes the function
    model.save_pretrained(tmp_path / "adapter")
    merged, report = merge_gate(model)
    assert report["passed"] and report["dtype"] == "float32"
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)(
            input_ids=ids
        ).logits
        again = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path / "adapter"
        )(input_ids=ids).logits
    assert float((reloaded - unmerged).abs().max()) <= 1e-5
    assert float((again - unmerged).abs().max()) <= 1e-6


def test_lora_export_modes_write_what_they_say(tmp_path):
    """``lora.export: adapter`` writes the peft folder alone; a bf16 merge records its drift beside the gate."""
    from transformers import AutoModelForCausalLM

    from clinray.train.lora import LoRAConverter, LoRASection, export_lora

    base = _tiny(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    section = LoRASection(r=4, alpha=8.0, export="adapter")
    LoRAConverter(section)(model)  # the loop's injection, without FSDP (one process)
    for name, param in model.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    meta = {"step": 3, "task": "sft"}
    out = export_lora(model, model_path=base, section=section, out=tmp_path / "a", meta=meta)
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    assert json.loads((out / "clinray_meta.json").read_text())["format"] == "peft_adapter"
    section = LoRASection(r=4, alpha=8.0, export="merged", merged_dtype="bfloat16")
    out = export_lora(model, model_path=base, section=section, out=tmp_path / "m", meta=meta)
    top = json.loads((out / "clinray_meta.json").read_text())
    assert not (out / "adapter").exists() and top["step"] == 3 and top["export_dtype"] == "bfloat16"
    gate = top["merge_gate"]
    assert gate["dtype"] == "float32" and gate["passed"]  # the merge itself is fp32, and exact
    assert gate["export_max_abs_logit_diff"] > gate["max_abs_logit_diff"]  # bf16 weights drift
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="lora.export"):
        LoRASection(r=4, export="gguf")


def test_merge_gate_refuses_a_drifting_merge(tmp_path):
    from clinray.train.lora import merge_gate

    model = _peft_lm(_tiny(tmp_path / "base"))
    _, report = merge_gate(model, tolerance=0.0)  # fp32 merging rounds: exactly 0 is not reachable
    assert report["max_abs_logit_diff"] > 0 and not report["passed"]


def test_step2_clinical_adapter_frozen_task_adapter_trains(tmp_path):
    from clinray.peft_clinical.recipe import stacked_classifier

    base = _tiny(tmp_path / "base")
    clinical = _peft_lm(base)
    clinical.save_pretrained(tmp_path / "clinical")
    model = stacked_classifier(str(base), num_labels=3, clinical_dir=tmp_path / "clinical", task_r=4, seed=0)
    assert sorted(model.base_model.active_adapters) == ["clinical", "task"]
    params = dict(model.named_parameters())
    clinical_names = [n for n in params if ".clinical." in n]
    task_names = [n for n in params if ".task." in n and ".lora_" in n]
    assert clinical_names and task_names
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(4, VOCAB, (4, 10), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    for name in clinical_names:
        assert params[name].grad is None and not params[name].requires_grad, name
    for name in task_names:
        assert params[name].grad is not None, name
    b_names = [n for n in task_names if ".lora_B." in n]
    assert all(params[n].grad.abs().sum() > 0 for n in b_names)
    optimizer.step()
    for name in clinical_names:
        assert torch.equal(params[name], before[name]), name
    assert all(not torch.equal(params[n], before[n]) for n in b_names)
    head = [n for n in params if "score" in n and params[n].requires_grad]
    assert head and all(not torch.equal(params[n], before[n]) for n in head)


def test_stacked_pair_concatenates_into_one_exact_adapter(tmp_path):
    """Ranks 4 + 2, scalings 2 and 8, all-linear vs [q_proj, v_proj]: one rank-6 adapter, same logits."""
    from safetensors.torch import load_file

    from clinray.peft_clinical.recipe import export_stacked, stacked_classifier

    base = _tiny(tmp_path / "base")
    _peft_lm(base).save_pretrained(tmp_path / "clinical")  # r 4, alpha 8, all-linear
    model = stacked_classifier(
        str(base),
        num_labels=3,
        clinical_dir=tmp_path / "clinical",
        task_r=2,
        task_alpha=16.0,
        target_modules=["q_proj", "v_proj"],
        seed=0,
    )
    gen = torch.Generator().manual_seed(3)
    for name, param in model.named_parameters():  # a trained task adapter and head
        if (".task." in name and "lora_B" in name) or "score" in name:
            torch.nn.init.normal_(param, std=0.05, generator=gen)
    ids = torch.randint(4, VOCAB, (3, 12), generator=torch.Generator().manual_seed(4))
    report = export_stacked(model, str(base), tmp_path / "export", num_labels=3, input_ids=ids)
    assert report["passed"] and report["max_abs_logit_diff"] <= 1e-5 and report["concat_rank"] == 6
    config = json.loads((Path(report["concat"]) / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 6 and not config["use_rslora"]
    tensors = load_file(Path(report["concat"]) / "adapter_model.safetensors")
    k_b = next(v for k, v in tensors.items() if ".k_proj.lora_B" in k)  # the task adapter has no k_proj
    assert k_b.shape[1] == 6 and torch.all(k_b[:, 4:] == 0) and k_b[:, :4].abs().sum() > 0
    with torch.no_grad():  # and the task adapter matters: without it the logits differ
        model.base_model.set_adapter(["clinical"])
        clinical_only = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        model.base_model.set_adapter(["clinical", "task"])
        both = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert float((both - clinical_only).abs().max()) > 1e-3


def test_concat_refuses_adapters_it_cannot_sum_exactly(tmp_path):
    from clinray.train.lora import concat_adapters

    base = _tiny(tmp_path / "base")
    _peft_lm(base).save_pretrained(tmp_path / "a")
    _peft_lm(base, seed=1).save_pretrained(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        concat_adapters([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    with pytest.raises(ValueError, match="not a peft adapter folder"):
        concat_adapters([tmp_path / "a", tmp_path / "missing"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mimic_csv_loader_counts_a_corrupt_row(tmp_path):
    from clinray.peft_clinical.data import load_notes_csv

    path = tmp_path / "notes.csv"
    path.write_text(
        "id,text,sepsis,stroke\n"
        '1,"Fever, hypotension.",1,0\n'
        "2,Left weakness,0,1\n"
        "3,,0,0\n"  # empty note
        "4,Headache,maybe,0\n"  # not a 0/1 label
        "5,Too,many,1,0\n"  # an extra field
        "6,Normal exam,0,0\n"
    )
    notes = load_notes_csv(path, id_column="id")
    assert notes.label_names == ["sepsis", "stroke"]
    assert notes.ids == ["1", "2", "6"]
    assert notes.texts[0] == "Fever, hypotension."
    assert notes.labels == [[1, 0], [0, 1], [0, 0]]
    assert notes.bad_rows == {"empty_text": 1, "bad_label_value": 1, "wrong_field_count": 1}
    texts = load_notes_csv(path, label_columns=[], require_labels=False)  # step 1's clinical text
    assert len(texts) == 4 and texts.bad_rows == {"empty_text": 1, "wrong_field_count": 1}
    with pytest.raises(ValueError, match="text column 'note'"):
        load_notes_csv(path, text_column="note")
    with pytest.raises(ValueError, match="no such file"):
        load_notes_csv(tmp_path / "missing.csv")


def test_mimic_csv_loader_reads_a_code_list_column(tmp_path):
    from clinray.peft_clinical.data import load_notes_csv

    path = tmp_path / "diagnoses.csv"
    path.write_text('id,text,short_codes\n1,a,"401,428"\n2,b,428\n3,c,\n')
    notes = load_notes_csv(path, id_column="id", codes_column="short_codes")
    assert notes.label_names == ["401", "428"]
    assert notes.labels == [[1, 1], [0, 1], [0, 0]]


def test_synthetic_task_is_deterministic_and_follows_the_facts(world_dir):
    from clinray.peft_clinical.data import synthetic_outcome_task

    a = synthetic_outcome_task(world_dir, num_labels=4, num_train=20, num_test=10, seed=3)
    b = synthetic_outcome_task(world_dir, num_labels=4, num_train=20, num_test=10, seed=3)
    assert a.train.texts == b.train.texts and a.test.labels == b.test.labels
    facts = {f["condition"]: f for f in map(json.loads, (world_dir / "kb" / "facts.jsonl").open())}
    for text, row in zip(a.train.texts, a.train.labels, strict=True):
        for name, on in zip(a.train.label_names, row, strict=True):
            cues = [facts[name][k].lower() for k in ("drug", "test", "finding")]
            assert any(c in text.lower() for c in cues) == bool(on), (name, text)
    assert any(map(any, a.train.labels)) and not all(map(all, a.train.labels))


def test_lora_config_loads_from_yaml():
    from clinray.config import load
    from clinray.recipes import resolve_recipe
    from clinray.train.config import TrainConfig

    cfg = load(TrainConfig, resolve_recipe("tiny/sft_lora"), ["lora.target_modules=[q_proj, v_proj]"])
    assert cfg.lora.enabled and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert load(TrainConfig, resolve_recipe("tiny/sft")).lora.enabled is False
    with pytest.raises(ValueError, match="all-linear"):
        load(TrainConfig, resolve_recipe("tiny/sft_lora"), ["lora.target_modules=everything"])
