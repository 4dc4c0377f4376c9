"""Prompt-once option scoring (``clinray.models.scoring``) in TransformersEngine against full rows.

The reference is the engine's former scoring: every ``context + continuation`` as its own full row,
summing the continuation tokens' log-probabilities. No Ray here.
"""

from __future__ import annotations

import pytest
import torch

from clinray.engines.transformers_engine import TransformersEngine
from clinray.models.scoring import cache_argument, score_continuations


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> TransformersEngine:
    return TransformersEngine(tiny_model_dir, device="cpu", max_batch_size=16)


def full_row_scores(engine: TransformersEngine, requests) -> list[list[float]]:
    """The former ``TransformersEngine.score_batch``: one full row per continuation, run alone.

    One change: a context too long for the window is cut on the left once for all its continuations
    (by what the longest row needs), where the former code cut each row to exactly the window.
    Without truncation the two are the same.
    """
    out: list[list[float]] = []
    for context, continuations in requests:
        ctx_ids = engine.tokenizer(context)["input_ids"]
        wholes = [engine.tokenizer(context + cont)["input_ids"] for cont in continuations]
        drop = max([0] + [len(whole) - engine.max_length for whole in wholes])
        scores = []
        for whole in wholes:
            start = len(ctx_ids) if whole[: len(ctx_ids)] == ctx_ids else len(ctx_ids) - 1
            start = max(1, min(start, len(whole) - 1))
            cut = min(drop, start - 1)
            row, lo = whole[cut:], start - cut
            with torch.inference_mode():
                logits = engine.model(input_ids=torch.tensor([row])).logits[0]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(row[lo:])
            scores.append(float(logprobs[lo - 1 : len(row) - 1].gather(-1, targets[:, None]).sum()))
        out.append(scores)
    return out


REQUESTS = [
    (
        "Question: which drug treats the disease?\nA. Narmycin\nB. Maepril\nC. Tolvex\nD. Orbane\n"
        "Reasoning: the drug of choice is known from the trials. Therefore, the correct answer is:",
        [" A. Narmycin", " B. Maepril", " C. Tolvex", " D. Orbane"],
    ),
    ("The drug of choice is", [" Narmycin", "Maepril", "s", " Tolvex, given twice daily", ""]),
    ("The drug of choice is", [" Orbane"]),  # the same context again: grouped with the one above
    ("A", [" short", " much longer continuation than the others here"]),
    # a BPE merge across the boundary: the context's last token goes to the continuation
    ("The drug of choice is Mae", ["pril", "pril twice daily"]),
    ("The drug of choice is Narm", ["ycin"]),
    ("Take the tab", ["let", " tablet"]),
]


def test_score_batch_equals_full_row_scoring(engine):
    expected = full_row_scores(engine, REQUESTS)
    got = engine.score_batch(REQUESTS)
    assert [len(g) for g in got] == [len(c) for _, c in REQUESTS]
    assert max(abs(a - b) for e, g in zip(expected, got) for a, b in zip(e, g, strict=True)) < 1e-4
    assert got[0] == pytest.approx(engine.score(*REQUESTS[0]), abs=1e-5)


def test_left_truncation_and_small_chunks_still_equal(engine, monkeypatch):
    monkeypatch.setattr(engine, "max_length", 24)  # contexts cut on the left, as before
    monkeypatch.setattr(engine, "max_batch_size", 2)
    monkeypatch.setattr(engine, "max_options_per_batch", 3)
    rows = engine._score_rows(*REQUESTS[0])
    assert len({tuple(ctx) for ctx, _ in rows}) == 1  # one cut: the options share the context
    assert max(len(ctx) + len(cont) for ctx, cont in rows) == 24
    expected = full_row_scores(engine, REQUESTS)
    got = engine.score_batch(REQUESTS)
    assert max(abs(a - b) for e, g in zip(expected, got) for a, b in zip(e, g, strict=True)) < 1e-4


def test_each_context_runs_once(engine):
    """5 ensemble contexts x 4 options: one pass over 5 context rows, one over 20 continuations."""
    contexts = [f"Run {r}: the patient was given drug {r} and the answer is:" for r in range(5)]
    requests = [(c, [" A. Narmycin", " B. Maepril", " C. Tolvex", " D. Orbane"]) for c in contexts]
    batch_sizes = []
    hook = engine.model.register_forward_hook(
        lambda m, args, kw, out: batch_sizes.append(len(args[0])), with_kwargs=True
    )
    try:
        got = engine.score_batch(requests)
    finally:
        hook.remove()
    assert batch_sizes == [5, 20]
    expected = full_row_scores(engine, requests)
    assert max(abs(a - b) for e, g in zip(expected, got) for a, b in zip(e, g, strict=True)) < 1e-4


def test_score_continuations_without_logits_to_keep_and_greedy(engine):
    ctx = [engine.tokenizer("The drug of choice is")["input_ids"], [5, 6]]
    conts = [[[7], [8, 9, 10]], [[11, 12]]]
    kwargs = {"pad_id": engine.tokenizer.pad_token_id, "device": "cpu"}
    kept = score_continuations(engine.model, ctx, conts, **kwargs)
    full = score_continuations(engine.model, ctx, conts, keeps_logits=False, **kwargs)
    assert [[g for _, g in q] for q in kept] == [[g for _, g in q] for q in full]
    assert max(abs(a[0] - b[0]) for q, r in zip(kept, full) for a, b in zip(q, r)) < 1e-5
    with torch.inference_mode():  # greedy: the model's own argmax continuation is greedy
        nxt = int(engine.model(torch.tensor([ctx[1]])).logits[0, -1].argmax())
    assert score_continuations(engine.model, [ctx[1]], [[[nxt]]], **kwargs)[0][0][1] is True
    with pytest.raises(ValueError, match="at least one token"):
        score_continuations(engine.model, [ctx[1]], [[[]]], **kwargs)


def test_growing_cache_generates_exactly_what_the_default_cache_does(engine):
    """Greedy generation of a left-padded batch: same tokens with the in-place cache as with DynamicCache."""
    import torch

    from clinray.engines.kv_cache import GrowingLayer, growing_cache

    prompts = [
        "Patients with asthma",
        "A long prompt about renal impairment and the dosing of drugs in it " * 3,
    ]
    enc = engine._encode_prompts(prompts, max_new_tokens=24)
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": engine.tokenizer.pad_token_id}
    cache = growing_cache(engine.model.config, total_length=enc["input_ids"].shape[1] + 24)
    assert cache is not None and all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    with torch.inference_mode():
        default = engine.model.generate(**enc, **kwargs)
        grown = engine.model.generate(**enc, **kwargs, **{cache_argument(engine.model): cache})
    assert torch.equal(default, grown)
    layer = cache.layers[0]
    assert layer.keys.shape[-2] == enc["input_ids"].shape[1] + 23  # every position but the last token's
    assert layer.keys.data_ptr() == layer._key_buffer.data_ptr()  # a view of the buffer, not a copy


def test_growing_cache_steps_aside_for_a_short_sliding_window(engine):
    import copy

    from clinray.engines.kv_cache import growing_cache

    config = copy.deepcopy(engine.model.config)
    config.sliding_window = 64
    assert growing_cache(config, total_length=65) is None
    assert growing_cache(config, total_length=64) is not None
