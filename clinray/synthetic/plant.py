"""Planted ground truth: exact and near duplicates, repeated passages, junk and corrupt inputs.

Near-duplicates are made by replacing evenly spread words of an original until the measured Jaccard of
5-word shingles (:func:`clinray.data.text.shingles`, the one definition used everywhere) lands on a
target drawn from a promised band, by bisection on the number of edits. Measuring rather than
predicting costs a few shingle computations per pair but makes the manifest exact by construction.
"""

from __future__ import annotations

import random
import re
import unicodedata

from clinray.data.text import jaccard, shingles

#: Bands promised by docs/tiny_world.md: removed at threshold 0.85 / kept. Targets are drawn inside.
HIGH_BAND = (0.88, 0.99)
LOW_BAND = (0.40, 0.78)
_HIGH_TARGET = (0.90, 0.97)
_LOW_TARGET = (0.45, 0.72)

_WORD = re.compile(r"\w+")
_REPLACEMENTS = [
    "quietly",
    "orange",
    "seven",
    "window",
    "paper",
    "marble",
    "listen",
    "copper",
    "gentle",
    "harbour",
    "velvet",
    "ladder",
    "silver",
    "candle",
    "meadow",
    "pocket",
    "thunder",
    "cotton",
]

#: Boilerplate passages (100-500 bytes, ASCII, no markup characters) planted into many documents.
PASSAGES = (
    "Disclaimer: this material is provided for educational purposes only and does not replace the "
    "judgement of a qualified clinician. Always consult the full prescribing information before starting "
    "any treatment.",
    "Copyright 2024 Northbridge Medical Publishing. All rights reserved. No part of this publication may be "
    "reproduced, stored in a retrieval system or transmitted in any form without the prior written "
    "permission of the publisher.",
    "Standard warning: keep all medicines out of the sight and reach of children. Do not use after the "
    "expiry date printed on the carton. Report suspected side effects to your national reporting scheme.",
    "Conflict of interest statement: the authors declare that the research was conducted in the absence of "
    "any commercial or financial relationships that could be construed as a potential conflict of interest.",
    "Editorial note: this page is reviewed every two years by the editorial board. Readers who notice an "
    "error are invited to write to the editors, who will publish a correction in the next issue.",
    "Funding: this work received no specific grant from any funding agency in the public, commercial or "
    "not-for-profit sectors. Data are available from the corresponding author on reasonable request.",
)

JUNK_TEXTS = (
    "Page not found.",
    "Click here to subscribe to our newsletter.",
    "Loading, please wait",
    "Back to top | Print this page",
    "Share on social media",
    "Login required to view this content.",
    "Table of contents",
    "Advertisement",
)


def _edit(text: str, num_edits: int, rng_seed: str) -> str:
    """Replace ``num_edits`` evenly spread words of ``text`` (deterministic for a given seed)."""
    matches = list(_WORD.finditer(text))
    if num_edits <= 0 or not matches:
        return text
    step = len(matches) / num_edits
    rng = random.Random(rng_seed)
    positions = {min(len(matches) - 1, int(i * step + step / 2)) for i in range(num_edits)}
    out, last = [], 0
    for i, m in enumerate(matches):
        if i in positions:
            out.append(text[last : m.start()])
            out.append(rng.choice(_REPLACEMENTS))
            last = m.end()
    out.append(text[last:])
    return "".join(out)


def near_duplicate(text: str, *, band: str, rng: random.Random) -> tuple[str, float]:
    """A copy of ``text`` whose shingle Jaccard with it lies in ``band`` ("high" or "low").

    Raises:
        ValueError: if the text is too short to reach the band (use 300+ words).
    """
    lo, hi = HIGH_BAND if band == "high" else LOW_BAND
    target = rng.uniform(*(_HIGH_TARGET if band == "high" else _LOW_TARGET))
    seed = f"edit:{rng.random()}"
    base = shingles(text, 5)
    num_words = len(_WORD.findall(text))
    left, right = 1, max(1, num_words // 2)
    best: tuple[str, float] | None = None
    while left <= right:
        mid = (left + right) // 2
        copy = _edit(text, mid, seed)
        j = jaccard(base, shingles(copy, 5))
        if lo <= j <= hi and (best is None or abs(j - target) < abs(best[1] - target)):
            best = (copy, j)
        if j > target:
            left = mid + 1
        else:
            right = mid - 1
    if best is None:
        raise ValueError(
            f"could not plant a {band} near-duplicate in a {num_words}-word text; use 300+ words"
        )
    return best


def exact_duplicate_text(text: str, *, rng: random.Random) -> str:
    """The same text up to whitespace and Unicode normalization (NFD, doubled spaces, trailing blanks)."""
    text = unicodedata.normalize("NFD", text)
    words = text.split(" ")
    k = rng.randint(3, 9)
    text = " ".join(w + (" " if i % k == 0 else "") for i, w in enumerate(words))
    return "\n".join(line + ("  " if i % 2 else "") for i, line in enumerate(text.split("\n")))


def corrupt_truncated_xml(xml: str) -> bytes:
    """A JATS file cut in the middle of an element (inside a tag name)."""
    cut = xml.index("<p>", len(xml) // 2) + 2
    return xml[:cut].encode()


def corrupt_truncated_gzip(gz: bytes) -> bytes:
    return gz[: max(20, len(gz) // 2)]


def corrupt_binary(rng: random.Random) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" + rng.randbytes(700)


def corrupt_non_utf8(text: str) -> bytes:
    """UTF-8 text with every 20th byte set to 0xFF: far more invalid bytes than a reader keeps.

    (A Latin-1 file is no longer corrupt: the readers detect its encoding and keep it.)
    """
    data = bytearray(("Résumé des recommandations thérapeutiques. " + text).encode("utf-8"))
    data[::20] = b"\xff" * len(data[::20])
    return bytes(data)
