"""SFT throughput: clinray's packed SFT (Ray Train + FSDP2) against TRL's ``SFTTrainer`` with packing.

Same tiny Mistral, same conversations, same rows of ``SEQ_LEN`` tokens, 2 rows per step, one process
with one torch thread each (see ``train_step.py`` for why), loss on the answers only. The data is a
paper-like length mix: 55% short multiple-choice-like samples (median ~120 tokens) and 45% long
chat-like ones (median ~420, up to the row length), as Table 3 mixes MedMCQA-style items with Orca and
UltraChat dialogues. Reported, in one run:

- ``ratio``: non-pad tokens/s of ours (best-fit-decreasing packing over the whole dataset) over TRL's
  (``packing=True``: its BFD in windows of 1,000 samples, padding-free rows), steady state (the first
  ``warmup`` steps excluded); target >= 1.0.
- ``packing_gain``: ours packed over ours padded (``sft.packing: none``, one sample per row padded to
  the row length), non-pad tokens/s, steady state; ``fill``: the share of non-pad tokens in our rows
  (target >= 0.99).
- start-up (wall time to the first step, Ray included) separately.

``python benchmarks/sft_step.py --quick`` (< 5 min on 2 cores; the first run also builds ``.venv-peer``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import ROOT, parser, peer_python, write_result  # noqa: E402

SEQ_LEN, ROWS = 1024, 2
LR = 1e-4


def _length_mix(n: int, seed: int = 0) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    short = rng.lognormal(np.log(120), 0.45, n)
    long = rng.lognormal(np.log(420), 0.6, n)
    pick = rng.random(n) < 0.55
    return np.clip(np.where(pick, short, long), 40, SEQ_LEN - 8).astype(int).tolist()


def _data(work: Path, tokenizer_dir: Path, corpus: Path, n: int) -> tuple[Path, Path, dict]:
    """The same conversations as clinray ``chat`` rows and as TRL prompt/completion rows."""
    import numpy as np
    from transformers import AutoTokenizer

    from clinray.models.chat_template import render_messages
    from clinray.models.tiny import iter_corpus_texts

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok(" ".join(t for t in iter_corpus_texts(corpus / "clinical")), add_special_tokens=False)[
        "input_ids"
    ]
    rng = np.random.default_rng(1)
    system = "You are a biomedical expert."
    overhead = len(
        tok(
            render_messages([{"role": "system", "content": system}, {"role": "user", "content": "x"}])
            + "<|assistant|>: x</s>",
            add_special_tokens=False,
        )["input_ids"]
    )

    def text(n: int) -> str:  # about n tokens of corpus text, cut at a token boundary
        start = int(rng.integers(0, len(ids) - n - 1))
        return tok.decode(ids[start : start + n]).strip() or "x"

    ours, peer, lengths = [], [], []
    for i, target in enumerate(_length_mix(n)):
        body = max(8, target - overhead)
        answer_len = max(4, int(body * (0.15 if target < 200 else 0.5)))
        user, assistant = text(body - answer_len), text(answer_len)
        prompt = render_messages([{"role": "system", "content": system}, {"role": "user", "content": user}])
        length = len(
            tok(prompt + "<|assistant|>: " + assistant + "</s>", add_special_tokens=False)["input_ids"]
        )
        if length > SEQ_LEN - 2:  # re-tokenizing at a cut can add a token or two: keep every sample in a row
            continue
        ours.append(
            {"id": f"b{i}", "system": system, "prompter": user, "assistant": assistant, "source": "bench"}
        )
        peer.append({"prompt": prompt + "<|assistant|>:", "completion": " " + assistant})
        lengths.append(length)
    ours_path, peer_path = work / "ours.jsonl", work / "peer.jsonl"
    ours_path.write_text("".join(json.dumps(r) + "\n" for r in ours))
    peer_path.write_text("".join(json.dumps(r) + "\n" for r in peer))
    mix = {
        "samples": len(lengths),
        "median": float(np.median(lengths)),
        "mean": float(np.mean(lengths)),
        "max": int(max(lengths)),
    }
    return ours_path, peer_path, mix


def _ours(model: Path, data: Path, work: Path, *, packing: str, steps: int, warmup: int) -> dict:
    from clinray.config import load
    from clinray.sft.prepare import run_sft
    from clinray.train.config import TrainConfig
    from clinray.train.metrics import read_metrics

    mix = work / f"mix_{packing}.yaml"
    mix.write_text(f"sources:\n  bench:\n    layout: chat\n    path: {data}\n    ratio: 100\n")
    cfg = load(
        TrainConfig,
        None,
        [
            "train.task=sft",
            f"model.path={model}",
            "data.sources=[bench]",
            f"sft.mixture={mix}",
            f"sft.seq_len={SEQ_LEN}",
            f"sft.packing={packing}",
            "sft.epochs=1",
            f"run.storage_path={work / 'runs'}",
            f"run.name=ours_{packing}",
            f"train.global_batch_tokens={ROWS * SEQ_LEN}",
            f"train.micro_batch_size={ROWS}",
            f"train.max_steps={steps}",
            "train.log_every=5",
            "train.checkpoint_every=0",
            "train.save_final=false",
            f"optim.max_lr={LR}",
            "optim.weight_decay=0.0",
            "scaling.num_workers=1",
            "scaling.resources_per_worker={CPU: 1}",
            "run.max_failures=0",
        ],
    )
    start = time.perf_counter()
    result = run_sft(cfg)
    wall = time.perf_counter() - start
    rows = [r for r in read_metrics(Path(result.run_dir) / "metrics.jsonl") if r["step"] >= warmup]
    fill = result.data["packing"][0]["fill"]
    padded = (rows[-1]["tokens_seen"] - rows[0]["tokens_seen"]) / (
        rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
    )
    first = read_metrics(Path(result.run_dir) / "metrics.jsonl")[0]
    return {
        "tokens_per_s": padded * fill,  # non-pad tokens/s: the rows' fill times the row tokens/s
        "row_tokens_per_s": padded,
        "fill": fill,
        "startup_s": wall - rows[-1]["elapsed_s"] + first["elapsed_s"] if first else None,
        "wall_s": wall,
        "rows_per_epoch": result.data["packing"][0]["rows"],
    }


def _peer(model: Path, data: Path, work: Path, *, steps: int, warmup: int) -> dict:
    spec = work / "peer_spec.json"
    spec.write_text(
        json.dumps(
            {
                "model": str(model),
                "data": str(data),
                "out": str(work / "trl"),
                "max_length": SEQ_LEN,
                "rows_per_step": ROWS,
                "steps": steps,
                "warmup": warmup,
                "lr": LR,
                "threads": 1,
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [str(peer_python()), str(ROOT / "benchmarks" / "peer_trl_sft.py"), str(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"TRL peer failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    import ray

    from clinray.models.tiny import build_tiny_model
    from clinray.synthetic import generate_world

    steps, warmup, n = (40, 10, 1500) if args.quick else (120, 10, 4000)
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        work = Path(tmp)
        generate_world(work / "world", seed=0, scale=1.0)
        model = build_tiny_model(work / "world" / "corpus", work / "model")
        ours_data, peer_data, mix = _data(work, model, work / "world" / "corpus", n)
        peer_python()  # build .venv-peer before any timing
        peer = _peer(model, peer_data, work, steps=steps, warmup=warmup)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            packed = _ours(model, ours_data, work, packing="bfd", steps=steps, warmup=warmup)
            padded = _ours(model, ours_data, work, packing="none", steps=steps, warmup=warmup)
        finally:
            ray.shutdown()
        peer_after = _peer(model, peer_data, work, steps=steps, warmup=warmup)  # the machine's load drifts
    trl = (peer["tokens_per_s"] + peer_after["tokens_per_s"]) / 2
    write_result(
        "sft_step",
        {
            "model": "tiny Mistral 4x128",
            "seq_len": SEQ_LEN,
            "rows_per_step": ROWS,
            "steps": steps,
            "warmup_steps_excluded": warmup,
            "samples": n,
            "length_mix_tokens": mix,
            "tokens_per_s_ours_packed": round(packed["tokens_per_s"], 1),
            "tokens_per_s_trl_packed": round(trl, 1),
            "tokens_per_s_trl_before_after": [
                round(peer["tokens_per_s"], 1),
                round(peer_after["tokens_per_s"], 1),
            ],
            "ratio": round(packed["tokens_per_s"] / trl, 3),
            "tokens_per_s_ours_padded": round(padded["tokens_per_s"], 1),
            "packing_gain": round(packed["tokens_per_s"] / padded["tokens_per_s"], 3),
            "fill": round(packed["fill"], 4),
            "fill_trl": round(peer["fill"], 4) if peer.get("fill") else None,
            "fill_padded": round(padded["fill"], 4),
            "ours_startup_s": round(packed["startup_s"], 1) if packed["startup_s"] else None,
            "trl_wall_s": round(peer["wall_s"], 1),
            "steady_state": "ratio, packing_gain: tokens/s after the warm-up steps; start-up reported apart",
            "peer": "trl.SFTTrainer(packing=True) 1.16.0",
        },
    )


if __name__ == "__main__":
    main()
