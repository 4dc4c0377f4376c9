"""Prompt text of the Medprompt strategies, in the paper's chat format.

A question is shown as the Figure 4 prompter turn (question, then one option per line), by default with
letter labels (``A. text``) so that an answer can be given as a letter or as the option text; few-shot
examples are prior user/assistant turns whose assistant turn is the Figure 5 answer
(``Let's think step-by-step. <reasoning> Therefore, the correct answer is: C. <text>``). The CoT
strategies pre-fill the assistant turn with ``Let's think step-by-step.``, so the model continues the
reasoning exactly as the SFT data taught it. The trade-off: labels make parsing robust but are a
departure from the paper's unlabelled Figure 4 layout, so they are a switch (``use_labels``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from clinray.models.chat_template import (
    COT_ANSWER_PREFIX,
    COT_PREFIX,
    MCQ_SYSTEM_PROMPT,
    format_mcq,
    mcq_answer,
    render_messages,
)

LETTERS = "ABCDEFGHIJ"

__all__ = [
    "LETTERS",
    "Example",
    "option_labels",
    "option_display",
    "render_example_answer",
    "build_prompt",
    "scoring_context",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """One stored training question with its verified chain of thought."""

    id: str
    """Unique id (the leak guard compares it to the asked question's id)."""
    question: str
    """Question stem."""
    options: tuple[str, ...]
    """Option texts in their stored order."""
    answer_index: int
    """0-based index of the correct option in ``options``."""
    explanation: str = ""
    """Reasoning that leads to the correct answer (empty: the turn shows the answer alone)."""
    source: str = ""
    """Dataset the example came from (``medqa``, ``medmcqa``, ...)."""

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise ValueError(f"example {self.id!r} needs at least 2 options, got {len(self.options)}")
        if len(self.options) > len(LETTERS):
            raise ValueError(f"example {self.id!r} has {len(self.options)} options; at most {len(LETTERS)}")
        if not 0 <= self.answer_index < len(self.options):
            raise ValueError(
                f"example {self.id!r}: answer_index {self.answer_index} is outside 0..{len(self.options) - 1}"
            )

    @property
    def answer(self) -> str:
        return self.options[self.answer_index]


def option_labels(num_options: int) -> list[str]:
    """``["A", "B", ...]`` for ``num_options`` options."""
    if not 2 <= num_options <= len(LETTERS):
        raise ValueError(f"a question needs 2 to {len(LETTERS)} options, got {num_options}")
    return list(LETTERS[:num_options])


def option_display(options: Sequence[str], index: int, *, use_labels: bool = True) -> str:
    """How option ``index`` is written in an answer: ``"C. text"`` (labels) or ``"text"``."""
    if use_labels:
        return f"{LETTERS[index]}. {options[index]}"
    return options[index]


def render_example_answer(example: Example, *, use_labels: bool = True, cot: bool = True) -> str:
    """The assistant turn of a few-shot example (Figure 5 with reasoning, Figure 4 without)."""
    shown = option_display(example.options, example.answer_index, use_labels=use_labels)
    reasoning = example.explanation.strip() if cot and example.explanation.strip() else None
    return mcq_answer(shown, reasoning=reasoning)


def build_prompt(
    question: str,
    options: Sequence[str],
    *,
    examples: Sequence[Example] = (),
    cot: bool = True,
    use_labels: bool = True,
    system_prompt: str = MCQ_SYSTEM_PROMPT,
    eos_token: str = "</s>",
) -> str:
    """The full prompt: system, few-shot turns, the question, and the (pre-filled) assistant turn.

    Args:
        question: the question stem.
        options: option texts in the order they are shown.
        examples: few-shot examples, in the order they are shown (the last is closest to the question).
        cot: pre-fill ``Let's think step-by-step.`` and show the examples' reasoning.
        use_labels: prefix options with letters.
        system_prompt: the system turn.
        eos_token: the end-of-turn token of the model's tokenizer.
    """
    labels = option_labels(len(options)) if use_labels else None
    messages = [{"role": "system", "content": system_prompt}]
    for example in examples:
        ex_labels = option_labels(len(example.options)) if use_labels else None
        messages.append(
            {"role": "user", "content": format_mcq(example.question, example.options, labels=ex_labels)}
        )
        messages.append(
            {"role": "assistant", "content": render_example_answer(example, use_labels=use_labels, cot=cot)}
        )
    messages.append({"role": "user", "content": format_mcq(question, options, labels=labels)})
    prompt = render_messages(messages, eos_token=eos_token, add_generation_prompt=True)
    return f"{prompt} {COT_PREFIX}" if cot else prompt


def scoring_context(prompt: str, reasoning: str) -> str:
    """Prompt plus generated reasoning plus ``Therefore, the correct answer is:`` (the paper's scoring)."""
    reasoning = reasoning.strip()
    joined = f"{prompt} {reasoning}" if reasoning else prompt
    return f"{joined} {COT_ANSWER_PREFIX}"
