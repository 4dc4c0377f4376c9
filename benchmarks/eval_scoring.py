"""Questions/s of clinray's prompt-once scorer against lm-eval's ``hf`` model, same model, same task.

Both score the same lm-eval requests (the tiny world's 5-option MedQA questions, full-answer
likelihood, built once by lm-eval from clinray's task YAML) in the same process, alternating, best of
``--repeats``; the log-likelihoods are compared too, so a speed-up that changed the numbers would show.
The model is a random Mistral built from config (``--quick``: the demo's 1M-parameter model; full: a
~10M-parameter one, where the prompt's compute dominates as it does for a 7B model). Target: ``ratio``
(clinray questions/s over hf questions/s) >= 2.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import machine, parser, write_result  # noqa: E402


def _questions(root: Path, num_questions: int) -> Path:
    """The tiny world's questions when the generator is available, else invented ones (same layout)."""
    try:
        from clinray.synthetic import generate_world

        generate_world(root / "world", seed=0, scale=1.0)
        return root / "world" / "questions"
    except ImportError:
        from clinray.eval.fixtures import write_sample_questions

        return write_sample_questions(root / "questions", num_questions=num_questions)


def _model(root: Path, questions: Path, *, quick: bool) -> Path:
    from clinray.models.tiny import TinyModelConfig, build_tiny_model

    shape = {} if quick else {"hidden_size": 384, "num_layers": 6, "num_heads": 6, "intermediate_size": 1024}
    corpus = questions.parent / "corpus"  # the world's corpus, as the demo's tokenizer; else the questions
    return build_tiny_model(
        corpus if corpus.is_dir() else questions, root / "model", TinyModelConfig(**shape)
    )


def _requests(questions: Path, task: str, limit: int):
    from lm_eval.tasks import TaskManager

    from clinray.eval.harness import TASKS_DIR

    manager = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(questions)}
    )
    (loaded,) = manager.load([task])["tasks"].values()
    loaded.build_all_requests(rank=0, world_size=1, limit=limit)
    return loaded.instances


def _time(lm, requests) -> tuple[float, float, list]:
    """Wall and CPU seconds of scoring ``requests`` (CPU time is steadier on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = lm.loglikelihood(requests, disable_tqdm=True)
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--repeats", type=int, default=0, help="timed passes per scorer (default: 3 quick, 2 full)"
    )
    p.add_argument(
        "--hf-batch-size", type=int, default=8, help="lm-eval hf batch size (sequences per forward)"
    )
    p.add_argument("--task", default="clinray_medqa_5")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)"
    )
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    try:  # the peer is lm-eval's own model; the scorer's speed alone is in benchmarks/gpu_check.py
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise SystemExit(
            "lm-eval is not installed (its hf model is this benchmark's peer): benchmarks/gpu_check.py "
            "measures the prompt-once scorer's questions/s without it"
        ) from None

    from clinray.eval.scorer import PrefixCachedLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    limit = 60 if args.quick else None
    args.repeats = args.repeats or (3 if args.quick else 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        questions = _questions(root, num_questions=100)
        model = _model(root, questions, quick=args.quick)
        requests = _requests(questions, args.task, limit)
        num_questions = len({r.doc_id for r in requests})
        kwargs = {"pretrained": str(model), "device": device, "dtype": "float32"}
        hf = HFLM(**kwargs, batch_size=args.hf_batch_size)
        ours = PrefixCachedLM(**kwargs, batch_size=args.hf_batch_size)
        _time(hf, requests[:10])  # warm-up
        _time(ours, requests[:10])
        hf_times, our_times, hf_cpu, our_cpu = [], [], [], []
        for _ in range(args.repeats):
            t, c, ref = _time(hf, requests)
            hf_times.append(t)
            hf_cpu.append(c)
            t, c, got = _time(ours, requests)
            our_times.append(t)
            our_cpu.append(c)
        max_diff = max(abs(a[0] - b[0]) for a, b in zip(ref, got, strict=True))
        params = sum(p.numel() for p in ours.model.parameters())
    hf_qps, our_qps = num_questions / min(hf_times), num_questions / min(our_times)
    write_result(
        "eval_scoring",
        {
            "quick": args.quick,
            "task": args.task,
            "device": device,
            "model_params": params,
            "num_questions": num_questions,
            "num_requests": len(requests),
            "hf_batch_size": args.hf_batch_size,
            "peer": "lm-eval 0.4 hf model (HFLM)",
            "hf_questions_per_s": round(hf_qps, 2),
            "clinray_questions_per_s": round(our_qps, 2),
            "ratio": round(our_qps / hf_qps, 2),
            "target_ratio": 2.0,
            "max_abs_loglikelihood_diff": max_diff,
            "ratio_cpu_time": round(min(hf_cpu) / min(our_cpu), 2),
            "torch_threads": torch.get_num_threads(),
            "hf_times_s": [round(t, 3) for t in hf_times],
            "clinray_times_s": [round(t, 3) for t in our_times],
            "hf_cpu_s": [round(t, 3) for t in hf_cpu],
            "clinray_cpu_s": [round(t, 3) for t in our_cpu],
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
