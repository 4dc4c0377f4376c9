"""Fit a few-shot prompt to the model's window by dropping whole examples, farthest first.

A prompt longer than the window would otherwise be cut by the engine on the left, in the middle of an
example (or of the system turn), with only a tokenizer warning. Instead, before generation, each run's
prompt is measured with the engine's own tokenizer (:class:`~clinray.engines.base.TokenWindow`) and
examples are removed one at a time until it fits: for kNN examples the least similar first (they are
shown least similar first, so the most similar, next to the question, stays longest); for static
examples the last of the seeded draw first (so a shorter static prompt shows a prefix of the same
draw, the same for every question). The budget is the window less ``max_new_tokens`` less what option
scoring appends (``Therefore, the correct answer is:`` and the longest option), so a scored run fits
too. A question too long for the window on its own keeps no example and is left to the engine's cut,
recorded in ``num_prompt_tokens``. Engines without a tokenizer (an OpenAI-compatible server) give no
budget, and prompts go as built. The trade-off: each run's prompt is tokenized once more (and once per
candidate when it is over the budget), a small cost next to generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from clinray.models.chat_template import COT_ANSWER_PREFIX
from clinray.prompting.templates import Example

__all__ = ["Window", "FittedPrompt", "fit_examples", "window_of"]


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """The engine's prompt budget and its token counter."""

    max_prompt_tokens: int
    """Window less the generated tokens."""
    count: Callable[[Sequence[str]], list[int]]
    """Tokens of each text."""

    def budget(self, options_shown: Sequence[str]) -> int:
        """Tokens a prompt may hold when option scoring may append the answer prefix and an option."""
        suffix = f" {COT_ANSWER_PREFIX} {max(options_shown, key=len, default='')}"
        return self.max_prompt_tokens - self.count([suffix])[0] - 1


@dataclasses.dataclass(frozen=True, slots=True)
class FittedPrompt:
    prompt: str
    examples: list[Example]
    """The examples kept, in shown order."""
    num_dropped: int
    num_tokens: int | None
    """The prompt's tokens (None without a window)."""


def window_of(engine, *, max_new_tokens: int) -> Window | None:
    """The engine's :class:`Window`, or None when it cannot count tokens or does not know its window."""
    get_max, count = getattr(engine, "max_prompt_tokens", None), getattr(engine, "count_tokens", None)
    if not callable(get_max) or not callable(count):
        return None
    max_tokens = get_max(max_new_tokens=max_new_tokens)
    return None if max_tokens is None else Window(int(max_tokens), count)


def fit_examples(
    build: Callable[[Sequence[Example]], str],
    examples: Sequence[Example],
    *,
    drop_order: Sequence[int],
    budget: int | None,
    count: Callable[[Sequence[str]], list[int]] | None,
) -> FittedPrompt:
    """The prompt ``build(kept examples)`` with the fewest examples dropped that fits ``budget`` tokens.

    Args:
        build: the prompt of a list of examples (in shown order).
        examples: the examples in shown order.
        drop_order: positions in ``examples``, the first to drop first (a permutation of them).
        budget: most tokens of the prompt; None: no limit.
        count: the engine's token counter (needed with a budget).
    """
    assert sorted(drop_order) == list(range(len(examples))), "drop_order must be a permutation"
    full = build(examples)
    if budget is None or count is None:
        return FittedPrompt(full, list(examples), 0, None)
    [num_tokens] = count([full])
    if num_tokens <= budget:
        return FittedPrompt(full, list(examples), 0, num_tokens)
    candidates = []
    for num_dropped in range(1, len(examples) + 1):
        gone = set(drop_order[:num_dropped])
        kept = [ex for i, ex in enumerate(examples) if i not in gone]
        candidates.append((build(kept), kept, num_dropped))
    counts = count([prompt for prompt, _, _ in candidates]) if candidates else []
    for (prompt, kept, num_dropped), n in zip(candidates, counts, strict=True):
        if n <= budget:
            return FittedPrompt(prompt, kept, num_dropped, n)
    if candidates:  # not even the question alone fits: no example, the engine cuts the rest
        prompt, kept, num_dropped = candidates[-1]
        return FittedPrompt(prompt, kept, num_dropped, counts[-1])
    return FittedPrompt(full, [], 0, num_tokens)
