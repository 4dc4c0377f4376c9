"""The engine features the served app relies on: a shared prefix computed once gives the same tokens,
per-row seeds make a row's sample independent of its batch, and the in-memory search is exact."""

from __future__ import annotations

import numpy as np
import pytest

from clinray.serve.deployments import InMemoryIndex

PREFIX = "<|system|>: You are a biomedical expert. Select the correct option. " * 12


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from clinray.engines.transformers_engine import TransformersEngine

    return TransformersEngine(tiny_model_dir, device="cpu", max_batch_size=16)


def _prompts() -> list[str]:
    runs = [PREFIX + f"<|prompter|>: question {i}\nA. {'xyzw'[i % 4]}\n<|assistant|>:" for i in range(5)]
    return [*runs, "<|prompter|>: something else entirely\n<|assistant|>:"]


def test_shared_prefix_gives_the_same_greedy_tokens(engine):
    prompts = _prompts()
    plain = engine.generate(prompts, max_new_tokens=10)
    before = getattr(engine, "num_shared_prefix_tokens", 0)
    shared = engine.generate(prompts, max_new_tokens=10, share_prefix=True)
    assert shared == plain
    assert engine.num_shared_prefix_tokens - before > 4 * 100  # 4 of the 5 runs reused a long prefix


def test_row_seeds_do_not_depend_on_the_batch(engine):
    prompts = _prompts()
    alone = engine.generate(prompts[:2], max_new_tokens=8, temperature=0.8, row_seeds=[11, 12])
    batched = engine.generate(prompts, max_new_tokens=8, temperature=0.8, row_seeds=[11, 12, 1, 2, 3, 4])
    shared = engine.generate(
        prompts[:4], max_new_tokens=8, temperature=0.8, row_seeds=[11, 12, 5, 6], share_prefix=True
    )
    assert batched[:2] == alone == shared[:2]
    other = engine.generate(prompts[:2], max_new_tokens=8, temperature=0.8, row_seeds=[13, 14])
    assert other != alone
    with pytest.raises(ValueError, match="row seeds"):
        engine.generate(prompts, max_new_tokens=2, temperature=0.5, row_seeds=[1])


def test_shared_prefix_scoring_gives_the_same_log_likelihoods(engine):
    options = [" A. aspirin", " B. insulin therapy", " C. x", " D. levothyroxine sodium"]
    requests = [
        (p + " Let's think step-by-step. it is" + " Therefore, the correct answer is:", options)
        for p in _prompts()
    ]
    plain = engine.score_batch(requests)
    shared = engine.score_batch(requests, share_prefix=True)
    assert np.allclose(np.array(plain), np.array(shared), atol=1e-3)
    single = [("only one context here", [" yes", " no"])]
    assert engine.score_batch(single, share_prefix=True) == engine.score_batch(single)


def test_in_memory_search_is_exact_and_excludes_ids():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    ids = [f"ex{i}" for i in range(500)]
    index = InMemoryIndex(ids, vectors, [{} for _ in ids])
    query = rng.standard_normal(16).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = np.argsort(-(unit @ (query / np.linalg.norm(query))))[:6]
    hits = index.search(query, k=5)
    assert [r for r, _ in hits] == list(truth[:5])
    assert all(a >= b for (_, a), (_, b) in zip(hits, hits[1:]))
    excluded = index.search(query, k=5, exclude_ids=[ids[truth[0]]])
    assert [r for r, _ in excluded] == list(truth[1:6])
    assert InMemoryIndex([], np.zeros((0, 16)), []).search(query, k=3) == []
