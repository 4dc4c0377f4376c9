"""The model and retrieval deployments of the served app (Ray Serve replicas).

- :class:`LLMServer` holds a :class:`~clinray.engines.transformers_engine.TransformersEngine`. Its
  ``generate`` is a ``@serve.batch`` over *requests of prompts*: an item is one request's prompt list
  (a 5-run ensemble is one item of 5 prompts, counted as 5 by ``batch_size_fn``), so the runs of one
  request always share a generate call and concurrent requests join it up to ``max_batch_size``
  prompts. Sampled rows carry their own seeds (the engine's per-row sampler), so a request's answer does
  not depend on what it was batched with. With ``share_prefix`` a prefix shared by several prompts (an
  ensemble's few-shot part) is computed once, in generation and in the option scoring of unparsed runs.
  Torch runs in a worker thread, never on the replica's event loop. The trade-off against vLLM's continuous batching: a batch runs to its longest completion, so a
  short request batched with a long one waits for it.
- :class:`Retriever` embeds a question (sentence-transformers, the packaged MiniLM, never downloaded)
  and finds its nearest stored examples. For a Milvus Lite file it loads ids, vectors and payloads from
  the collection once at replica start and searches exactly in memory with NumPy (one BLAS thread):
  Milvus Lite 3 does O(N) Python work per search (about 140-300 ms at 100k rows), the matrix product is
  a few ms, and the file lock is released for other processes. For a server URI it queries Milvus,
  which scales out with replicas. Milvus stays the store of record either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from ray import serve

__all__ = ["GenItem", "LLMServer", "Retriever", "InMemoryIndex", "load_lite_collection"]

log = logging.getLogger("clinray.serve")


@dataclasses.dataclass(kw_only=True, slots=True)
class GenItem:
    """One request's prompts and sampling settings (one ``@serve.batch`` item)."""

    prompts: list[str]
    max_new_tokens: int
    temperature: float = 0.0
    seeds: list[int] | None = None
    """One per prompt when sampling (temperature > 0)."""
    stops: list[str] = dataclasses.field(default_factory=list)


def _prompt_count(items: Sequence[GenItem]) -> int:
    return sum(len(item.prompts) for item in items)


@serve.deployment(name="LLM")
class LLMServer:
    """The generation engine behind a prompt-level ``@serve.batch``."""

    def __init__(
        self,
        engine: dict[str, Any],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        share_prefix: bool,
        num_threads: int,
        model_name: str,
    ) -> None:
        import torch

        from clinray.engines.transformers_engine import TransformersEngine

        torch.set_num_threads(max(1, num_threads))
        self.engine = TransformersEngine(
            engine["model"],
            device=engine.get("device", "cpu"),
            dtype=engine.get("dtype", "auto"),
            max_batch_size=max_batch_size,
        )
        self.share_prefix = share_prefix
        self.model_name = model_name
        self._lock = asyncio.Lock()
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self.reconfigure({"batching": True})
        self.stats = {"generate_calls": 0, "prompts": 0}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config: {batching: bool}``: cross-request batching on or off without a restart (off:
        a batch holds one request, whose own prompts still share its generate call)."""
        batching = bool(user_config.get("batching", True))
        self.batching = batching
        self._generate_batched.set_max_batch_size(self.max_batch_size)
        self._generate_batched.set_batch_wait_timeout_s(self.batch_wait_timeout_s if batching else 0.0)
        self._score_batched.set_max_batch_size(self.max_batch_size)
        self._score_batched.set_batch_wait_timeout_s(self.batch_wait_timeout_s if batching else 0.0)

    def info(self) -> dict[str, Any]:
        """What the ingress needs to fit prompts to the window."""
        return {"max_length": self.engine.max_length, "model": self.model_name}

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.engine.count_tokens(texts)

    def get_stats(self) -> dict[str, int]:
        return dict(self.stats)

    async def generate(self, item: GenItem) -> list[str]:
        """Completions of one request's prompts (batched with other requests when batching is on)."""
        if self.batching:
            return await self._generate_batched(item)
        return (await self._run([item]))[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=_prompt_count)
    async def _generate_batched(self, items: list[GenItem]) -> list[list[str]]:
        return await self._run(items)

    async def _run(self, items: list[GenItem]) -> list[list[str]]:
        """Completions of every item's prompts; items with the same settings share one engine call."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            key = (item.max_new_tokens, item.temperature if item.temperature > 0 else 0.0)
            groups.setdefault(key, []).append(i)
        out: list[list[str]] = [[] for _ in items]
        for (max_new, temperature), members in groups.items():
            prompts = [p for i in members for p in items[i].prompts]
            seeds = None
            if temperature > 0:
                seeds = [s for i in members for s in (items[i].seeds or [0] * len(items[i].prompts))]
            async with self._lock:  # one torch call at a time per replica
                texts = await asyncio.to_thread(
                    self.engine.generate,
                    prompts,
                    max_new_tokens=max_new,
                    temperature=temperature,
                    row_seeds=seeds,
                    share_prefix=self.share_prefix,
                )
            self.stats["generate_calls"] += 1
            self.stats["prompts"] += len(prompts)
            at = 0
            for i in members:
                n = len(items[i].prompts)
                out[i] = [_cut(t, items[i].stops) for t in texts[at : at + n]]
                at += n
        return out

    async def score_batch(self, requests: list[tuple[str, list[str]]]) -> list[list[float]]:
        """Option log-likelihoods (the fallback of unparsed runs), batched across requests like generate."""
        if self.batching:
            return await self._score_batched(requests)
        return (await self._score_run([requests]))[0]

    @serve.batch(
        max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=lambda items: sum(map(len, items))
    )
    async def _score_batched(self, items: list[list[tuple[str, list[str]]]]) -> list[list[list[float]]]:
        return await self._score_run(items)

    async def _score_run(self, items: list[list[tuple[str, list[str]]]]) -> list[list[list[float]]]:
        flat = [request for item in items for request in item]
        async with self._lock:
            scores = await asyncio.to_thread(self.engine.score_batch, flat, share_prefix=self.share_prefix)
        out, at = [], 0
        for item in items:
            out.append(scores[at : at + len(item)])
            at += len(item)
        return out

    def set_batching(self, enabled: bool) -> None:
        """Switch cross-request batching on this replica now (the benchmark's A/B over one app)."""
        self.reconfigure({"batching": enabled})

    async def echo_logprobs(self, text: str, top: int) -> dict[str, list]:
        """OpenAI ``logprobs`` of every token of ``text`` (``echo``: continuation scoring by clients)."""
        async with self._lock:
            return await asyncio.to_thread(self._echo, text, top)

    def _echo(self, text: str, top: int) -> dict[str, list]:
        import torch

        tok = self.engine.tokenizer
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        full = (prefix + ids)[-self.engine.max_length :]
        shift = len(prefix + ids) - len(full)
        with torch.inference_mode():
            logits = self.engine.model(input_ids=torch.tensor([full], device=self.engine.device)).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        tokens, token_lps, text_offset, tops = [], [], [], []
        start = len(prefix) - shift
        for j, tok_id in enumerate(ids):
            pos = start + j
            lo, hi = offsets[j]
            tokens.append(text[lo:hi])
            text_offset.append(int(lo))
            if pos <= 0:
                token_lps.append(None)
                tops.append(None)
                continue
            row = logprobs[pos - 1]
            token_lps.append(float(row[tok_id]))
            if top:
                values, indices = torch.topk(row, top)
                tops.append({tok.decode([int(i)]): float(v) for v, i in zip(values, indices)})
            else:
                tops.append({text[lo:hi]: float(row[tok_id])})
        return {
            "tokens": tokens,
            "token_logprobs": token_lps,
            "text_offset": text_offset,
            "top_logprobs": tops,
        }

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("engine not loaded")


def _cut(text: str, stops: Sequence[str]) -> str:
    from clinray.engines.base import truncate_at_stop

    return truncate_at_stop(text, stops) if stops else text


class InMemoryIndex:
    """Exact cosine search over L2-normalized float32 vectors (one matrix-vector product)."""

    def __init__(self, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = vectors / np.maximum(norms, 1e-12)
        self.ids, self.payloads = ids, payloads
        self._row = {i: r for r, i in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, query: np.ndarray, *, k: int, exclude_ids: Collection[str] = ()
    ) -> list[tuple[int, float]]:
        """``(row, cosine)`` of the ``k`` nearest rows, most similar first, excluding ids."""
        if not len(self.ids):
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores = self.vectors @ q
        for i in exclude_ids:
            row = self._row.get(str(i))
            if row is not None:
                scores[row] = -np.inf
        take = min(k, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(r), float(scores[r])) for r in top if np.isfinite(scores[r])]


def load_lite_collection(uri: str, collection: str, *, batch_size: int = 4_096) -> InMemoryIndex:
    """Every row of a Milvus Lite collection (ids, vectors, payloads), then the file is let go."""
    from clinray.retrieval.milvus_store import _OUTPUT_FIELDS, MilvusExampleStore, StoreConfig

    store = MilvusExampleStore(StoreConfig(uri=uri, collection=collection))
    try:
        store._load()
        it = store.client.query_iterator(
            collection, batch_size=batch_size, filter='id != ""', output_fields=[*_OUTPUT_FIELDS, "vector"]
        )
        ids, vectors, payloads = [], [], []
        while True:
            rows = it.next()
            if not rows:
                break
            for row in rows:
                ids.append(str(row["id"]))
                vectors.append(np.asarray(row["vector"], dtype=np.float32))
                payloads.append({k: row.get(k) for k in _OUTPUT_FIELDS})
        it.close()
    finally:
        store.close()
    matrix = np.stack(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)
    return InMemoryIndex(ids, matrix, payloads)


def _example_dict(entity: dict[str, Any]) -> dict[str, Any]:
    options = entity.get("options")
    if isinstance(options, str):
        options = json.loads(options)
    return {
        "id": str(entity["id"]),
        "question": str(entity["question"]),
        "options": [str(o) for o in options],
        "answer_index": int(entity["answer_index"]),
        "explanation": str(entity.get("explanation") or ""),
        "source": str(entity.get("source") or ""),
    }


@serve.deployment(name="Retriever")
class Retriever:
    """Embedder + nearest-example search (in memory for a Lite file, Milvus for a server URI)."""

    def __init__(self, store: dict[str, Any], embed: dict[str, Any], *, num_threads: int = 1) -> None:
        import torch

        from clinray.retrieval.embed import EmbedConfig, Embedder

        torch.set_num_threads(max(1, num_threads))
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)  # one BLAS thread: no oversubscription spikes in the p99
        except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn/scipy
            pass
        self.embedder = Embedder(EmbedConfig(**embed))
        self.uri, self.collection = store["uri"], store["collection"]
        self.remote = self.uri.startswith(("http://", "https://", "tcp://"))
        self.index: InMemoryIndex | None = None
        self.store = None
        if self.remote:
            from clinray.retrieval.milvus_store import MilvusExampleStore, StoreConfig

            self.store = MilvusExampleStore(StoreConfig(**store))
            self.store._load()
        else:
            self.index = load_lite_collection(self.uri, self.collection)
        self.embedder.embed(["warm up"])  # first call builds the tokenizer caches

    def size(self) -> int:
        return len(self.index) if self.index is not None else self.store.count()

    async def search(
        self, question: str, options: list[str], k: int, exclude_ids: list[str] | None = None
    ) -> dict[str, Any]:
        """``{hits: [(example, score)], embed_ms, search_ms}``, most similar first."""
        return await asyncio.to_thread(self._search, question, options, k, list(exclude_ids or []))

    def _search(self, question: str, options: list[str], k: int, exclude: list[str]) -> dict[str, Any]:
        from clinray.retrieval.embed import embedding_text

        t0 = time.perf_counter()
        vector = self.embedder.embed([embedding_text(question, options)])
        t1 = time.perf_counter()
        if self.index is not None:
            hits = [
                (_example_dict(self.index.payloads[r]), score)
                for r, score in self.index.search(vector[0], k=k, exclude_ids=exclude)
            ]
        else:
            found = self.store.search(vector, k=k, exclude_ids=exclude)[0]
            hits = [(dataclasses.asdict(ex), score) for ex, score in found]
            for ex, _ in hits:
                ex["options"] = list(ex["options"])
        t2 = time.perf_counter()
        return {"hits": hits, "embed_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3}

    def search_vector(self, vector: list[float], k: int) -> list[tuple[str, float]]:
        """Search only (no embedding): ids and scores; the benchmark times retrieval with it."""
        if self.index is None:
            found = self.store.search(np.asarray([vector], dtype=np.float32), k=k)[0]
            return [(ex.id, score) for ex, score in found]
        return [(self.index.ids[r], s) for r, s in self.index.search(np.asarray(vector), k=k)]

    def pool(self, limit: int = 256) -> list[dict[str, Any]]:
        """Up to ``limit`` stored examples by id (the static few-shot pool of the fallback)."""
        if self.index is not None:
            order = sorted(range(len(self.index)), key=lambda r: self.index.ids[r])[:limit]
            return [_example_dict(self.index.payloads[r]) for r in order]
        return [dataclasses.asdict(ex) for ex in self.store.all_examples(limit=limit)]


@serve.deployment(name="LLM")
class VLLMBridge:
    """The ingress's LLM interface (``info``, ``generate``, ``score_batch``, ``echo_logprobs``) over Ray
    Serve LLM's vLLM deployment, through its OpenAI ``completions`` method.

    vLLM batches continuously and caches shared prefixes itself (``enable_prefix_caching``), so this
    bridge sends each request's prompts as one ``CompletionRequest`` with a prompt list and adds no
    batching of its own. Scoring uses ``echo`` with prompt log-probabilities. Not run in this
    repository's CI (no GPU, no vLLM): ``import ray.serve.llm`` fails without vLLM, so everything
    that needs it is imported here, on the GPU replica, only.
    """

    def __init__(self, llm, *, model_id: str, model_path: str) -> None:
        from transformers import AutoConfig

        self.llm, self.model_id = llm, model_id
        config = AutoConfig.from_pretrained(model_path)
        self.max_length = int(getattr(config, "max_position_embeddings", 4096))

    def info(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "model": self.model_id}

    async def _complete(self, **fields: Any):
        from ray.serve.llm.openai_api_models import CompletionRequest

        request = CompletionRequest(model=self.model_id, **fields)
        response = None
        async for chunk in self.llm.options(stream=True).completions.remote(request):
            response = chunk
        if response is None or not hasattr(response, "choices"):
            raise RuntimeError(f"vLLM completion failed: {getattr(response, 'error', response)}")
        return sorted(response.choices, key=lambda c: c.index)

    async def generate(self, item: GenItem) -> list[str]:
        from clinray.models.chat_template import STOP_STRINGS

        choices = await self._complete(
            prompt=list(item.prompts),
            max_tokens=item.max_new_tokens,
            temperature=item.temperature,
            seed=(item.seeds or [None])[0],
            stop=[*STOP_STRINGS, *item.stops],
        )
        return [c.text for c in choices]

    async def echo_logprobs(self, text: str, top: int) -> dict[str, list]:
        (choice,) = await self._complete(prompt=text, max_tokens=0, echo=True, logprobs=max(top, 1))
        lp = choice.logprobs
        return {
            "tokens": list(lp.tokens),
            "token_logprobs": list(lp.token_logprobs),
            "text_offset": list(lp.text_offset),
            "top_logprobs": list(lp.top_logprobs),
        }

    async def score_batch(self, requests: list[tuple[str, list[str]]]) -> list[list[float]]:
        out: list[list[float]] = []
        for context, continuations in requests:
            row = []
            for cont in continuations:
                lp = await self.echo_logprobs(context + cont, 0)
                row.append(
                    sum(
                        v or 0.0
                        for v, off in zip(lp["token_logprobs"], lp["text_offset"])
                        if off >= len(context)
                    )
                )
            out.append(row)
        return out
