"""Row parsers of the native layouts: one record in, one :class:`Question` out, or a :class:`BadRow`.

Each parser checks what a scorer needs (a stem, at least two non-empty options, an answer that names one
of them) and raises :class:`BadRow` with a short reason code the readers count per file; an absent
answer is not an error here (``answer_index=None``: an unlabelled question), since answering needs none.
Fields the layout has beyond the record's own go to ``Question.meta`` under their native names, so the
writers can put them back.
"""

from __future__ import annotations

import math
from typing import Any

from clinray.qa.record import LETTERS, BadRow, Question

PUBMEDQA_CHOICES = ("yes", "no", "maybe")
MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")
_MEDQA_KEYS = {"question", "options", "answer_idx", "answer_index", "answer", "id", "explanation", "exp"}
_MEDMCQA_KEYS = {"question", *MEDMCQA_OPTIONS, "cop", "id", "exp"}
_PUBMEDQA_KEYS = {"QUESTION", "CONTEXTS", "final_decision", "LONG_ANSWER"}


def _text(value: Any, reason: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRow(reason, f"empty {what}")
    return value.strip()


def _options(texts: list[Any]) -> tuple[str, ...]:
    if len(texts) < 2:
        raise BadRow("bad_options", f"{len(texts)} options, at least 2 needed")
    return tuple(_text(t, "bad_options", "option text") for t in texts)


def _native(record: dict, key: str, fallback: str) -> tuple[str, bool]:
    """(native id, whether it is the record's own) from ``record[key]``, else the numbered ``fallback``."""
    value = record.get(key)
    if value is None or str(value).strip() == "":
        return fallback, False
    return str(value), True


def _explanation(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _medqa_options(raw: Any) -> tuple[list[str], list[Any]]:
    """(letters, texts) of a MedQA ``options`` field in any of its three spellings."""
    if isinstance(raw, list) and raw and all(isinstance(o, dict) for o in raw):
        raw = {o.get("key"): o.get("value") for o in raw}
    if isinstance(raw, dict) and raw:
        letters = sorted(k for k in raw if isinstance(k, str))
        return letters, [raw[k] for k in letters]
    if isinstance(raw, list) and raw:
        return list(LETTERS[: len(raw)]), list(raw)
    raise BadRow("bad_options", "'options' is not a letter map or a list")


def _medqa_answer(record: dict, letters: list[str], options: tuple[str, ...]) -> int | None:
    idx = record.get("answer_idx")
    if idx is not None:
        if idx not in letters:
            raise BadRow("bad_answer", f"answer_idx {idx!r} is not one of the option letters {letters}")
        index = letters.index(idx)
        text = record.get("answer")
        if isinstance(text, str) and text.strip() and text.strip() != options[index]:
            raise BadRow(
                "bad_answer", f"answer_idx {idx} is {options[index]!r} but answer is {text.strip()!r}"
            )
        return index
    if record.get("answer_index") is not None:
        index = record["answer_index"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options):
            raise BadRow("bad_answer", f"answer_index {index!r} out of range for {len(options)} options")
        return index
    text = record.get("answer")
    if text is None or (isinstance(text, str) and not text.strip()):
        return None  # unlabelled
    if str(text).strip() not in options:
        raise BadRow("bad_answer", f"answer {text!r} is not one of the options")
    return options.index(str(text).strip())


def parse_medqa(record: Any, *, benchmark: str, split: str, native: str) -> Question:
    """One MedQA-layout record; raises :class:`BadRow`."""
    if not isinstance(record, dict):
        raise BadRow("not_an_object", f"a {type(record).__name__}, not an object")
    stem = _text(record.get("question"), "missing_question", "question")
    letters, texts = _medqa_options(record.get("options"))
    options = _options(texts)
    answer = _medqa_answer(record, letters, options)
    native, own_id = _native(record, "id", native)
    meta = {k: v for k, v in record.items() if k not in _MEDQA_KEYS}
    explanation = _explanation(record.get("explanation") or record.get("exp"))
    return Question.create(
        benchmark=benchmark,
        split=split,
        native=native,
        stem=stem,
        options=options,
        answer_index=answer,
        explanation=explanation,
        meta=meta,
        own_id=own_id,
    )


def cop_value(record: Any) -> int | None:
    """The raw ``cop`` value: ``None`` when absent (unlabelled); raises :class:`BadRow` when not an integer."""
    value = record.get("cop") if isinstance(record, dict) else None
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    try:
        cop = int(value)
        if isinstance(value, bool) or cop != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise BadRow("bad_answer", f"cop {value!r} is not an integer") from None
    return None if cop == -1 else cop  # -1: no answer (an unlabelled split)


def parse_medmcqa(record: Any, *, benchmark: str, split: str, native: str, cop_base: int) -> Question:
    """One MedMCQA record, ``cop`` read with the given base; raises :class:`BadRow`."""
    if not isinstance(record, dict):
        raise BadRow("not_an_object", f"a {type(record).__name__}, not an object")
    stem = _text(record.get("question"), "missing_question", "question")
    options = _options([record.get(k) for k in MEDMCQA_OPTIONS])
    cop = cop_value(record)
    answer = None if cop is None else cop - cop_base
    if answer is not None and not 0 <= answer < len(options):
        raise BadRow("bad_answer", f"cop {cop} is not {cop_base}..{cop_base + 3} (cop_base {cop_base})")
    native, own_id = _native(record, "id", native)
    meta = {k: v for k, v in record.items() if k not in _MEDMCQA_KEYS}
    return Question.create(
        benchmark=benchmark,
        split=split,
        native=native,
        stem=stem,
        options=options,
        answer_index=answer,
        explanation=_explanation(record.get("exp")),
        meta=meta,
        own_id=own_id,
    )


def parse_mmlu(row: Any, *, benchmark: str, split: str, native: str, subject: str) -> Question:
    """One MMLU CSV row (question, A-D, answer letter; no answer column or an empty one: unlabelled)."""
    if not isinstance(row, list | tuple) or len(row) not in (5, 6):
        raise BadRow("bad_columns", f"expected 6 columns, got {len(row) if isinstance(row, list) else row!r}")
    answer = row[5].strip() if len(row) == 6 else ""
    if answer and answer not in LETTERS[:4]:
        raise BadRow("bad_answer", f"answer {answer!r} is not A-D")
    return Question.create(
        benchmark=benchmark,
        split=split,
        native=native,
        stem=_text(row[0], "missing_question", "question"),
        options=_options(list(row[1:5])),
        answer_index=LETTERS.index(answer) if answer else None,
        meta={"subject": subject},
        own_id=False,  # MMLU rows have no id: {subject}:{row}
    )


def parse_pubmedqa(record: Any, *, benchmark: str, split: str, native: str) -> Question:
    """One PubMedQA entry (``native`` is its PMID key); ``final_decision`` absent: unlabelled."""
    if not isinstance(record, dict):
        raise BadRow("not_an_object", f"a {type(record).__name__}, not an object")
    stem = _text(record.get("QUESTION"), "missing_question", "QUESTION")
    decision = record.get("final_decision")
    answer = None
    if decision is not None and str(decision).strip():
        decision = str(decision).strip().lower()
        if decision not in PUBMEDQA_CHOICES:
            raise BadRow("bad_answer", f"final_decision {decision!r} is not yes/no/maybe")
        answer = PUBMEDQA_CHOICES.index(decision)
    contexts = [c.strip() for c in record.get("CONTEXTS") or [] if isinstance(c, str) and c.strip()]
    meta = {"contexts": contexts, **{k: v for k, v in record.items() if k not in _PUBMEDQA_KEYS}}
    return Question.create(
        benchmark=benchmark,
        split=split,
        native=native,
        stem=stem,
        options=PUBMEDQA_CHOICES,
        answer_index=answer,
        explanation=_explanation(record.get("LONG_ANSWER")),
        meta=meta,
    )
