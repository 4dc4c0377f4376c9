"""The decontamination settings, apart from the stage so that configs can hold them without pyarrow or Ray
(the training config does: SFT decontaminates its mixture; ``benchmarks/gpu_check.py`` imports it on a
machine without either). The rule itself is documented in :mod:`clinray.data.decontaminate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

#: Benchmarks known to the loader, by folder name under the questions root.
BENCHMARKS = ("medqa", "medqa_5", "medmcqa", "mmlu", "pubmedqa")


@dataclass(kw_only=True, slots=True)
class DecontamConfig:
    """Decontamination against evaluation test sets."""

    enabled: bool = True
    """Run the stage (it also needs ``questions_root``)."""
    questions_root: str | None = None
    """Folder holding the benchmarks in their native layouts (``medqa/test.jsonl``, ``mmlu/test/*.csv``, ...)."""
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    """Which benchmark folders to read; each must exist under ``questions_root``."""
    ngram: int = 13
    """Words per n-gram (the unit of evidence)."""
    common_ngram_min_questions: int = 3
    """An n-gram in at least this many distinct question stems is template text, not evidence (0: off)."""
    min_distinct_ngrams: int = 2
    """Distinct distinctive n-grams of one question a document must hold (all of them if it has fewer)."""
    min_share: float = 0.25
    """Share of a question's distinctive n-grams a document must hold as well (0: a count only)."""
    action: Literal["remove", "flag"] = "remove"
    """``remove``: drop hits (reason ``contaminated``); ``flag``: keep them, listed in ``metadata.contamination``."""

    def __post_init__(self):
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"decontaminate.benchmarks {unknown} unknown; choose from {list(BENCHMARKS)}")
        if self.ngram < 3:
            raise ValueError(f"decontaminate.ngram must be >= 3 (13 is the convention), got {self.ngram}")
        if self.common_ngram_min_questions == 1 or self.common_ngram_min_questions < 0:
            raise ValueError(
                "decontaminate.common_ngram_min_questions must be 0 (no template rule) or >= 2 (3 is the "
                f"default), got {self.common_ngram_min_questions}: at 1 every n-gram would be template"
            )
        if self.min_distinct_ngrams < 1:
            raise ValueError(
                f"decontaminate.min_distinct_ngrams must be >= 1 (2 is the default), got {self.min_distinct_ngrams}"
            )
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(
                f"decontaminate.min_share must be in [0, 1] (0.25 is the default), got {self.min_share}"
            )

    def required(self, num_distinctive: int) -> int:
        """Distinct n-grams a document must share with a question that has ``num_distinctive`` of them."""
        wanted = max(self.min_distinct_ngrams, math.ceil(self.min_share * num_distinctive - 1e-9))
        return min(num_distinctive, wanted)
