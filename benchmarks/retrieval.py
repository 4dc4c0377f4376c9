"""Medprompt serving costs: kNN search latency in Milvus Lite, and a 5-run ensemble against a single run.

1. Milvus Lite holds N examples (100k; ``--quick``: 20k) with random unit vectors of dimension 384 (the
   latency of a FLAT COSINE search does not depend on what the vectors mean); single-query top-5
   searches through :class:`MilvusExampleStore` give p50/p99 (FLAT; ``--extra-index HNSW`` adds one). Peer: exact top-5 by a NumPy matrix
   product over the same vectors, which also gives Milvus's recall@5.
2. The same tiny model (built from the tiny world) answers the same questions with static 5-shot CoT
   (one run) and with the 5-run choice-shuffle ensemble (five prompts of the same length, generated as
   one batch by :class:`TransformersEngine`), 256 new tokens each (MedpromptConfig's default); ``ratio``
   = ensemble time / single time (target <= 2). Peer: the ensemble's five prompts generated one after
   another (no batching). ``generate_ratio`` times generation alone; the rest of a run is the option
   scoring that follows an unparsable answer (always, for a random tiny model).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import parser, timer, write_result  # noqa: E402

DIM = 384


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_search(num_examples: int, num_queries: int, workdir: Path, *, index_type: str = "FLAT") -> dict:
    from clinray.retrieval.milvus_store import MilvusExampleStore, StoreConfig

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((num_examples, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = {"HNSW": ({"M": 16, "efConstruction": 100}, {"ef": 64})}.get(index_type, ({}, {}))
    store = MilvusExampleStore(
        StoreConfig(
            uri=str(workdir / f"{index_type}.db"),
            index_type=index_type,
            index_params=params[0],
            search_params=params[1],
        )
    )
    store.ensure_collection(drop=True)
    options = ["Alpha", "Beta", "Gamma", "Delta"]
    with timer() as insert_t:
        for start in range(0, num_examples, 5000):
            rows = [
                {
                    "id": f"q{i}",
                    "vector": vectors[i],
                    "question": f"Stored question number {i}?",
                    "options": options,
                    "answer_index": i % 4,
                    "explanation": f"Because {i}.",
                    "source": "bench",
                }
                for i in range(start, min(start + 5000, num_examples))
            ]
            store.upsert(rows)
        store.flush()  # seal and index (unsealed rows are searched by brute force, far slower)
    count = store.count()
    queries = rng.standard_normal((num_queries, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    store.search(queries[:1], k=5)  # warm-up (loads the segment)
    latencies, found = [], []
    for q in queries:
        start = time.perf_counter()
        hits = store.search(q, k=5)[0]
        latencies.append((time.perf_counter() - start) * 1000)
        found.append({ex.id for ex, _ in hits})
    store.close()
    numpy_lat, recall = [], []
    for q, got in zip(queries, found):
        start = time.perf_counter()
        top = np.argpartition(-(vectors @ q), 5)[:5]
        numpy_lat.append((time.perf_counter() - start) * 1000)
        recall.append(len(got & {f"q{i}" for i in top}) / 5)
    tag = index_type.lower()
    return {
        "num_stored": count,
        "num_queries": num_queries,
        f"{tag}_insert_and_index_s": round(insert_t(), 2),
        f"{tag}_search_p50_ms": round(_percentile(latencies, 50), 3),
        f"{tag}_search_p99_ms": round(_percentile(latencies, 99), 3),
        f"{tag}_recall_at_5": round(float(np.mean(recall)), 4),
        "numpy_exact_p50_ms": round(_percentile(numpy_lat, 50), 3),
        "numpy_exact_p99_ms": round(_percentile(numpy_lat, 99), 3),
    }


def _tiny_setup(workdir: Path, *, max_positions: int = 2048):
    from clinray.models.tiny import TinyModelConfig, build_tiny_model
    from clinray.prompting.templates import Example
    from clinray.qa import read_questions
    from clinray.retrieval.build_index import IndexConfig, load_examples
    from clinray.synthetic import generate_world

    world = workdir / "world"
    generate_world(world, seed=0, scale=1.0)
    # room for the 5-shot prompt (~900 tokens) and MedpromptConfig's default 256 new tokens
    model = build_tiny_model(
        world / "corpus", workdir / "tiny_model", TinyModelConfig(max_position_embeddings=max_positions)
    )
    rows, _ = load_examples(IndexConfig(world=str(world)))
    import json

    pool = [
        Example(
            id=r["id"],
            question=r["question"],
            options=tuple(json.loads(r["options"])),
            answer_index=r["answer_index"],
            explanation=r["explanation"],
            source=r["source"],
        )
        for r in rows
    ]
    test = read_questions(world / "questions/medqa/test.jsonl").questions[:4]
    items = [{"id": q.id, "question": q.stem, "options": list(q.options)} for q in test]
    return model, pool, items


def _generate_only(engine, items, pool, cfg, *, max_new_tokens: int, repeats: int) -> dict:
    """Generation alone (no answer parsing or option scoring): one prompt vs the ensemble's five."""
    from clinray.prompting.medprompt import _plan

    prompts = [p for item in items for p in _plan(item, cfg, None, pool).prompts]
    one, five = [], []
    for _ in range(repeats):
        with timer() as t1:
            for i in range(0, len(prompts), 5):
                engine.generate(prompts[i : i + 1], max_new_tokens=max_new_tokens, temperature=0.2, seed=0)
        with timer() as t5:
            for i in range(0, len(prompts), 5):
                engine.generate(prompts[i : i + 5], max_new_tokens=max_new_tokens, temperature=0.2, seed=0)
        one.append(t1())
        five.append(t5())
    g1, g5 = statistics.median(one), statistics.median(five)
    return {
        "generate_single_s": round(g1, 3),
        "generate_5_batched_s": round(g5, 3),
        "generate_ratio": round(g5 / g1, 3),
    }


def bench_ensemble(
    workdir: Path,
    *,
    num_questions: int,
    max_new_tokens: int,
    repeats: int,
    device: str = "cpu",
    model: str | None = None,
) -> dict:
    from clinray.engines.transformers_engine import TransformersEngine
    from clinray.prompting.medprompt import MedpromptConfig, answer_batch

    tiny_model, pool, items = _tiny_setup(workdir)
    model = model or tiny_model
    items = items[:num_questions]
    # a random tiny model emits EOS after a few tokens; a real CoT runs for hundreds, so every run
    # generates exactly max_new_tokens (as vLLM's ignore_eos does in its benchmarks)
    engine = TransformersEngine(model, device=device, max_batch_size=16, ignore_eos=True)
    # the single run samples at the ensemble's temperature too, so both stop at EOS alike
    single_cfg = MedpromptConfig(
        strategy="static_fewshot_cot", max_new_tokens=max_new_tokens, temperature=0.2
    )
    ens_cfg = MedpromptConfig(
        strategy="cot_ensemble", ensemble_examples="static", max_new_tokens=max_new_tokens
    )

    class Sequential:  # the peer: the same engine, one prompt per generate call
        def generate(self, prompts, **kw):
            return [engine.generate([p], **kw)[0] for p in prompts]

        def score_batch(self, requests):
            return [engine.score(c, conts) for c, conts in requests]

    def per_question(cfg, eng) -> float:
        times = []
        for item in items:
            start = time.perf_counter()
            answer_batch([item], engine=eng, config=cfg, pool=pool)
            times.append(time.perf_counter() - start)
        return sum(times)

    answer_batch(items[:1], engine=engine, config=single_cfg, pool=pool)  # warm-up
    single, ensemble, sequential = [], [], []
    for r in range(repeats):  # interleaved, so load changes hit all alike; the slow peer once
        single.append(per_question(single_cfg, engine))
        ensemble.append(per_question(ens_cfg, engine))
        if r == 0:
            sequential.append(per_question(ens_cfg, Sequential()))
    s, e, q = statistics.median(single), statistics.median(ensemble), statistics.median(sequential)
    gen = _generate_only(engine, items, pool, ens_cfg, max_new_tokens=max_new_tokens, repeats=repeats)
    prompt_tokens = len(
        engine.tokenizer(
            answer_batch(items[:1], engine=engine, config=single_cfg, pool=pool)[0].runs[0].prompt
        )["input_ids"]
    )
    return {
        "num_questions": len(items),
        "max_new_tokens": max_new_tokens,
        "prompt_tokens": prompt_tokens,
        "repeats": repeats,
        "single_run_s": round(s, 3),
        "ensemble_5_batched_s": round(e, 3),
        "ensemble_5_sequential_s": round(q, 3),
        "ratio": round(e / s, 3),
        "ratio_sequential_peer": round(q / s, 3),
        **gen,
        "torch_threads": __import__("torch").get_num_threads(),
        "device": engine.device,
        "model": "tiny (built from the tiny world)" if model == tiny_model else str(model),
    }


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument(
        "--extra-index",
        action="append",
        default=[],
        choices=["HNSW", "IVF_FLAT"],
        help="full run only: also measure this index type (HNSW over 100k takes minutes to build)",
    )
    p.add_argument("--device", default="cpu", help="ensemble part: cpu, cuda or auto (a GPU for the target)")
    p.add_argument("--model", default=None, help="ensemble part: a model folder instead of the tiny model")
    p.add_argument(
        "--skip-search",
        action="store_true",
        help="ensemble part only: no Milvus Lite needed (e.g. a GPU machine without pymilvus)",
    )
    args = p.parse_args()
    num_examples, num_queries = (20_000, 100) if args.quick else (100_000, 300)
    index_types = ["FLAT"] if args.quick else ["FLAT", *args.extra_index]
    # full: MedpromptConfig's default max_new_tokens (256); quick: shorter, for a smoke test
    num_questions, max_new_tokens, repeats = (2, 128, 2) if args.quick else (4, 256, 3)
    search: dict = {"index_types": [] if args.skip_search else index_types}
    if not args.skip_search:  # Milvus Lite only when searching: the ensemble part runs without it
        search["milvus_lite"] = __import__("milvus_lite").__version__
    with tempfile.TemporaryDirectory() as tmp:
        for index_type in search["index_types"]:
            print(f"[retrieval] {index_type}: {num_examples} stored, {num_queries} queries", file=sys.stderr)
            search.update(bench_search(num_examples, num_queries, Path(tmp), index_type=index_type))
            print(f"[retrieval] {search}", file=sys.stderr, flush=True)
        print("[retrieval] ensemble vs single on the tiny model", file=sys.stderr)
        ensemble = bench_ensemble(
            Path(tmp),
            num_questions=num_questions,
            max_new_tokens=max_new_tokens,
            repeats=repeats,
            device=args.device,
            model=args.model,
        )
    write_result(
        "retrieval",
        {
            "quick": args.quick,
            **search,
            **ensemble,
            "target": "ratio = ensemble / single <= 2 (5 runs batched)",
            "peer": "NumPy exact top-5 (search); unbatched sequential ensemble (generation)",
        },
    )


if __name__ == "__main__":
    main()
