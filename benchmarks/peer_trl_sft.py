"""Peer side of ``benchmarks/sft_step.py``: TRL's ``SFTTrainer`` with packing, run in ``.venv-peer``.

``python benchmarks/peer_trl_sft.py SPEC.json`` reads the model folder, the prompt/completion JSONL,
``max_length``, the batch, the steps and the thread count, trains with ``packing=True`` (TRL's default
``bfd`` strategy, which turns on padding-free batches: one flattened row, ``position_ids``, no mask) and
``completion_only_loss``, and prints one JSON line: non-pad tokens/s after the warm-up steps, counted
from the batches the trainer actually ran.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(spec_path: str) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(
        spec["model"], dtype=torch.float32, attn_implementation="sdpa"
    )
    data = load_dataset("json", data_files=spec["data"], split="train")
    counted: list[int] = []
    stamps: list[float] = []

    class Counting(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            counted.append(int(inputs["input_ids"].numel()))  # padding-free: every token is a real one
            return super().compute_loss(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = SFTConfig(
        output_dir=spec["out"],
        max_length=spec["max_length"],
        packing=True,
        completion_only_loss=True,
        per_device_train_batch_size=spec["rows_per_step"],
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        logging_steps=spec["steps"],
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        dataset_num_proc=1,
    )
    trainer = Counting(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()]
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    warmup = spec["warmup"]
    span = stamps[-1] - stamps[warmup - 1]
    tokens = sum(counted[warmup:])
    packed = trainer.train_dataset
    lengths = [sum(x) for x in packed["seq_lengths"]] if "seq_lengths" in packed.column_names else []
    print(
        json.dumps(
            {
                "tokens_per_s": tokens / span,
                "steps": len(stamps),
                "wall_s": wall,
                "fill": (sum(lengths) / (len(lengths) * spec["max_length"])) if lengths else None,
                "num_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
