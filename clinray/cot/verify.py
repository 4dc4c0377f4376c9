"""The pure core of the CoT stage: plan the k shuffled samples of a question, judge a chain, render a row.

A sample shows the question's options in a seeded permutation ``perm`` (``shown[j] = options[perm[j]]``,
the convention of :mod:`clinray.prompting.ensemble`). The teacher's completion is judged
deterministically:

1. cut at the first role or end token (:func:`~clinray.prompting.parsing.clean_completion`);
2. the chain must end with the Figure 5 marker ``Therefore, the correct answer is`` exactly once
   (none: ``no_final_answer``; more than one: ``several_final_answers``, a chain that changes its mind)
   and hold reasoning before it (``no_reasoning``);
3. the option after the marker, on its line, is read by :func:`~clinray.prompting.parsing.parse_answer` among the
   options *as shown* (none: ``unreadable_answer``), mapped back through ``perm`` to the original option
   (:func:`~clinray.prompting.ensemble.map_back`), and compared with the gold one: ``accepted`` or
   ``wrong_answer``.

A kept chain is written in the Figure 5 format with its prompt in the order the teacher saw, so any
letter or "the first option" in the reasoning still points at the right option; the answer line is
rewritten canonically from the gold option (text after the marker, such as a new question the teacher
started, is dropped). Trade-off: a strict parse rejects some right chains with an odd ending; Medprompt
and the paper keep only chains whose parsed answer matches, and a lost chain costs less than a wrong
SFT target or kNN example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any, Literal

from clinray.models.chat_template import MCQ_SYSTEM_PROMPT, format_mcq, mcq_answer
from clinray.prompting.ensemble import apply_permutation, distinct_permutations, map_back
from clinray.prompting.parsing import clean_completion, parse_answer
from clinray.prompting.templates import LETTERS, Example, build_prompt, option_display
from clinray.qa import Question

__all__ = [
    "Verdict",
    "Judgement",
    "Sample",
    "UNPARSEABLE_REASONS",
    "judge",
    "plan_samples",
    "teacher_prompt",
    "cot_row",
    "question_text",
]

Verdict = Literal["accepted", "wrong_answer", "unparseable"]
#: Why a sample is ``unparseable`` (``teacher_error``: the teacher call failed, no completion).
UNPARSEABLE_REASONS = (
    "empty_completion",
    "no_final_answer",
    "several_final_answers",
    "no_reasoning",
    "unreadable_answer",
    "teacher_error",
)
#: The Figure 5 final-answer marker, as :func:`clinray.prompting.parsing.reasoning_of` finds it.
_FINAL = re.compile(r"therefore,?\s+the\s+correct\s+answer\s+is", re.IGNORECASE)
#: A pre-filled ``Let's think step-by-step.`` the teacher wrote again.
_LEADING_PREFIX = re.compile(r"^\s*let'?s\s+think\s+step[\s-]+by[\s-]+step\.?\s*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class Judgement:
    """What one completion says, read deterministically."""

    verdict: Verdict
    reason: str
    """``accepted``, ``wrong_answer`` or one of :data:`UNPARSEABLE_REASONS`."""
    shown_index: int | None = None
    """The chosen option among the options as shown (None: unparseable)."""
    answer_index: int | None = None
    """The chosen option mapped back to the question's own order (None: unparseable)."""
    reasoning: str = ""
    """The reasoning before the final-answer marker (kept chains only)."""
    form: str = ""
    """How :func:`parse_answer` read the answer (``marker_letter``, ``marker_text``)."""


def judge(completion: str, shown: Sequence[str], perm: Sequence[int], gold_index: int) -> Judgement:
    """Judge one completion of a sample whose options were shown as ``shown`` (``perm`` maps them back).

    Args:
        completion: the teacher's text after the pre-filled ``Let's think step-by-step.``.
        shown: the option texts in the order the prompt showed them.
        perm: the sample's permutation (``shown[j] == options[perm[j]]``).
        gold_index: the correct option's index in the question's own order.
    """
    text = clean_completion(completion or "")
    if not text:
        return Judgement("unparseable", "empty_completion")
    markers = list(_FINAL.finditer(text))
    if not markers:
        return Judgement("unparseable", "no_final_answer")
    if len(markers) > 1:
        return Judgement("unparseable", "several_final_answers")
    marker = markers[0]
    reasoning = _LEADING_PREFIX.sub("", text[: marker.start()]).strip()
    if not reasoning:
        return Judgement("unparseable", "no_reasoning")
    parsed = parse_answer(text[marker.start() :].split("\n", 1)[0], shown)  # the marker's line only
    if parsed.index is None:
        return Judgement("unparseable", "unreadable_answer")
    original = map_back(perm, parsed.index)
    verdict: Verdict = "accepted" if original == gold_index else "wrong_answer"
    return Judgement(verdict, verdict, parsed.index, original, reasoning, parsed.form)


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One of the k generations of a question."""

    question: Question
    number: int
    """0..k-1 within its question."""
    perm: tuple[int, ...]
    seed: int
    """The sampling seed of this chain (the transformers teacher's per-row generator)."""

    @property
    def shown(self) -> list[str]:
        return apply_permutation(self.question.options, self.perm)

    @property
    def gold_shown(self) -> int:
        """Where the correct option is shown."""
        return self.perm.index(self.question.answer_index)

    @property
    def key(self) -> str:
        return f"{self.question.id}#{self.number}"


def _seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def plan_samples(question: Question, *, k: int, seed: int) -> list[Sample]:
    """The k samples of a question: option orders pairwise distinct while ``n!`` allows, seeded per
    question (the plan does not depend on which other questions run, or in which order)."""
    if question.answer_index is None:
        raise ValueError(f"question {question.id} has no answer: it cannot be verified")
    rng = random.Random(_seed("clinray.cot.perm", seed, question.id))
    perms = distinct_permutations(k, len(question.options), rng=rng)
    return [
        Sample(question, j, tuple(perm), _seed("clinray.cot.sample", seed, question.id, j))
        for j, perm in enumerate(perms)
    ]


def question_text(question: Question) -> str:
    """What the prompt asks: the stem after PubMedQA's abstract, as evaluation and the SFT readers show it."""
    return "\n".join([*question.meta.get("contexts", ()), question.stem])


def teacher_prompt(
    text: str, shown: Sequence[str], *, examples: Sequence[Example] = (), use_labels: bool = False
) -> str:
    """The teacher's prompt: Figure 5 examples (if any), the question with its options as shown, and
    ``Let's think step-by-step.`` pre-filled in the assistant turn."""
    return build_prompt(text, shown, examples=examples, cot=True, use_labels=use_labels)


def cot_row(sample: Sample, judgement: Judgement, *, source: str, use_labels: bool, teacher: str) -> dict:
    """The output row of a kept chain: clinray's own SFT layout (``chat``) plus what the index needs.

    ``id`` is ``<question id>#<sample>``; ``prompter`` shows the options in the sample's order;
    ``options``/``answer_index`` are in that order too (the Medprompt store shows an example's options
    as they are stored), ``question_id``/``permutation`` join the row back to its question.
    """
    if judgement.verdict != "accepted":
        raise ValueError(f"only accepted chains become rows, not {judgement.verdict}")
    q, shown, gold = sample.question, sample.shown, sample.gold_shown
    labels = list(LETTERS[: len(shown)]) if use_labels else None
    answer = mcq_answer(option_display(shown, gold, use_labels=use_labels), reasoning=judgement.reasoning)
    return {
        "id": sample.key,
        "system": MCQ_SYSTEM_PROMPT,
        "prompter": format_mcq(question_text(q), shown, labels=labels),
        "assistant": answer,
        "source": source,
        "has_cot": True,
        "question_id": q.id,
        "benchmark": q.benchmark,
        "sample": sample.number,
        "permutation": list(sample.perm),
        "question": q.stem,
        "contexts": list(q.meta.get("contexts", ())),
        "options": shown,
        "answer_index": gold,
        "explanation": judgement.reasoning,
        "parse_form": judgement.form,
        "teacher": teacher,
    }
