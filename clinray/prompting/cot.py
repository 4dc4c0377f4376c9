"""Chain-of-thought strategies with fixed examples: zero-shot CoT and static few-shot CoT.

Zero-shot CoT only pre-fills ``Let's think step-by-step.``. Static few-shot CoT prepends the same k
examples (the paper: 5) to every question; they are drawn once, deterministically from a seed, from the
pool of stored examples, never including the question being asked (the leak guard also used by the
kNN strategy). Choosing them at random rather than by hand keeps the recipe reproducible on any
dataset; the trade-off is that a poor draw is possible, which the dynamic kNN strategy avoids.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from clinray.prompting.templates import Example, build_prompt

__all__ = ["zero_shot_cot_prompt", "static_examples", "few_shot_cot_prompt", "same_question"]


def same_question(a: str, b: str) -> bool:
    """Whether two question stems are the same text up to case and whitespace (the leak guard)."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def zero_shot_cot_prompt(question: str, options: Sequence[str], *, use_labels: bool = True) -> str:
    """The question with ``Let's think step-by-step.`` pre-filled in the assistant turn."""
    return build_prompt(question, options, examples=(), cot=True, use_labels=use_labels)


def static_examples(
    pool: Sequence[Example],
    *,
    k: int = 5,
    seed: int = 0,
    exclude_id: str | None = None,
    exclude_question: str | None = None,
) -> list[Example]:
    """``k`` fixed examples drawn from ``pool`` with ``seed``, excluding the asked question.

    The pool is shuffled with ``seed`` (in id order first, so the pool's own order does not matter) and
    the first ``k`` usable examples are taken: every question gets the same examples, except that a
    question drawn among them is replaced by the next one.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    order = sorted(pool, key=lambda ex: ex.id)
    random.Random(seed).shuffle(order)
    chosen = [
        ex
        for ex in order
        if ex.id != exclude_id and not (exclude_question and same_question(ex.question, exclude_question))
    ][:k]
    if len(chosen) < k:
        raise ValueError(f"static few-shot needs {k} examples but the pool has only {len(chosen)} usable")
    return chosen


def few_shot_cot_prompt(
    question: str, options: Sequence[str], *, examples: Sequence[Example], use_labels: bool = True
) -> str:
    """The question after the given examples, each with its reasoning, CoT pre-filled."""
    return build_prompt(question, options, examples=examples, cot=True, use_labels=use_labels)
