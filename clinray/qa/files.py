"""``QuestionFile``: one question file in a native layout, as a config entry (the index and ``clinray cot``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["QuestionFile"]


@dataclasses.dataclass(kw_only=True, slots=True)
class QuestionFile:
    """One file of multiple-choice questions, read by :mod:`clinray.qa`."""

    path: str
    """A question file in a native layout (MedQA/clinray example JSONL, MedMCQA JSON lines or Parquet, MMLU CSV, PubMedQA)."""
    source: str = ""
    """Label of the file's questions in the rows and the report (default: the file's parent folder name)."""
    benchmark: str = ""
    """The benchmark whose layout the file has (``medqa``, ``medmcqa``, ...; '' = from its folder or content)."""
    cop_base: str = "auto"
    """MedMCQA ``cop`` base: ``auto`` (a 0 anywhere means 0-based), ``0`` or ``1``."""

    def __post_init__(self) -> None:
        from clinray.qa.readers import normalize_cop_base
        from clinray.qa.record import BENCHMARKS

        self.cop_base = normalize_cop_base(self.cop_base)
        if self.benchmark and self.benchmark not in BENCHMARKS:
            raise ValueError(
                f"inputs[].benchmark {self.benchmark!r} unknown; choose from {sorted(BENCHMARKS)}"
            )
        if not self.path:
            raise ValueError("inputs[].path is not set (a question file)")

    @property
    def label(self) -> str:
        """The source label: ``source``, else the file's parent folder name."""
        return self.source or Path(self.path).parent.name
