"""Find the chosen option in a generated completion.

Models write their answer in many ways: ``Therefore, the correct answer is: C. Ibuprofen``,
``Answer: C``, ``(C)``, or just the option text. The parser looks at the text after the *last* answer
marker first (the reasoning before it often names several options), then, without a marker, at a
completion that is only a letter or names exactly one option. It never guesses: when nothing matches
unambiguously it returns ``None`` and the caller falls back to scoring each option's likelihood (the
paper's method), so a parse is either right about what the model wrote or absent.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from clinray.models.chat_template import STOP_STRINGS
from clinray.prompting.templates import LETTERS

__all__ = ["ParsedAnswer", "parse_answer", "reasoning_of", "clean_completion"]

_MARKER = re.compile(
    r"(?:correct\s+(?:answer|option|choice)\s+is|answer\s+is|final\s+answer|answer|option\s+is)\s*[:\-]?",
    re.IGNORECASE,
)
_COT_ANSWER = re.compile(r"therefore,?\s+the\s+correct\s+answer\s+is", re.IGNORECASE)
#: "C", "C.", "(C)", "C)", "C:", "option C" at the start of the answer segment (upper case only).
_STRONG_LETTER = re.compile(r"^\W{0,3}(?:(?i:option)\s+)?\(?([A-J])(?:[.):,]|\s*$)")
#: "C Ibuprofen": a letter followed by a word, trusted only when no option text matches.
_WEAK_LETTER = re.compile(r"^\W{0,3}\(?([A-J])\s")


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """Outcome of parsing one completion."""

    index: int | None
    """0-based index among the options as shown, or None when no answer could be read."""
    form: str
    """How it was read: ``marker_letter``, ``marker_text``, ``letter_only``, ``text_only`` or ``none``."""


def clean_completion(text: str) -> str:
    """Cut a completion at the first role or end token (a model may go on with a new turn)."""
    cut = len(text)
    for stop in STOP_STRINGS:
        pos = text.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()


def reasoning_of(completion: str) -> str:
    """The reasoning part of a CoT completion: everything before ``Therefore, the correct answer is``."""
    text = clean_completion(completion)
    match = _COT_ANSWER.search(text)
    return (text[: match.start()] if match else text).strip()


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _match_text(segment: str, options: Sequence[str]) -> int | None:
    """Index of the longest option whose normalized text occurs in ``segment``, if unambiguous."""
    seg = f" {_norm(segment)} "
    found = [(len(_norm(opt)), i) for i, opt in enumerate(options) if _norm(opt) and f" {_norm(opt)} " in seg]
    if not found:
        return None
    found.sort(reverse=True)
    longest = found[0][0]
    winners = {i for n, i in found if n == longest}
    if len(winners) > 1:
        return None
    # a shorter option contained in the longest one is not a competitor; any other one is
    best = found[0][1]
    best_norm = _norm(options[best])
    for _, i in found[1:]:
        if f" {_norm(options[i])} " not in f" {best_norm} ":
            return None
    return best


def _read_segment(segment: str, options: Sequence[str]) -> tuple[int | None, str]:
    segment = segment.strip()
    letter = _STRONG_LETTER.match(segment)
    if letter and LETTERS.index(letter.group(1)) < len(options):
        return LETTERS.index(letter.group(1)), "letter"
    idx = _match_text(segment, options)
    if idx is not None:
        return idx, "text"
    letter = _WEAK_LETTER.match(segment)
    if letter and LETTERS.index(letter.group(1)) < len(options):
        return LETTERS.index(letter.group(1)), "letter"
    return None, ""


def parse_answer(completion: str, options: Sequence[str]) -> ParsedAnswer:
    """Read the chosen option (index among ``options`` as shown) from a completion.

    Args:
        completion: the generated text (the reasoning and answer), possibly with trailing turns.
        options: the option texts in the order the prompt showed them.
    """
    text = clean_completion(completion)
    markers = list(_MARKER.finditer(text))
    for marker in reversed(markers):
        segment = text[marker.end() :].split("\n", 1)[0]
        idx, how = _read_segment(segment, options)
        if idx is not None:
            return ParsedAnswer(idx, f"marker_{how}")
    stripped = text.strip()
    letter = re.fullmatch(r"\W{0,3}\(?([A-J])\)?\W{0,3}", stripped)
    if letter and LETTERS.index(letter.group(1)) < len(options):
        return ParsedAnswer(LETTERS.index(letter.group(1)), "letter_only")
    idx = _match_text(stripped, options)
    if idx is not None and not markers:
        return ParsedAnswer(idx, "text_only")
    return ParsedAnswer(None, "none")
