"""Medprompt prompting, pure Python: answer parsing, permutations, voting, example selection, prompts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinray.models.chat_template import COT_ANSWER_PREFIX, COT_PREFIX, MCQ_SYSTEM_PROMPT
from clinray.prompting import Example, MedpromptConfig
from clinray.prompting.cot import static_examples
from clinray.prompting.ensemble import apply_permutation, distinct_permutations, map_back, plurality_vote
from clinray.prompting.knn_fewshot import knn_examples
from clinray.prompting.parsing import parse_answer, reasoning_of
from clinray.prompting.templates import build_prompt, scoring_context

OPTIONS = ["Zelpamide", "Corvastin", "Mebrolol", "Tarnexol"]


@pytest.mark.parametrize(
    ("completion", "index", "form"),
    [
        ("It blocks X. Therefore, the correct answer is: C. Mebrolol", 2, "marker_letter"),
        ("It blocks X. Therefore, the correct answer is: Mebrolol</s><|prompter|>: next", 2, "marker_text"),
        ("Reasoning about Zelpamide and Corvastin.\nAnswer: D", 3, "marker_letter"),
        ("The answer is (B).", 1, "marker_letter"),
        ("Final answer: option A", 0, "marker_letter"),
        ("B", 1, "letter_only"),
        ("(C)", 2, "letter_only"),
        ("I would give tarnexol here.", 3, "text_only"),
        ("The correct answer is: A beta blocker such as Mebrolol", 2, "marker_text"),
    ],
)
def test_parse_answer_forms(completion, index, form):
    parsed = parse_answer(completion, OPTIONS)
    assert (parsed.index, parsed.form) == (index, form)


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "gibberish tokens without any option",
        "Zelpamide or Corvastin could both work.",  # two options named, no marker: ambiguous
        "The answer is: E",  # no fifth option
        "Answer: a beta blocker",  # lower-case 'a' is a word, not a letter
    ],
)
def test_parse_answer_refuses_to_guess(completion):
    assert parse_answer(completion, OPTIONS).index is None


def test_parse_answer_prefers_longest_option_and_last_marker():
    options = ["Aspirin", "Aspirin and heparin", "Heparin", "Warfarin"]
    assert parse_answer("The answer is: Aspirin and heparin", options).index == 1
    text = "The answer is A? No. Therefore, the correct answer is: D. Warfarin"
    assert parse_answer(text, options).index == 3


def test_reasoning_of_strips_answer_and_later_turns():
    text = " It inhibits COX. Therefore, the correct answer is: A. Zelpamide</s>\n<|prompter|>: more"
    assert reasoning_of(text) == "It inhibits COX."


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=2, max_value=8), st.integers(min_value=1, max_value=8), st.integers(0, 2**32 - 1)
)
def test_mapping_back_recovers_the_original_option(num_options, num_runs, seed):
    options = [f"option {i}" for i in range(num_options)]
    perms = distinct_permutations(num_runs, num_options, rng=random.Random(seed))
    for perm in perms:
        shown = apply_permutation(options, perm)
        for original in range(num_options):
            shown_index = shown.index(options[original])
            assert map_back(perm, shown_index) == original
    import math

    if num_runs <= math.factorial(num_options):
        assert len(set(perms)) == num_runs


def test_distinct_permutations_cover_all_when_runs_exceed_them():
    perms = distinct_permutations(5, 2, rng=random.Random(0))
    assert set(perms) == {(0, 1), (1, 0)}
    assert distinct_permutations(3, 0, rng=random.Random(0)) == [(), (), ()]
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutation(["a", "b"], [0, 0])


def test_plurality_vote_share_and_tie_break():
    assert plurality_vote([2, 1, 2, 0, 2]) == (2, {0: 1, 1: 1, 2: 3}, 0.6)
    winner, _, share = plurality_vote([3, 1, 1, 3])
    assert (winner, share) == (3, 0.5)  # 3 reached the top count first in run order
    with pytest.raises(ValueError):
        plurality_vote([])


def _example(i: int, question: str | None = None) -> Example:
    return Example(
        id=f"ex{i}",
        question=question or f"Which drug treats condition {i}?",
        options=tuple(OPTIONS),
        answer_index=i % 4,
        explanation=f"Condition {i} responds to it.",
    )


class ListRetriever:
    """In-memory retriever: similarity is given per example id."""

    def __init__(self, scored: dict[str, float], pool: list[Example]):
        self.scored, self.pool = scored, {ex.id: ex for ex in pool}

    def search(self, question, options, *, k, exclude_ids=()):
        hits = [(self.pool[i], s) for i, s in self.scored.items() if i not in set(exclude_ids)]
        return sorted(hits, key=lambda h: h[1], reverse=True)[:k]


def test_knn_examples_guard_leaks_and_put_most_similar_last():
    asked = "Which drug treats condition 99?"
    pool = [_example(i) for i in range(6)] + [_example(7, question=asked.upper())]
    scores = {"ex0": 0.1, "ex1": 0.9, "ex2": 0.5, "ex3": 0.7, "ex4": 0.3, "ex5": 0.2, "ex7": 1.0}
    pool.append(_example(99, question=asked))
    scores["ex99"] = 1.0
    got = knn_examples(asked, OPTIONS, retriever=ListRetriever(scores, pool), k=3, question_id="ex99")
    assert [ex.id for ex in got] == ["ex2", "ex3", "ex1"]


def test_static_examples_are_seeded_and_exclude_the_question():
    pool = [_example(i) for i in range(10)]
    first = static_examples(pool, k=5, seed=1, exclude_id="ex3")
    assert first == static_examples(list(reversed(pool)), k=5, seed=1, exclude_id="ex3")
    assert "ex3" not in {ex.id for ex in first} and len(first) == 5
    unguarded = static_examples(pool, k=5, seed=1)
    kept = [ex for ex in unguarded if ex.id != "ex3"]
    assert first[: len(kept)] == kept  # the same examples, the asked one replaced by the next
    with pytest.raises(ValueError, match="only 2 usable"):
        static_examples(pool[:3], k=5, exclude_id="ex0")


def test_build_prompt_layout():
    prompt = build_prompt("Which drug?", OPTIONS, examples=[_example(1), _example(2)])
    assert prompt.startswith(
        f"<|system|>: {MCQ_SYSTEM_PROMPT}\n<|prompter|>: Which drug treats condition 1?\nA. "
    )
    assert (
        f"<|assistant|>: {COT_PREFIX} Condition 1 responds to it. {COT_ANSWER_PREFIX} B. Corvastin</s>"
        in prompt
    )
    assert prompt.endswith(
        f"<|prompter|>: Which drug?\nA. Zelpamide\nB. Corvastin\nC. Mebrolol\nD. Tarnexol\n<|assistant|>: {COT_PREFIX}"
    )
    plain = build_prompt("Q?", OPTIONS, use_labels=False, cot=False)
    assert plain.endswith("Q?\nZelpamide\nCorvastin\nMebrolol\nTarnexol\n<|assistant|>:")
    assert scoring_context("P", " why ") == f"P why {COT_ANSWER_PREFIX}"


def test_config_and_example_validation():
    with pytest.raises(ValueError, match="strategy"):
        MedpromptConfig(strategy="magic")
    with pytest.raises(ValueError, match="num_runs"):
        MedpromptConfig(num_runs=0)
    with pytest.raises(ValueError, match="answer_index"):
        Example(id="x", question="q", options=("a", "b"), answer_index=2)


# --- prompts longer than the model's window: whole examples dropped, farthest first ----------------


class WordEngine:
    """A fake engine with a small window whose tokens are whitespace-separated words."""

    def __init__(self, window: int):
        self.window, self.prompts = window, []

    def max_prompt_tokens(self, *, max_new_tokens):
        return self.window - max_new_tokens

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=None):
        self.prompts.extend(prompts)
        assert all(n <= self.window - max_new_tokens for n in self.count_tokens(prompts)), "over the window"
        return ["Therefore, the correct answer is: B. Corvastin"] * len(prompts)

    def score(self, context, continuations):
        raise AssertionError("every run parses")


def _long_example(i: int, num_words: int) -> Example:
    reasoning = " ".join(f"finding{i}w{j}" for j in range(num_words))
    return Example(
        id=f"long{i}",
        question=f"Which drug treats condition {i}?",
        options=tuple(OPTIONS),
        answer_index=1,
        explanation=reasoning,
    )


def test_a_7000_token_knn_prompt_loses_whole_examples_least_similar_first():
    from clinray.prompting import answer_question

    pool = [_long_example(i, 1400) for i in range(5)]
    scores = {f"long{i}": 0.5 + i / 10 for i in range(5)}  # long4 the most similar
    retriever = ListRetriever(scores, pool)
    full = build_prompt("Which drug?", OPTIONS, examples=pool)
    assert len(full.split()) > 7000
    engine = WordEngine(window=3000)
    cfg = MedpromptConfig(strategy="knn_fewshot_cot", num_shots=5, max_new_tokens=64)
    ans = answer_question("Which drug?", OPTIONS, engine=engine, config=cfg, retriever=retriever)
    [run] = ans.runs
    assert run.example_ids == ["long3", "long4"]  # the two most similar, most similar still last
    assert (run.num_shots_used, run.num_shots_dropped, ans.num_shots_dropped) == (2, 3, 3)
    assert run.prompt == build_prompt("Which drug?", OPTIONS, examples=[pool[3], pool[4]])  # no cut
    assert run.num_prompt_tokens == len(run.prompt.split()) <= 3000 - 64
    assert ans.to_dict()["runs"][0]["num_shots_dropped"] == 3


def test_static_and_ensemble_prompts_fit_by_whole_examples():
    from clinray.prompting import answer_question

    pool = [_long_example(i, 1400) for i in range(8)]
    drawn = static_examples(pool, k=5, seed=0)
    engine = WordEngine(window=3000)
    cfg = MedpromptConfig(strategy="static_fewshot_cot", num_shots=5, max_new_tokens=64)
    [run] = answer_question("Which drug?", OPTIONS, engine=engine, config=cfg, pool=pool).runs
    assert run.example_ids == [ex.id for ex in drawn[:2]]  # the last of the draw dropped first
    assert run.num_shots_dropped == 3
    scores = {ex.id: i / 10 for i, ex in enumerate(pool)}
    cfg = MedpromptConfig(strategy="cot_ensemble", num_shots=5, max_new_tokens=64, num_runs=5)
    ans = answer_question(
        "Which drug?", OPTIONS, engine=engine, config=cfg, retriever=ListRetriever(scores, pool)
    )
    assert ans.num_shots_dropped == 15
    for run in ans.runs:  # each run keeps the two most similar, in its own shuffled order
        assert sorted(run.example_ids) == ["long6", "long7"] and run.num_shots_used == 2
    assert len({tuple(r.example_ids) for r in ans.runs}) == 2
    # a prompt that fits is left alone, and an engine without a window gets the prompt as built
    short = [_example(i) for i in range(5)]
    [run] = answer_question(
        "Which drug?", OPTIONS, engine=engine, config=cfg.__class__(strategy="static_fewshot_cot"), pool=short
    ).runs
    assert (run.num_shots_used, run.num_shots_dropped) == (5, 0)


def test_fit_examples_when_even_the_question_is_too_long():
    from clinray.prompting.fit import fit_examples

    examples = [_long_example(i, 50) for i in range(3)]
    fitted = fit_examples(
        lambda exs: build_prompt("word " * 500, OPTIONS, examples=exs),
        examples,
        drop_order=[0, 1, 2],
        budget=100,
        count=lambda texts: [len(t.split()) for t in texts],
    )
    assert fitted.examples == [] and fitted.num_dropped == 3 and fitted.num_tokens > 100


def test_tiny_model_few_shot_prompt_over_the_window_is_cut_by_examples(tiny_model_dir, caplog):
    """The tiny model's window is 1,024 tokens: a 7,000-token 5-shot prompt keeps whole examples only,
    and neither the tokenizer's "indexing errors" warning nor the engine's left cut happens."""
    import logging

    from transformers.utils import logging as hf_logging

    from clinray.engines.transformers_engine import TransformersEngine
    from clinray.prompting import answer_question

    engine = TransformersEngine(tiny_model_dir, device="cpu")
    sentence = "The patient with chronic kidney disease was given a lower dose of the drug. "
    pool = [
        Example(
            id=f"ex{i}",
            question=f"A patient presents with condition {i}. Which drug is best?",
            options=tuple(OPTIONS),
            answer_index=i % 4,
            explanation=sentence * (3 if i == 4 else 110),  # the most similar one is short
        )
        for i in range(5)
    ]
    retriever = ListRetriever({f"ex{i}": i / 10 for i in range(5)}, pool)
    [full_tokens] = engine.count_tokens([build_prompt("Which drug?", OPTIONS, examples=pool)])
    assert full_tokens > 7000 > engine.max_length
    cfg = MedpromptConfig(strategy="knn_fewshot_cot", num_shots=5, max_new_tokens=8)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            ans = answer_question("Which drug?", OPTIONS, engine=engine, config=cfg, retriever=retriever)
    finally:
        hf_logging.disable_propagation()
    [run] = ans.runs
    assert run.example_ids == ["ex4"] and run.num_shots_dropped == 4
    assert run.num_prompt_tokens <= engine.max_length - 8
    assert engine.num_truncated == 0
    assert not [r for r in caplog.records if "indexing errors" in r.getMessage() or "cut" in r.getMessage()]
