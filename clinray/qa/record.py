"""The one question record every consumer shares, the set a reader returns, and the id rule.

A :class:`Question` is layout-free: a stem, a tuple of option texts, the answer's index (``None`` for an
unlabelled question) and a stable ``id`` of the form ``{benchmark}/{split}/{native}``, where ``native`` is
the record's own id when the layout has one (MedQA-style ``id``, MedMCQA ``id``, PubMedQA's PMID key)
and else ``{file stem}:{row number}`` (MMLU: ``{subject}:{row number}``). Evaluation sample logs,
decontamination hits and the Medprompt index all carry this id, so they join.

A :class:`QuestionSet` is what a reader returns: the questions plus every row it could not use, each
with its locator and reason, so a caller shows them instead of losing them. Trade-off: a reader never
raises on a bad row (a sweep over a real file with one broken line should still run, and say so); it
raises only when nothing usable is left, which is then the user's error to fix.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

LETTERS = "ABCDEFGHIJ"
#: Benchmark name -> the native layout its files use.
BENCHMARKS = {
    "medqa": "medqa",
    "medqa_5": "medqa",
    "usmle": "medqa",
    "mmlu": "mmlu",
    "medmcqa": "medmcqa",
    "pubmedqa": "pubmedqa",
}
#: Skipped rows listed in :meth:`QuestionSet.report` (all are counted).
MAX_SKIPPED_LISTED = 20
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


class BadRow(ValueError):
    """A row a reader cannot use: ``reason`` is a short code counted per file, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class Skipped(NamedTuple):
    """A row a reader skipped: where it is (``test.jsonl:3``), the reason code and a human detail."""

    locator: str
    reason: str
    detail: str = ""


def question_id(benchmark: str, split: str, native: str) -> str:
    """The stable id ``{benchmark}/{split}/{native}`` shared by evaluation, decontamination and the index."""
    return f"{benchmark}/{split}/{native}"


def split_of(path: str | Path, benchmark: str) -> str:
    """The split a file holds, from its name: ``test.jsonl`` -> ``test``, ``anatomy_test.csv`` -> ``test``.

    A hub shard suffix (``validation-00000-of-00001.parquet``) is dropped, and MedMCQA's ``validation``
    is its release's ``dev``, so the release JSON and the hub Parquet give the same ids.
    """
    stem = _SHARD.sub("", Path(path).stem)
    if benchmark == "mmlu" and "_" in stem:
        stem = stem.rsplit("_", 1)[1]
    if benchmark == "medmcqa" and stem == "validation":
        stem = "dev"
    return stem


@dataclasses.dataclass(frozen=True, slots=True)
class Question:
    """One multiple-choice question, whatever layout it was read from."""

    id: str
    """Stable id ``{benchmark}/{split}/{native}``."""
    benchmark: str
    """``medqa``, ``medqa_5``, ``usmle``, ``mmlu``, ``medmcqa`` or ``pubmedqa``."""
    split: str
    """The file's split (``test``, ``dev``, ``train``, ``sample_exam``, ...)."""
    stem: str
    """The question text (PubMedQA: the question only; its abstract is ``meta["contexts"]``)."""
    options: tuple[str, ...]
    """Option texts in order (letters A, B, ... by position)."""
    answer_index: int | None = None
    """Index of the correct option; ``None`` for an unlabelled question."""
    explanation: str | None = None
    """The layout's explanation where it has one (MedMCQA ``exp``, ``explanation``), else ``None``."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)
    """Everything else: ``native_id``, ``locator``, MMLU ``subject``, PubMedQA ``contexts``, native fields."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if self.answer_index is not None and not 0 <= self.answer_index < len(self.options):
            raise ValueError(
                f"question {self.id}: answer_index {self.answer_index} out of range for "
                f"{len(self.options)} options"
            )

    @classmethod
    def create(
        cls,
        *,
        benchmark: str,
        split: str,
        native: str,
        stem: str,
        options: Iterable[str],
        answer_index: int | None = None,
        explanation: str | None = None,
        meta: dict[str, Any] | None = None,
        own_id: bool = True,
    ) -> Question:
        """A question whose id is built from ``native``.

        ``own_id``: ``native`` is the record's own id (kept as ``meta["native_id"]``, which writers write
        back), not one numbered from the file (MMLU rows, MedQA rows without ``id``).
        """
        meta = {"native_id": native, **(meta or {})} if own_id else dict(meta or {})
        return cls(
            id=question_id(benchmark, split, native),
            benchmark=benchmark,
            split=split,
            stem=stem,
            options=tuple(options),
            answer_index=answer_index,
            explanation=explanation,
            meta=meta,
        )

    @property
    def labelled(self) -> bool:
        return self.answer_index is not None

    @property
    def letters(self) -> list[str]:
        return list(LETTERS[: len(self.options)])

    @property
    def text(self) -> str:
        """What a model is asked: the stem, after its abstract (``meta["contexts"]``) for PubMedQA."""
        return "\n".join([*self.meta.get("contexts", ()), self.stem])

    @property
    def answer(self) -> str | None:
        """The correct option's text (``None`` when unlabelled)."""
        return None if self.answer_index is None else self.options[self.answer_index]


def _first_reasons(skipped: Iterable[Skipped], limit: int = 3) -> str:
    counts: Counter = Counter()
    first: dict[str, Skipped] = {}
    for s in skipped:
        counts[s.reason] += 1
        first.setdefault(s.reason, s)
    parts = []
    for reason, n in counts.most_common(limit):
        s = first[reason]
        parts.append(f"{n} x {reason} (first at {s.locator}{': ' + s.detail if s.detail else ''})")
    if len(counts) > limit:
        parts.append(f"{len(counts) - limit} more reasons")
    return "; ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class QuestionSet:
    """What a reader returns: the usable questions, every skipped row with its reason, warnings."""

    source: str
    """The file (or hub dataset) read."""
    questions: tuple[Question, ...]
    skipped: tuple[Skipped, ...] = ()
    """Rows not used, in file order, each ``(locator, reason, detail)``."""
    warnings: tuple[str, ...] = ()
    """Things the caller must show (e.g. an ambiguous MedMCQA ``cop`` base and the setting to fix it)."""

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    @property
    def num_skipped_by_reason(self) -> dict[str, int]:
        """Reason code -> rows skipped for it (most frequent first)."""
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def describe_skipped(self, limit: int = 3) -> str:
        """``'2 x bad_json (first at test.jsonl:3: ...); ...'``, or ``''`` when nothing was skipped."""
        return _first_reasons(self.skipped, limit)

    def report(self) -> dict[str, Any]:
        """JSON-ready counts: questions, skipped rows by reason, the first skipped rows, warnings."""
        return {
            "source": self.source,
            "num_questions": len(self.questions),
            "num_skipped": len(self.skipped),
            "skipped_by_reason": self.num_skipped_by_reason,
            "skipped": [s._asdict() for s in self.skipped[:MAX_SKIPPED_LISTED]],
            "warnings": list(self.warnings),
        }

    def _replace(self, keep: list[Question], more: list[Skipped]) -> QuestionSet:
        return dataclasses.replace(self, questions=tuple(keep), skipped=(*self.skipped, *more))

    def require_answers(self, *, purpose: str) -> QuestionSet:
        """Unlabelled questions become skipped rows (``no_answer``); none labelled is a ``ValueError``."""
        keep = [q for q in self.questions if q.labelled]
        if not keep and self.questions:
            raise ValueError(
                f"{self.source}: none of its {len(self.questions)} questions has an answer, and {purpose} "
                "needs one (an unlabelled split can only be answered: clinray medprompt --questions FILE)"
            )
        more = [
            Skipped(q.meta.get("locator", q.id), "no_answer", "unlabelled question")
            for q in self.questions
            if not q.labelled
        ]
        return self._replace(keep, more)

    def require_num_options(self, num_options: int, *, hint: str = "") -> QuestionSet:
        """Questions with another number of options become skipped rows (``num_options``); none left is an error."""
        keep = [q for q in self.questions if len(q.options) == num_options]
        found = sorted({len(q.options) for q in self.questions} - {num_options})
        if not keep and self.questions:
            raise ValueError(
                f"{self.source} holds {'/'.join(map(str, found))}-option questions where {num_options} "
                f"are expected{'; ' + hint if hint else ''}"
            )
        more = [
            Skipped(
                q.meta.get("locator", q.id),
                "num_options",
                f"{len(q.options)} options, {num_options} expected{'; ' + hint if hint else ''}",
            )
            for q in self.questions
            if len(q.options) != num_options
        ]
        return self._replace(keep, more)

    @classmethod
    def merge(cls, sets: Iterable[QuestionSet], *, source: str) -> QuestionSet:
        """Several files as one set (e.g. every MMLU subject), skipped rows and warnings kept."""
        sets = list(sets)
        return cls(
            source=source,
            questions=tuple(q for s in sets for q in s.questions),
            skipped=tuple(k for s in sets for k in s.skipped),
            warnings=tuple(w for s in sets for w in s.warnings),
        )


def no_valid_rows(source: str, skipped: list[Skipped], layout: str) -> ValueError:
    """The error for a file that yields no usable question: its first reasons and the layout expected."""
    reasons = _first_reasons(skipped) or "the file holds no row"
    return ValueError(f"no valid question rows in {source} ({layout} layout expected): {reasons}")
