"""Serving: latency and throughput of ``/v1/medprompt`` on one app (Ray Serve, 127.0.0.1, tiny model).

One Serve app, measured over real HTTP:

- ``ensemble`` (5 runs) p50/p99 and requests/s at concurrency 1 for both prefix settings, against one
  ``single`` (1 run) measurement (a single run has no exemplar order to share): ``shared`` (exemplars in one order, only the options shuffled; the engine computes the
  shared prefix once) and ``shuffled`` (the paper's preset: exemplars permuted too).
  ``ratio`` = ensemble p50 / single p50 of the serving default (target <= 2).
- ``batching_gain`` = throughput at concurrency 8 with cross-request batching over the same app with
  batching off (switched on the LLM replica by ``set_batching``, no restart; target >= 2.5).
- ``retrieval_p50_ms`` / ``retrieval_p99_ms``: the retriever's search time (embedding excluded) at
  ``--rows`` stored vectors (100k; target p99 <= 20 ms), on real MiniLM embeddings of the world's
  questions; the stored rows are those embeddings and noisy copies of them (clustered like real
  questions, never i.i.d. random vectors). ``recall_at_5`` compares its top 5 with Milvus Lite's own
  FLAT search on the same collection.
- ``errors_5xx`` over every request of the run (target 0).

``python benchmarks/serve_load.py [--quick]``; --quick: 5k rows and fewer requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parser, write_result  # noqa: E402

KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return {"p50_ms": round(v, 2), "p99_ms": round(v, 2)}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(statistics.median(values), 2), "p99_ms": round(q[98], 2)}


def build_store(world: Path, db: Path, rows_total: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Real MiniLM embeddings of the world's training questions, padded with noisy copies to ``rows_total``."""
    from clinray.retrieval.build_index import IndexConfig, load_examples
    from clinray.retrieval.embed import EmbedConfig, Embedder
    from clinray.retrieval.milvus_store import MilvusExampleStore, StoreConfig

    rows, _ = load_examples(IndexConfig(world=str(world)))
    real = Embedder(EmbedConfig()).embed([r["text"] for r in rows])
    rng = np.random.default_rng(seed)
    store = MilvusExampleStore(StoreConfig(uri=str(db), index_type="FLAT"))
    store.ensure_collection(drop=True)
    batch: list[dict] = [{**r, "vector": v} for r, v in zip(rows, real, strict=True)]
    written = 0
    j = 0
    while written + len(batch) < rows_total or batch:
        while len(batch) < 5_000 and written + len(batch) < rows_total:
            i = int(rng.integers(len(rows)))
            v = real[i] + rng.normal(0, 0.03, real.shape[1]).astype(np.float32)
            batch.append({**rows[i], "id": f"{rows[i]['id']}#syn{j}", "vector": v / np.linalg.norm(v)})
            j += 1
        store.upsert(batch)
        written += len(batch)
        batch = []
    store.flush()
    store.close()
    return rows, real


async def _load(base: str, body: dict, *, total: int, concurrency: int) -> dict:
    statuses: list[int] = []
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=300, headers={"Authorization": f"Bearer {KEY}"}) as c:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                r = await c.post("/v1/medprompt", json={**body, "seed": i})
                latencies.append((time.perf_counter() - t0) * 1e3)
                statuses.append(r.status_code)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        **_quantiles(latencies),
        "rps": round(total / wall, 3),
        "requests": total,
        "concurrency": concurrency,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="stored vectors (default 100k)")
    a = p.parse_args()
    rows_total = 5_000 if a.quick else a.rows
    n_seq = 5 if a.quick else 30
    n_conc = 16 if a.quick else 96
    n_search = 100 if a.quick else 500
    max_new = 16 if a.quick else 32

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["CLINRAY_BENCH_KEYS"] = KEY
    import ray
    from ray import serve

    from clinray.models.tiny import build_tiny_model
    from clinray.qa import read_questions
    from clinray.serve.app import ServeArgs, build_app
    from clinray.synthetic import generate_world

    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    world = tmp / "world"
    generate_world(world, seed=0, scale=1.0)
    model = build_tiny_model(world / "corpus", tmp / "model")
    db = tmp / "index.db"
    t0 = time.perf_counter()
    build_store(world, db, rows_total)
    build_s = time.perf_counter() - t0
    tests = read_questions(world / "questions/medqa/test.jsonl").questions

    def args() -> ServeArgs:
        return ServeArgs.model_validate(
            {
                "engine": {"model": str(model), "name": "tiny"},
                "store": {"uri": str(db)},
                "auth": {"api_keys_env": "CLINRAY_BENCH_KEYS"},
                "medprompt": {"k": 5, "n_ensemble": 5, "max_new_tokens": max_new},
                "batch": {"enabled": True, "max_batch_size": 40},
                "limits": {"max_inflight": 64},
                "timeouts": {"request_s": 300, "retrieval_s": 10},
                "llm": {"num_cpus": 1.0},
                "retriever": {"num_cpus": 0.25},
                "ingress": {"num_cpus": 0.25},
            }
        )

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    serve.run(build_app(args()), name="clinray", route_prefix="/")
    startup_s = time.perf_counter() - t0
    question = {"question": tests[0].stem, "options": list(tests[0].options)}
    all_statuses: dict[str, int] = {}

    def run_load(body: dict, total: int, concurrency: int) -> dict:
        out = asyncio.run(_load(base, {**question, **body}, total=total, concurrency=concurrency))
        for s, c in out["statuses"].items():
            all_statuses[s] = all_statuses.get(s, 0) + c
        return out

    run_load({"n_ensemble": 5}, 2, 1)  # warm up both paths
    run_load({"n_ensemble": 1}, 2, 1)
    single = run_load({"n_ensemble": 1}, 2 * n_seq, 1)  # one run: no exemplar order to share or shuffle
    settings = {}
    for name, shuffle in (("shared", False), ("shuffled", True)):
        ens = run_load({"n_ensemble": 5, "shuffle_examples": shuffle}, n_seq, 1)
        settings[name] = {"ensemble": ens, "ratio": round(ens["p50_ms"] / single["p50_ms"], 3)}
    default = (
        "shared"
        if settings["shared"]["ensemble"]["p50_ms"] <= settings["shuffled"]["ensemble"]["p50_ms"]
        else "shuffled"
    )
    conc_body = {"n_ensemble": 5, "shuffle_examples": default == "shuffled"}
    batched = run_load(conc_body, n_conc, 8)
    llm = serve.get_deployment_handle("LLM", app_name="clinray")
    llm.set_batching.remote(False).result()  # the same replica, batching off (one LLM replica)
    unbatched = run_load(conc_body, n_conc, 8)
    llm.set_batching.remote(True).result()

    retriever = serve.get_deployment_handle("Retriever", app_name="clinray")
    search_ms, embed_ms = [], []
    for i in range(n_search):
        q = tests[i % len(tests)]
        found = retriever.search.remote(q.stem, list(q.options), 5).result()
        search_ms.append(found["search_ms"])
        embed_ms.append(found["embed_ms"])
    size = retriever.size.remote().result()
    # recall@5 against Milvus Lite's own FLAT search, on real question embeddings
    from clinray.retrieval.embed import EmbedConfig, Embedder, embedding_text
    from clinray.retrieval.milvus_store import MilvusExampleStore, StoreConfig

    embedder = Embedder(EmbedConfig())
    store = MilvusExampleStore(StoreConfig(uri=str(db), index_type="FLAT"))
    hits, total = 0, 0
    for q in tests[:20]:
        ours = {ex["id"] for ex, _ in retriever.search.remote(q.stem, list(q.options), 5).result()["hits"]}
        vector = embedder.embed([embedding_text(q.stem, list(q.options))])
        lite = {ex.id for ex, _ in store.search(vector, k=5)[0]}
        hits += len(ours & lite)
        total += len(lite)
    store.close()
    serve.delete("clinray")
    serve.shutdown()
    ray.shutdown()
    errors_5xx = sum(c for s, c in all_statuses.items() if int(s) >= 500)
    r = _quantiles(search_ms)
    result = {
        "quick": a.quick,
        "stored_vectors": size,
        "index_build_s": round(build_s, 1),
        "startup_s": round(startup_s, 1),
        "max_new_tokens": max_new,
        "prefix_default": default,
        "ratio": settings[default]["ratio"],
        "ratio_shared": settings["shared"]["ratio"],
        "ratio_shuffled": settings["shuffled"]["ratio"],
        "ensemble_p50_ms": settings[default]["ensemble"]["p50_ms"],
        "ensemble_p99_ms": settings[default]["ensemble"]["p99_ms"],
        "ensemble_rps": settings[default]["ensemble"]["rps"],
        "single_p50_ms": single["p50_ms"],
        "single_p99_ms": single["p99_ms"],
        "single_rps": single["rps"],
        "single": single,
        "prefix_settings": settings,
        "batching_gain": round(batched["rps"] / unbatched["rps"], 3),
        "batched_c8": batched,
        "unbatched_c8": unbatched,
        "retrieval_p50_ms": r["p50_ms"],
        "retrieval_p99_ms": r["p99_ms"],
        "embed_p50_ms": _quantiles(embed_ms)["p50_ms"],
        "recall_at_5": round(hits / total, 4) if total else None,
        "errors_5xx": errors_5xx,
        "statuses": all_statuses,
        "note": "tiny random model: every run is answered by option scoring (it names no option); "
        "measured on a 2-core CPU machine",
    }
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}), file=sys.stderr)
    write_result("serve_load", result)


if __name__ == "__main__":
    main()
