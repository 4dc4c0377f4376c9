"""Writers of the same native layouts the readers read, so a file written here reads back unchanged.

The tiny world (``clinray/synthetic/questions.py``) and the evaluation fixtures write their question
files through these, so their layouts cannot drift from what evaluation, decontamination and the index
read. A question's native id (``meta["native_id"]``) becomes the record's ``id`` (PubMedQA: its key);
the other native fields kept in ``meta`` by a reader are written back as they were. Trade-off: the
``format_*`` functions return text (the world builds its files in memory before writing them), the
``write_*`` functions only add the file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clinray.qa.record import LETTERS, Question
from clinray.qa.rows import MEDMCQA_OPTIONS, PUBMEDQA_CHOICES

#: ``meta`` keys a reader adds (not native fields, never written).
READER_META = frozenset({"native_id", "locator", "subject", "contexts"})


def _extras(q: Question) -> dict[str, Any]:
    return {k: v for k, v in q.meta.items() if k not in READER_META}


def _native_id(q: Question) -> dict[str, str]:
    native = q.meta.get("native_id")
    return {} if native is None else {"id": str(native)}


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def medqa_record(q: Question) -> dict[str, Any]:
    """A MedQA JSONL record: question, answer, options {A: ...}, native fields, answer_idx, id."""
    record: dict[str, Any] = {"question": q.stem}
    if q.labelled:
        record["answer"] = q.answer
    record["options"] = dict(zip(LETTERS, q.options, strict=False))
    record.update(_extras(q))
    if q.labelled:
        record["answer_idx"] = LETTERS[q.answer_index]
    record.update(_native_id(q))
    if q.explanation is not None:
        record["explanation"] = q.explanation
    return record


def medmcqa_record(q: Question, *, cop_base: int = 1) -> dict[str, Any]:
    """A MedMCQA record: id, question, opa..opd, cop (``cop_base``: 1 release JSON, 0 hub), exp, native fields."""
    if len(q.options) != len(MEDMCQA_OPTIONS):
        raise ValueError(f"question {q.id}: MedMCQA has 4 options, this one {len(q.options)}")
    record: dict[str, Any] = {**_native_id(q), "question": q.stem}
    record.update(zip(MEDMCQA_OPTIONS, q.options, strict=True))
    if q.labelled:
        record["cop"] = q.answer_index + cop_base
    if q.explanation is not None:
        record["exp"] = q.explanation
    record.update(_extras(q))
    return record


def mmlu_row(q: Question) -> list[str]:
    """An MMLU CSV row: question, A, B, C, D, answer letter (empty when unlabelled)."""
    if len(q.options) != 4:
        raise ValueError(f"question {q.id}: MMLU has 4 options, this one {len(q.options)}")
    return [q.stem, *q.options, LETTERS[q.answer_index] if q.labelled else ""]


def pubmedqa_record(q: Question) -> dict[str, Any]:
    """A PubMedQA entry (its key is the PMID): QUESTION, CONTEXTS, native fields, final_decision, LONG_ANSWER."""
    if tuple(q.options) != PUBMEDQA_CHOICES:
        raise ValueError(f"question {q.id}: PubMedQA's options are yes/no/maybe, not {list(q.options)}")
    record: dict[str, Any] = {"QUESTION": q.stem, "CONTEXTS": list(q.meta.get("contexts", []))}
    record.update(_extras(q))
    if q.labelled:
        record["final_decision"] = q.answer
    if q.explanation is not None:
        record["LONG_ANSWER"] = q.explanation
    return record


def format_medqa(questions: Iterable[Question]) -> str:
    return "".join(_json_line(medqa_record(q)) for q in questions)


def format_medmcqa(questions: Iterable[Question], *, cop_base: int = 1) -> str:
    """JSON lines, as the release files (``cop`` 1-based unless ``cop_base=0``)."""
    return "".join(_json_line(medmcqa_record(q, cop_base=cop_base)) for q in questions)


def format_mmlu(questions: Iterable[Question]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(mmlu_row(q) for q in questions)
    return buf.getvalue()


def format_pubmedqa(questions: Iterable[Question], *, indent: int | None = 1) -> str:
    data = {}
    for q in questions:
        key = str(q.meta.get("native_id") or q.id.rsplit("/", 1)[-1])
        data[key] = pubmedqa_record(q)
    return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"


def write_questions(
    path: str | Path, questions: Iterable[Question], *, layout: str, cop_base: int | None = None
) -> Path:
    """Write ``questions`` to ``path`` in ``layout`` (MedMCQA ``.parquet``: hub style, ``cop`` 0-based)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    questions = list(questions)
    if layout == "medmcqa" and path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        base = 0 if cop_base is None else cop_base
        pq.write_table(pa.Table.from_pylist([medmcqa_record(q, cop_base=base) for q in questions]), path)
        return path
    if layout == "medqa":
        text = format_medqa(questions)
    elif layout == "medmcqa":
        text = format_medmcqa(questions, cop_base=1 if cop_base is None else cop_base)
    elif layout == "mmlu":
        text = format_mmlu(questions)
    elif layout == "pubmedqa":
        text = format_pubmedqa(questions)
    else:
        raise ValueError(f"unknown layout {layout!r}; choose from medqa, medmcqa, mmlu, pubmedqa")
    path.write_text(text, encoding="utf-8")
    return path
