"""Read the CoT stage's ``cot.jsonl`` back as questions with a verified explanation (for ``clinray index``).

Each row is one verified chain: the question's id, stem and options *in the order the chain saw them*,
the correct option's index in that order and the reasoning. As a :class:`~clinray.qa.Question` it keeps
that order, so an example shown from the store matches its reasoning ("option C ..." still means C). A
row that does not have these fields is a :class:`~clinray.qa.Skipped` (``bad_json``, ``bad_cot_row``),
never a silent drop. The SFT path reads the same file with the ``chat`` layout
(:func:`clinray.sft.sources.read_chat`).
"""

from __future__ import annotations

from pathlib import Path

from clinray.qa.record import BadRow, Question, Skipped

__all__ = ["read_cot_questions"]


def _question(rec: object) -> Question:
    if isinstance(rec, BadRow):
        raise rec
    if not isinstance(rec, dict):
        raise BadRow("bad_cot_row", f"a {type(rec).__name__}, not an object")
    qid, stem, options = rec.get("question_id"), rec.get("question"), rec.get("options")
    index, explanation = rec.get("answer_index"), rec.get("explanation")
    if not isinstance(qid, str) or qid.count("/") < 2:
        raise BadRow("bad_cot_row", "no question_id of the form benchmark/split/native")
    if not isinstance(stem, str) or not stem.strip():
        raise BadRow("bad_cot_row", "empty question")
    if (
        not isinstance(options, list)
        or len(options) < 2
        or not all(isinstance(o, str) and o for o in options)
    ):
        raise BadRow("bad_cot_row", "options is not a list of at least 2 texts")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options):
        raise BadRow("bad_cot_row", f"answer_index {index!r} out of range for {len(options)} options")
    if not isinstance(explanation, str) or not explanation.strip():
        raise BadRow("bad_cot_row", "empty explanation")
    benchmark, split, _ = qid.split("/", 2)
    contexts = [c for c in rec.get("contexts") or [] if isinstance(c, str) and c]
    return Question(
        id=qid,
        benchmark=benchmark,
        split=split,
        stem=stem.strip(),
        options=tuple(options),
        answer_index=index,
        explanation=explanation.strip(),
        meta={"contexts": contexts, "chain_id": rec.get("id"), "source": rec.get("source") or benchmark},
    )


def read_cot_questions(path: str | Path) -> tuple[list[Question], list[Skipped]]:
    """``(questions, skipped)`` of a ``cot.jsonl``, in file order (a question may appear once per chain)."""
    from clinray.qa.readers import iter_json_lines

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CoT file {path} does not exist (the cot.jsonl that `clinray cot` writes)")
    questions: list[Question] = []
    skipped: list[Skipped] = []
    for locator, _, rec in iter_json_lines(path.read_bytes(), path.name, path.stem):
        try:
            q = _question(rec)
        except BadRow as exc:
            skipped.append(Skipped(locator, exc.reason, exc.detail))
            continue
        q.meta["locator"] = locator
        questions.append(q)
    return questions, skipped
