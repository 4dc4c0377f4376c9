"""GPU check kit: NCCL, the FSDP2 training step's MFU, the Medprompt ensemble ratio and the scorer's
questions/s, in one process and one JSON, where only torch, transformers and peft are installed.

No Ray, Ray Data, lm-eval, Milvus or pyarrow is imported: the training part drives clinray's own
``build_model`` (FSDP2, bf16 parameters in compute, fp32 reduction, per-layer compile), AdamW, schedule,
``train_step``, loss and FLOPs code (:mod:`clinray.train.step`) through ``torch.distributed`` directly,
over in-memory random token blocks. Parts, in order:

1. ``nccl``: ``init_process_group`` (one rank unless ``torchrun`` says otherwise) and one all-reduce,
   under a watchdog, so a machine where NCCL cannot start fails in seconds, not after a model build.
2. ``train``: a ~1.1B Mistral-shaped model (22 x 2048, GQA 32/4, vocab 32000, random weights), seq_len
   2048, micro-batches 4 and 8, each with the root left to FSDP2's default and resharded (the behaviour
   before issue K); tokens/s, MFU (target >= 0.40 on H100/H200), peak memory, and dynamo's frame and graph
   counts before and after the timed steps (they must not grow: no recompiles in steady state).
   Then (one rank) ``export``: the streamed HF export of the sharded model, every tensor as stored.
3. ``engine``: the Medprompt 5-run ensemble against one run (static 5-shot CoT, 256 new tokens) with
   :class:`clinray.engines.transformers_engine.TransformersEngine` on a model of the same shape with the
   kit's own BPE vocabulary (target ratio <= 2).
4. ``scorer``: questions/s of the prompt-once scorer (:func:`clinray.models.scoring.score_continuations`,
   what the lm-eval model ``clinray`` runs) against scoring each option as its own sequence, same tokens.

GPU: ``PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --out DIR`` (about 5-6 min on one H100/H200;
writes ``benchmarks/results/gpu_check.json`` and ``DIR/gpu_check.json``). ``--cpu-smoke``: the same code
at toy size on CPU over gloo without compile (a test runs it; writes only ``--out``). Parts 3 and 4 live
in ``benchmarks/gpu_check_serving.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # FSDP2 fragmentation
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
HEAVY = ("ray", "lm_eval", "pymilvus", "milvus_lite", "pyarrow")
RESULT: dict = {"benchmark": "gpu_check"}

from benchmarks.gpu_check_serving import corpus, engine_ratio, free, peak_gib, scorer_speed, sync  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq_len: int
    micro_batches: tuple[int, ...]
    warmup: int
    steps: int
    new_tokens: int
    questions: int
    score_questions: int
    tokenizer_vocab: int
    max_positions: int


GPU = Sizes(2048, 22, 32, 4, 5632, 32000, 2048, (4, 8), 6, 20, 256, 2, 64, 4096, 2048)
SMOKE = Sizes(64, 2, 4, 2, 128, 512, 32, (1, 2), 1, 2, 8, 1, 2, 400, 512)


def _mistral_config(sizes: Sizes, *, vocab: int, max_positions: int, **ids):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab,
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=max_positions,
        sliding_window=None,
        tie_word_embeddings=False,
        **ids,
    )


def _save_random_model(config, folder: Path, device, dtype, tokenizer=None) -> Path:
    """Random weights built on ``device`` (fast on a GPU), saved as an HF folder, then freed."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    del model
    free(device)
    return folder


def _watchdog(seconds: float, what: str, out_dirs: list[Path]) -> threading.Timer:
    def fire() -> None:
        RESULT.setdefault("errors", {})["nccl"] = f"{what} did not finish in {seconds:.0f} s"
        _write(out_dirs)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def check_nccl(backend: str, device, out_dirs: list[Path], *, timeout_s: float = 90.0) -> dict:
    """Start the process group (one rank unless torchrun set RANK/WORLD_SIZE) and all-reduce once."""
    import datetime

    import torch
    import torch.distributed as dist

    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    timer = _watchdog(timeout_s, f"{backend} init + all_reduce", out_dirs)
    start = time.perf_counter()
    extra = {}
    if device.type == "cuda":
        extra["device_id"] = device  # eager NCCL communicator: a failure shows here, not at first use
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **extra)
    t = torch.full((1,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(t)
    sync(device)
    timer.cancel()
    world = dist.get_world_size()
    return {
        "backend": backend,
        "world_size": world,
        "init_and_all_reduce_s": round(time.perf_counter() - start, 3),
        "all_reduce_ok": t.item() == world * (world + 1) / 2,
        "nccl_version": str(torch.cuda.nccl.version()) if device.type == "cuda" else None,
    }


def _dynamo_counts() -> dict[str, int]:
    if "torch._dynamo" not in sys.modules:
        return {"frames": 0, "frames_ok": 0, "graphs": 0}
    from torch._dynamo.utils import counters

    return {
        "frames": int(counters["frames"]["total"]),
        "frames_ok": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
    }


def _batches(micro: int, sizes: Sizes, seed: int):
    """Forever ``(DataPosition, batch)`` over a few random CPU blocks, as the Ray Data reader yields."""
    import torch

    from clinray.train.data import DataPosition

    gen = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(4):
        ids = torch.randint(0, sizes.vocab, (micro, sizes.seq_len), generator=gen)
        pool.append({"input_ids": ids, "labels": ids.clone(), "source_id": torch.arange(micro) % 2})
    for i in range(1 << 62):
        yield DataPosition(num_batches=i + 1), pool[i % len(pool)]


def _load_checks(model, model_dir: Path, device) -> dict[str, bool]:
    """The review's load checks: RoPE buffers rebuilt, weights as stored, fp32 shards, compute dtype."""
    import torch
    from safetensors import safe_open

    rotary = model.model.rotary_emb
    fresh = type(rotary)(model.config).inv_freq.to(device)
    name, stored = "model.layers.1.mlp.up_proj.weight", None
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            if name in set(f.keys()):
                stored = f.get_tensor(name).float().to(device)
    param = dict(model.named_parameters())[name]
    checks = {
        "inv_freq_rebuilt": bool(torch.allclose(rotary.inv_freq, fresh)),
        "weights_as_stored": stored is not None and bool(torch.equal(param.full_tensor(), stored)),
        "shards_fp32": all(p.to_local().dtype == torch.float32 for p in model.parameters()),
    }
    eager = getattr(torch.compiler, "set_stance", None)  # no extra no-grad graph to compile
    with torch.no_grad(), eager("force_eager") if eager else contextlib.nullcontext():
        logits = model(input_ids=torch.zeros(1, 8, dtype=torch.long, device=device)).logits
    checks["logits_dtype"] = str(logits.dtype).removeprefix("torch.")
    for module in model.modules():  # a no-grad forward leaves the root and the last layer gathered
        if hasattr(module, "reshard"):
            module.reshard()
    return checks


def train_variant(model_dir: Path, sizes: Sizes, device, *, micro: int, reshard_root, compile_: bool) -> dict:
    """Warm-up (compile) then timed steps of clinray's FSDP2 step; tokens/s per device and MFU."""
    import torch
    import torch.distributed as dist

    from clinray.train.config import FSDPSection, ModelSection, OptimSection, PretrainConfig, TrainSection
    from clinray.train.plan import RunPlan
    from clinray.train.step import SourceLoss, add_flops, build_training, train_step

    if compile_:
        torch._dynamo.reset()
    cfg = PretrainConfig(
        model=ModelSection(path=str(model_dir), compile=compile_),
        fsdp=FSDPSection(param_dtype="bfloat16" if device.type == "cuda" else "float32"),
        optim=OptimSection(max_lr=3e-4),
        train=TrainSection(max_steps=sizes.warmup + sizes.steps, micro_batch_size=micro),
    )
    total = sizes.warmup + sizes.steps
    model, optimizer, scheduler = build_training(
        cfg, total_steps=total, device=device, seq_len=sizes.seq_len, reshard_root=reshard_root
    )
    checks = _load_checks(model, model_dir, device)
    plan = RunPlan(seq_len=sizes.seq_len)
    add_flops(plan, cfg, model, device)
    tracker, batches = SourceLoss(cfg.data.sources, device), _batches(micro, sizes, seed=0)
    step = dict(accum=1, device=device, grad_clip=cfg.optim.grad_clip)
    start = time.perf_counter()
    for _ in range(sizes.warmup):
        train_step(model, optimizer, scheduler, batches, tracker, **step)
    sync(device)
    warm_s, before = time.perf_counter() - start, _dynamo_counts()
    tracker.read()
    start = time.perf_counter()
    for _ in range(sizes.steps):
        train_step(model, optimizer, scheduler, batches, tracker, **step)
    sync(device)
    elapsed, after = time.perf_counter() - start, _dynamo_counts()
    tokens_per_s = sizes.steps * micro * sizes.seq_len / elapsed  # per device: each rank has its batch
    peak = plan.peak_flops_per_device
    out = {
        "micro_batch": micro,
        "root": "resharded" if reshard_root else "FSDP2 default (kept gathered)",
        "compile": compile_,
        "world_size": dist.get_world_size(),
        "warmup_steps": sizes.warmup,
        "warmup_s": round(warm_s, 2),
        "timed_steps": sizes.steps,
        "step_ms": round(1000 * elapsed / sizes.steps, 2),
        "tokens_per_s_per_device": round(tokens_per_s, 1),
        "flops_per_token": plan.flops_per_token,
        "compute_dtype": plan.compute_dtype,
        "peak_flops_per_device": peak,
        "mfu": round(tokens_per_s * plan.flops_per_token / peak, 4) if peak else None,
        "loss": round(tracker.read()["loss"], 4),
        "peak_memory_gib": peak_gib(device),
        "dynamo_before_timed": before,
        "dynamo_after_timed": after,
        "recompiles_stable": before == after,
        "load_checks": checks,
    }
    del model, optimizer, scheduler
    if compile_:
        torch._dynamo.reset()  # drop the compiled code that refers to this model
    free(device)
    return out


def export_check(model_dir: Path, work: Path, device) -> dict:
    """The streamed HF export of the sharded model: every tensor equal to the stored bf16 one."""
    import torch
    from safetensors import safe_open

    from clinray.train.checkpoint import export_hf
    from clinray.train.config import FSDPSection, ModelSection
    from clinray.train.fsdp import build_model

    model = build_model(ModelSection(path=str(model_dir)), FSDPSection(), device=device)
    start = time.perf_counter()
    shard = 2**30 if device.type == "cuda" else 2**16  # several shards either way
    out = export_hf(model, model_path=model_dir, out=work / "export", meta={}, rank=0, max_shard_bytes=shard)
    seconds = time.perf_counter() - start
    stored = {}
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            stored.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open has no __iter__)
    equal, files = True, sorted(out.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), "pt") as f:
            equal &= all(torch.equal(f.get_tensor(k), stored.pop(k).to(torch.bfloat16)) for k in f.keys())  # noqa: SIM118
    del model
    free(device)
    return {"export_s": round(seconds, 2), "num_files": len(files), "tensors_equal": equal and not stored}


def _write(out_dirs: list[Path]) -> None:
    text = json.dumps(RESULT, indent=2, default=str) + "\n"
    for folder in out_dirs:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gpu_check.json").write_text(text)


def _part(name: str, fn, *args, **kwargs):
    """Run one part; an exception is recorded (with its traceback tail) and the next part still runs."""
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the kit reports every part it could not run
        RESULT.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        RESULT.setdefault("tracebacks", {})[name] = traceback.format_exc()[-3000:]
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return None
    finally:
        RESULT.setdefault("part_s", {})[name] = round(time.perf_counter() - start, 1)


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "peft", "safetensors", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def run(args) -> int:
    import torch

    smoke = args.cpu_smoke
    sizes = SMOKE if smoke else GPU
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on a GPU machine, or pass --cpu-smoke")
    out_dirs = [Path(args.out)] if args.out else []
    if not smoke:
        out_dirs.insert(0, RESULTS)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu") if smoke else torch.device("cuda", local_rank)
    if smoke:
        torch.set_num_threads(1)  # robust on a shared 2-core machine (2 spin-waiting threads are not)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch._logging.set_logs(recompiles=True)  # any recompile prints its reason to the log
    started = time.perf_counter()
    RESULT.update(
        mode="cpu-smoke" if smoke else "gpu",
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        versions=_versions(),
        sizes=dataclasses.asdict(sizes),
    )
    RESULT["nccl"] = _part("nccl", check_nccl, "gloo" if smoke else "nccl", device, out_dirs)
    if RESULT["nccl"] is None:  # no process group: nothing else can run
        _write(out_dirs)
        return 1
    rank0 = int(os.environ["RANK"]) == 0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.work) as tmp:
        work = Path(tmp)
        train_dir = work / "train_model"
        if rank0:
            config = _mistral_config(sizes, vocab=sizes.vocab, max_positions=sizes.seq_len)
            _save_random_model(config, train_dir, device, dtype)
        torch.distributed.barrier()
        _train_parts(train_dir, sizes, device, deadline=started + 0.5 * args.budget_s, out_dirs=out_dirs)
        if torch.distributed.get_world_size() == 1:
            RESULT["export"] = _part("export", export_check, train_dir, work, device)
        if rank0:
            _engine_parts(work, sizes, device, dtype)
    RESULT["peak_memory_gib"] = peak_gib(device)
    RESULT["modules_absent"] = {m: m not in sys.modules for m in HEAVY}
    RESULT["total_s"] = round(time.perf_counter() - started, 1)
    if rank0:
        _write(out_dirs)
        print(json.dumps(RESULT, default=str), flush=True)
    torch.distributed.destroy_process_group()
    return 1 if RESULT.get("errors") else 0


def _train_parts(train_dir: Path, sizes: Sizes, device, *, deadline: float, out_dirs: list[Path]) -> None:
    """Every (micro-batch, root resharding) variant that starts before ``deadline``; the JSON after each."""
    import torch.distributed as dist

    RESULT["train"] = []
    for micro, root in [(m, root) for m in sizes.micro_batches for root in (None, True)]:
        name = f"train_m{micro}_{'reshard' if root else 'default'}"
        if time.perf_counter() > deadline:
            RESULT["train"].append({"micro_batch": micro, "reshard_root": root, "skipped": "time budget"})
            continue
        kwargs = dict(micro=micro, reshard_root=root, compile_=device.type == "cuda")
        RESULT["train"].append(_part(name, train_variant, train_dir, sizes, device, **kwargs))
        if dist.get_rank() == 0:
            _write(out_dirs)
    measured = [r for r in RESULT["train"] if r and "mfu" in r]
    if measured and measured[0]["mfu"] is not None:
        RESULT["best_mfu"] = max(r["mfu"] for r in measured)
        RESULT["mfu_target_met"] = RESULT["best_mfu"] >= 0.40
    RESULT["recompiles_stable"] = all(r["recompiles_stable"] for r in measured) if measured else None


def _engine_parts(work: Path, sizes: Sizes, device, dtype) -> None:
    """Build the engine's model (the training shape, the kit's BPE vocabulary), then ensemble and scorer."""
    from clinray.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(
        corpus(3000), vocab_size=sizes.tokenizer_vocab, model_max_length=sizes.max_positions
    )
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = _mistral_config(sizes, vocab=len(tokenizer), max_positions=sizes.max_positions, **ids)
    folder = _part(
        "engine_model", _save_random_model, config, work / "engine_model", device, dtype, tokenizer
    )
    if folder is None:
        return
    got = _part(
        "engine", engine_ratio, folder, device, questions=sizes.questions, new_tokens=sizes.new_tokens
    )
    if got is None:
        return
    RESULT["engine"], engine = got
    RESULT["scorer"] = _part("scorer", scorer_speed, engine, device, num_questions=sizes.score_questions)
    del engine
    free(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU over gloo, no compile")
    p.add_argument("--out", default=None, help="also write gpu_check.json here (--cpu-smoke: only here)")
    p.add_argument("--work", default=None, help="scratch folder for the model folders (default: $TMPDIR)")
    p.add_argument("--budget-s", type=float, default=420.0, help="no new training variant after half of it")
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
