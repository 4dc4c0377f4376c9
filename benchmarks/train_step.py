"""Training throughput: clinray's Ray Train + FSDP2 loop against the transformers ``Trainer``.

CPU (default): the tiny Mistral of the tiny world, the same token blocks, the same batch (8 blocks of
128 tokens per step), the same AdamW and schedule, one process with ``--threads`` torch threads each
(default 1: on an oversubscribed 2-core machine, 2 OpenMP threads per process spin-wait into 20x
slowdowns, which would measure the machine rather than the loops); tokens/s is taken
over the steps after the first ``--warmup`` ones (``ratio`` = ours / Trainer; target >= 1). Ours runs as
it is deployed: a 1-worker Ray Train run with FSDP2 and per-source loss accounting.

GPU (``--gpu``): MFU of a ~1.1B-parameter Mistral-shaped model (22 layers x 2048, GQA 32/4, vocab
32000; random weights) in bf16 with FSDP2 on one GPU, torch.compile per layer, seq_len 2048; target
>= 40% (torchtitan reports ~39% on Llama 3 8B with compile). MFU convention: ``clinray/train/metrics.py``.

``python benchmarks/train_step.py --quick`` (CPU, < 3 min) | ``python benchmarks/train_step.py --gpu``
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

from benchmarks.common import parser, write_result  # noqa: E402

SEQ_LEN, MICRO = 128, 8


def _tiny_setup(work: Path) -> tuple[Path, Path]:
    from clinray.models.tiny import build_tiny_model
    from clinray.synthetic import generate_world
    from clinray.train.data import blocks_from_corpus

    generate_world(work / "world", seed=0, scale=1.0)
    model = build_tiny_model(work / "world" / "corpus", work / "model")
    blocks_from_corpus(work / "world" / "corpus", model, work / "blocks", seq_len=SEQ_LEN)
    return model, work / "blocks"


def _ours(
    model: Path,
    blocks: Path,
    storage: Path,
    *,
    steps: int,
    warmup: int,
    workers_cpu: int,
    extra: list[str] = (),
) -> dict:
    from clinray.config import load
    from clinray.train.config import PretrainConfig
    from clinray.train.metrics import read_metrics
    from clinray.train.trainer import run_pretrain

    cfg = load(
        PretrainConfig,
        None,
        [
            f"model.path={model}",
            f"data.path={blocks}",
            f"run.storage_path={storage}",
            "run.name=ours",
            f"train.global_batch_tokens={MICRO * SEQ_LEN}",
            f"train.micro_batch_size={MICRO}",
            f"train.max_steps={steps}",
            "train.log_every=5",
            "train.checkpoint_every=0",
            "optim.max_lr=1e-3",
            "train.save_final=false",
            "scaling.num_workers=1",
            f"scaling.resources_per_worker={{CPU: {workers_cpu}}}",
            "run.max_failures=0",
            *extra,
        ],
    )
    start = time.perf_counter()
    summary = run_pretrain(cfg)
    wall = time.perf_counter() - start
    rows = [r for r in read_metrics(Path(summary.run_dir) / "metrics.jsonl") if r["step"] >= warmup]
    # wall clock between the first report after warm-up and the last one: reporting (every 5 steps),
    # data loading and the per-source all-reduce included, as in the Trainer's step-to-step clock
    tokens = rows[-1]["tokens_seen"] - rows[0]["tokens_seen"]
    mfus = [r["mfu"] for r in rows[1:] if r.get("mfu")]
    return {
        "tokens_per_s": tokens / (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]),
        "wall_s_incl_startup": wall,
        "final_loss": rows[-1]["loss"],
        "num_threads": rows[-1].get("num_threads"),
        "mfu": statistics.median(mfus) if mfus else None,
        "rows": rows,
    }


def _trainer(model_path: Path, blocks: Path, out: Path, *, steps: int, warmup: int) -> dict:
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    table = pq.read_table(next(blocks.glob("*.parquet")), columns=["input_ids"])
    ids = torch.tensor(table.column("input_ids").to_pylist(), dtype=torch.long)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=MICRO,
        max_steps=steps,
        learning_rate=1e-3,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.1,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 100),
        logging_steps=steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[Clock()])
    result = trainer.train()
    span = times[-1] - times[warmup - 1]
    return {
        "tokens_per_s": (len(times) - warmup) * MICRO * SEQ_LEN / span,
        "final_loss": result.training_loss,
        "num_threads": torch.get_num_threads(),
    }


def run_cpu(quick: bool, *, threads: int) -> dict:
    import ray
    import torch

    torch.set_num_threads(threads)  # the Trainer's process; Ray gives our worker OMP_NUM_THREADS = its CPUs

    steps, warmup = (30, 10) if quick else (150, 10)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        model, blocks = _tiny_setup(work)
        # Trainer before and after ours, averaged: this machine's load drifts during a run
        before = _trainer(model, blocks, work / "hf_trainer", steps=steps, warmup=warmup)
        ray.init(address="local", num_cpus=max(2, threads), include_dashboard=False, log_to_driver=False)
        try:
            ours = _ours(model, blocks, work / "runs", steps=steps, warmup=warmup, workers_cpu=threads)
        finally:
            ray.shutdown()
        after = _trainer(model, blocks, work / "hf_trainer2", steps=steps, warmup=warmup)
    ours.pop("rows")
    peer = {
        "tokens_per_s": (before["tokens_per_s"] + after["tokens_per_s"]) / 2,
        "num_threads": after["num_threads"],
    }
    return {
        "mode": "cpu",
        "model": "tiny Mistral 4x128",
        "seq_len": SEQ_LEN,
        "micro_batch": MICRO,
        "steps": steps,
        "warmup_steps_excluded": warmup,
        "tokens_per_s_ours": round(ours["tokens_per_s"], 1),
        "tokens_per_s_trainer": round(peer["tokens_per_s"], 1),
        "tokens_per_s_trainer_before_after": [
            round(before["tokens_per_s"], 1),
            round(after["tokens_per_s"], 1),
        ],
        "ratio": round(ours["tokens_per_s"] / peer["tokens_per_s"], 3),
        "threads_ours": ours["num_threads"],
        "threads_trainer": peer["num_threads"],
        "ours_wall_s_incl_ray_startup": round(ours["wall_s_incl_startup"], 1),
        "peer": "transformers.Trainer",
    }


def _gpu_setup(work: Path, *, num_blocks: int, seq_len: int) -> tuple[Path, Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=seq_len,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    with torch.device("cpu"):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(work / "model")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 32000, size=(num_blocks, seq_len), dtype=np.int32)
    sources = np.where(rng.random(num_blocks) < 0.77, "clinical", "general")
    (work / "blocks").mkdir()
    table = pa.table({"input_ids": pa.array(list(ids), type=pa.list_(pa.int32())), "source": sources})
    pq.write_table(table, work / "blocks" / "part-00000.parquet")
    manifest = {
        "seq_len": seq_len,
        "tokenizer": None,
        "num_blocks": num_blocks,
        "producer": "benchmarks/train_step.py",
    }
    (work / "blocks" / "manifest.json").write_text(json.dumps(manifest))
    return work / "model", work / "blocks"


def run_gpu(quick: bool, *, compile_: bool, micro: int, seq_len: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA build of torch and a visible GPU")
    try:  # this is the Ray Train path; benchmarks/gpu_check.py measures the same step without Ray
        import ray
    except ImportError:
        raise SystemExit(
            "--gpu runs the Ray Train loop and Ray is not installed: run benchmarks/gpu_check.py "
            "(the same FSDP2 step and MFU through torch.distributed alone)"
        ) from None
    global MICRO, SEQ_LEN
    MICRO, SEQ_LEN = micro, seq_len
    steps, warmup = (30, 10) if quick else (60, 20)
    with tempfile.TemporaryDirectory(prefix="bench_train_gpu_") as tmp:
        work = Path(tmp)
        model, blocks = _gpu_setup(work, num_blocks=micro * (steps + 4), seq_len=seq_len)
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
        try:
            ours = _ours(
                model,
                blocks,
                work / "runs",
                steps=steps,
                warmup=warmup,
                workers_cpu=8,
                extra=[
                    "scaling.use_gpu=true",
                    "scaling.resources_per_worker={CPU: 8, GPU: 1}",
                    "fsdp.param_dtype=bfloat16",
                    f"model.compile={str(compile_).lower()}",
                    "data.shuffle_buffer_blocks=0",
                ],
            )
        finally:
            ray.shutdown()
    rows = ours.pop("rows")
    return {
        "mode": "gpu",
        "device": torch.cuda.get_device_name(0),
        "model": "Mistral-shaped 22x2048 (1.1B)",
        "seq_len": seq_len,
        "micro_batch": micro,
        "steps": steps,
        "compile": compile_,
        "warmup_steps_excluded": warmup,
        "tokens_per_s_ours": round(ours["tokens_per_s"], 1),
        "mfu": round(ours["mfu"], 4) if ours["mfu"] else None,
        "target_mfu": 0.40,
        "mfu_per_interval": [round(r["mfu"], 4) for r in rows if r.get("mfu")],
        "final_loss": ours["final_loss"],
    }


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="measure MFU of a ~1B Mistral-shaped model on one GPU")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU: torch threads of each side (1 is robust on a shared 2-core machine)",
    )
    p.add_argument("--no-compile", action="store_true", help="--gpu without torch.compile")
    p.add_argument("--micro-batch", type=int, default=4, help="--gpu: blocks per forward")
    p.add_argument("--seq-len", type=int, default=2048, help="--gpu: tokens per block")
    args = p.parse_args()
    if args.gpu:
        result = run_gpu(
            args.quick, compile_=not args.no_compile, micro=args.micro_batch, seq_len=args.seq_len
        )
        write_result("train_step_gpu", result)
    else:
        write_result("train_step", run_cpu(args.quick, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
