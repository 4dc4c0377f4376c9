"""Document filters with the datatrove contract: ``keep(row) -> (bool, reason)``.

* :class:`LengthFilter`: the paper's low-length filter, on characters and/or words.
* :class:`PIIFilter`: emails, phone numbers, US SSNs, MRN-like identifiers and dates of birth; drops
  the document (the paper excluded data with PII) or redacts the spans, by config.

The PII patterns are regular expressions, deliberately conservative (MRNs and dates of birth need a
label such as ``MRN:`` or ``DOB:``) so that drug doses, lab values and years in clinical prose are not
mistaken for identifiers. The cost is recall: an unlabeled 7-digit number is not caught. A
model-based de-identifier would be the next step for real patient notes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from clinray.data.stage import Filter

PII_KINDS = ("email", "phone", "ssn", "mrn", "dob")

_DATE = (
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}-\d{2}-\d{2}|"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2},?\s+\d{4}|"
    r"\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{4})"
)
PII_PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "phone": re.compile(r"(?<![\w.-])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w-])"),
    "ssn": re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])"),
    "mrn": re.compile(
        r"\b(?:MRN|MR#|medical\s+record\s+(?:number|no\.?|#))\s*[:#]?\s*[A-Z]{0,3}-?\d{5,12}\b", re.IGNORECASE
    ),
    "dob": re.compile(r"\b(?:DOB|D\.O\.B\.?|date\s+of\s+birth|born\s+on)\s*[:\-]?\s*" + _DATE, re.IGNORECASE),
}


@dataclasses.dataclass(kw_only=True, slots=True)
class LengthFilterConfig:
    """The low-length filter (a document must pass every threshold that is set)."""

    enabled: bool = True
    """Run the filter."""
    min_words: int = 20
    """Fewer ``\\w+`` words than this: dropped as ``too_few_words`` (0 = no word threshold)."""
    min_chars: int = 0
    """Fewer characters than this: dropped as ``too_few_chars`` (0 = no character threshold)."""

    def __post_init__(self):
        if self.min_words < 0 or self.min_chars < 0:
            raise ValueError("length.min_words and length.min_chars must be >= 0 (0 disables a threshold)")


@dataclasses.dataclass(kw_only=True, slots=True)
class PIIFilterConfig:
    """The PII filter."""

    enabled: bool = True
    """Run the filter."""
    mode: Literal["drop", "redact"] = "drop"
    """``drop``: the document goes to the rejects as ``pii_<kind>``; ``redact``: spans become ``[KIND]``."""
    kinds: list[str] = dataclasses.field(default_factory=lambda: list(PII_KINDS))
    """Which identifiers to look for, among email, phone, ssn, mrn, dob."""

    def __post_init__(self):
        unknown = sorted(set(self.kinds) - set(PII_KINDS))
        if unknown:
            raise ValueError(f"pii.kinds has unknown kinds {unknown}; choose among {list(PII_KINDS)}")


_WORD = re.compile(r"\w+")


def count_words(text: str, *, at_least: int | None = None) -> int:
    """Number of ``\\w+`` words (as :func:`clinray.data.text.word_tokens` counts them); stops counting
    once ``at_least`` is reached, so long documents cost no more than short ones."""
    n = 0
    for _ in _WORD.finditer(text):
        n += 1
        if at_least is not None and n >= at_least:
            break
    return n


class LengthFilter(Filter):
    """Drop documents under ``min_words`` words or ``min_chars`` characters."""

    name = "length_filter"

    def __init__(self, cfg: LengthFilterConfig, *, sink_root: str):
        super().__init__(sink_root=sink_root)
        self.cfg = cfg

    def keep(self, row: dict) -> tuple[bool, str | None]:
        text = row.get("text") or ""
        if self.cfg.min_chars and len(text) < self.cfg.min_chars:
            return False, "too_few_chars"
        if self.cfg.min_words and count_words(text, at_least=self.cfg.min_words) < self.cfg.min_words:
            return False, "too_few_words"
        return True, None


def find_pii(text: str, kinds: list[str] | tuple[str, ...] = PII_KINDS) -> dict[str, list[str]]:
    """The PII spans found in ``text``, by kind (kinds with no match are left out)."""
    found = {}
    for kind in kinds:
        matches = [m.group(0) for m in PII_PATTERNS[kind].finditer(text)]
        if matches:
            found[kind] = matches
    return found


def redact_pii(text: str, kinds: list[str] | tuple[str, ...] = PII_KINDS) -> tuple[str, dict[str, int]]:
    """``text`` with every PII span replaced by ``[KIND]``, and the number of spans per kind."""
    counts = {}
    for kind in kinds:
        text, n = PII_PATTERNS[kind].subn(f"[{kind.upper()}]", text)
        if n:
            counts[kind] = n
    return text, counts


class PIIFilter(Filter):
    """Drop (reason ``pii_<kind>``, the first kind found) or redact documents that contain PII."""

    name = "pii_filter"

    def __init__(self, cfg: PIIFilterConfig, *, sink_root: str):
        super().__init__(sink_root=sink_root)
        self.cfg = cfg
        self.kinds = [k for k in PII_KINDS if k in cfg.kinds]

    def keep(self, row: dict) -> tuple[bool, str | None]:
        text = row.get("text") or ""
        if self.cfg.mode == "drop":
            for kind in self.kinds:
                if PII_PATTERNS[kind].search(text):
                    return False, f"pii_{kind}"
            return True, None
        row["text"], counts = redact_pii(text, self.kinds)
        for kind, n in counts.items():
            self.counters[f"num_redacted_{kind}"] += n
        if counts:
            self.counters["num_docs_redacted"] += 1
        return True, None
