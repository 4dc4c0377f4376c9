"""Medprompt strategies end to end with the tiny model, and the engines (transformers, OpenAI HTTP, vLLM)."""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest

from clinray.engines.base import EngineUnavailableError
from clinray.engines.transformers_engine import TransformersEngine
from clinray.prompting import STRATEGIES, Example, MedpromptConfig, answer_batch
from clinray.prompting.templates import option_display, scoring_context


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> TransformersEngine:
    return TransformersEngine(tiny_model_dir, device="cpu", max_batch_size=16)


@pytest.fixture(scope="module")
def world_store(world_dir, tmp_path_factory):
    """The world's training questions with CoT in Milvus Lite (embedded in process, no Ray)."""
    from clinray.retrieval.build_index import IndexConfig, load_examples
    from clinray.retrieval.embed import EmbedConfig, Embedder
    from clinray.retrieval.milvus_store import MilvusExampleStore, MilvusRetriever, StoreConfig

    rows, _ = load_examples(IndexConfig(world=str(world_dir)))
    embedder = Embedder(EmbedConfig())
    store = MilvusExampleStore(StoreConfig(uri=str(tmp_path_factory.mktemp("idx") / "world.db")))
    store.ensure_collection()
    vectors = embedder.embed([r["text"] for r in rows])
    store.upsert([{**r, "vector": v} for r, v in zip(rows, vectors)])
    yield MilvusRetriever(store, embedder), store.all_examples()
    store.close()


@pytest.fixture(scope="module")
def test_items(world_dir) -> list[dict]:
    from clinray.qa import read_questions

    (test,) = read_questions(world_dir / "questions/medqa/test.jsonl").questions[:1]
    # a training question asked again: the leak guard must keep it out of its own examples
    (train,) = read_questions(world_dir / "questions/medmcqa/train.json").questions[:1]
    return [{"id": q.id, "question": q.stem, "options": list(q.options)} for q in (test, train)]


class CountingEngine:
    """The real engine, counting how many generate/score calls reach it."""

    def __init__(self, inner: TransformersEngine):
        self.inner, self.generate_calls, self.score_calls = inner, [], 0

    def generate(self, prompts, **kwargs):
        self.generate_calls.append(len(prompts))
        return self.inner.generate(prompts, **kwargs)

    def score_batch(self, requests):
        self.score_calls += 1
        return self.inner.score_batch(requests)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_returns_an_answer(strategy, engine, world_store, test_items):
    retriever, pool = world_store
    cfg = MedpromptConfig(strategy=strategy, max_new_tokens=8, num_shots=2)
    counting = CountingEngine(engine)
    answers = answer_batch(test_items, engine=counting, config=cfg, retriever=retriever, pool=pool)
    num_runs = 5 if strategy == "cot_ensemble" else 1
    assert counting.generate_calls == [num_runs * len(test_items)]  # every prompt in one batch
    assert counting.score_calls <= 1
    for item, ans in zip(test_items, answers):
        assert 0 <= ans.answer_index < 4 and ans.answer_text == item["options"][ans.answer_index]
        assert len(ans.runs) == num_runs and sum(ans.votes.values()) == num_runs
        assert ans.confidence == ans.votes[ans.answer_index] / num_runs == max(ans.votes.values()) / num_runs
        for run in ans.runs:
            assert run.method in ("parsed", "scored")
            shown_answer = (
                run.parsed if run.method == "parsed" else max(range(4), key=lambda j: run.option_scores[j])
            )
            assert run.mapped_back == run.permutation[shown_answer]
            assert item["id"] not in run.example_ids
            assert len(run.example_ids) == (0 if strategy == "zero_shot_cot" else 2)
        if strategy == "cot_ensemble":
            assert len({tuple(r.permutation) for r in ans.runs}) == 5
            assert len({tuple(r.example_ids) for r in ans.runs}) == min(5, math.factorial(cfg.num_shots))
    if strategy == "static_fewshot_cot":  # the same examples for every question
        assert answers[0].runs[0].example_ids == answers[1].runs[0].example_ids
    if strategy == "knn_fewshot_cot":  # a MedMCQA question about the same drug is among the nearest
        assert any(i.startswith("medmcqa/train/") for i in answers[1].runs[0].example_ids)


def test_score_mode_is_the_papers_likelihood_after_the_reasoning(engine, test_items):
    cfg = MedpromptConfig(strategy="zero_shot_cot", max_new_tokens=16, answer_mode="score")
    ans = answer_batch(test_items[:1], engine=engine, config=cfg)[0]
    run = ans.runs[0]
    assert run.method == "scored" and run.parse_form == "answer_mode=score"
    options = test_items[0]["options"]
    context = scoring_context(run.prompt, run.completion.split("Therefore")[0])
    expected = engine.score(context, [" " + option_display(options, j) for j in range(4)])
    assert run.option_scores == pytest.approx(expected, abs=1e-3)
    assert ans.answer_index == max(range(4), key=lambda j: expected[j])


def test_left_padded_batch_matches_single_generation(engine):
    prompts = [
        "<|system|>: short\n<|assistant|>:",
        "<|system|>: a much longer prompt with more tokens in it\n<|assistant|>:",
    ]
    batched = engine.generate(prompts, max_new_tokens=12)
    single = [engine.generate([p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    scores = engine.score("The drug of choice is", [" Narmycin", " Maepril"])
    assert len(scores) == 2 and all(s < 0 for s in scores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _completions_app(engine: TransformersEngine):
    """A minimal OpenAI-compatible /v1/completions server over the transformers engine."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/completions")
    def completions(body: dict):
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        if body.get("echo"):
            choices = []
            for i, p in enumerate(prompts):
                toks = engine.token_logprobs(p)
                lp = {
                    "tokens": [t for t, _, _ in toks],
                    "text_offset": [o for _, o, _ in toks],
                    "token_logprobs": [v for _, _, v in toks],
                }
                choices.append({"index": i, "text": p, "logprobs": lp})
            return {"choices": choices}
        texts = engine.generate(
            prompts,
            max_new_tokens=body["max_tokens"],
            temperature=body.get("temperature", 0.0),
            seed=body.get("seed"),
        )
        return {"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]}

    return app


def test_openai_compatible_engine_over_http(engine):
    import uvicorn

    from clinray.engines.openai_engine import OpenAICompatibleEngine

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(_completions_app(engine), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        remote = OpenAICompatibleEngine(f"http://127.0.0.1:{port}/v1", model="tiny")
        prompts = ["<|system|>: hello\n<|assistant|>:", "<|prompter|>: which drug?\n<|assistant|>:"]
        assert remote.generate(prompts, max_new_tokens=10) == engine.generate(prompts, max_new_tokens=10)
        context, conts = "The drug of choice is", [" Narmycin", " Maepril", " Dixmycin"]
        assert remote.score(context, conts) == pytest.approx(engine.score(context, conts), abs=1e-3)
        remote.close()
        with pytest.raises(ConnectionError, match="cannot reach"):
            OpenAICompatibleEngine(f"http://127.0.0.1:{_free_port()}/v1").generate(["x"], max_new_tokens=1)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_vllm_engine_says_what_to_do_without_vllm():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    from clinray.engines import EngineConfig, build_engine

    with pytest.raises(EngineUnavailableError, match="pip install vllm"):
        build_engine(EngineConfig(kind="vllm", model="some/model"))


def test_example_pool_holds_verified_cot(world_store):
    _, pool = world_store
    assert pool and all(isinstance(ex, Example) and ex.explanation for ex in pool)
    assert all(ex.answer in ex.explanation or ex.source == "medqa" for ex in pool if ex.source == "medmcqa")
