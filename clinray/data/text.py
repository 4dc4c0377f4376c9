"""Text primitives shared by curation stages and the synthetic world: normalization and shingles.

Kept dependency-free and fast: these run per document on every worker. ``shingles`` defines what
"Jaccard similarity" means everywhere in clinray (the world's planted near-duplicates, MinHash LSH,
and the benchmarks), so there is exactly one definition.
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """NFC, control characters removed, runs of spaces collapsed, at most one blank line, stripped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _NEWLINES.sub("\n\n", text).strip()


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+``), punctuation dropped: the unit of shingles."""
    return _WORD.findall(text.lower())


def shingles(text: str, n: int = 5) -> set[str]:
    """The set of ``n``-word shingles of ``text`` (a short text gives one shingle of all its words)."""
    words = word_tokens(text)
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
