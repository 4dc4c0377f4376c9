"""Readers of the Table 3 SFT sources in their native layouts: local files in, a :class:`ConversationSet` out.

Each layout (``LAYOUTS``) reads the files of one public dataset exactly as its hub or release ships
them (field names, hub ids and quirks in each reader's docstring) and turns every row into a
:class:`Conversation`: ``system`` / ``user`` / ``assistant`` messages, a stable id
``{source}/{native id or file-stem:row}`` (in a folder, the file's path inside it without its ending)
and ``meta`` (``question`` for decontamination everywhere,
``options`` for multiple-choice rows, ``has_cot``, ``locator``). The multiple-choice sources (MedMCQA,
MedQA, PubMedQA, HeadQA, SciQ, MMLU) become the paper's Figure 4 prompt (system
:data:`~clinray.models.chat_template.MCQ_SYSTEM_PROMPT`, the question and one option per line, "The
correct answer is: {option}"), or Figure 5 ("Let's think step-by-step. {reasoning} Therefore, ...") when
the row has an explanation and ``mcq_reasoning="when_present"``. MedMCQA, MedQA, PubMedQA and MMLU rows
go through :mod:`clinray.qa`'s row parsers, so the SFT data and the evaluation can never disagree on
a layout (MedMCQA's ``cop`` base included) and skip rows for the same reason codes.

``field_map`` renames fields: ``{layout's field: your file's field}`` (a list of fields is joined by a
blank line), for a file that follows a layout under other names and for the generic ``jsonl`` layout
(``prompt``, ``response``, ``system``, ``id``). A mapped field that no row has is a ``ValueError``.

Trade-off, as in :mod:`clinray.qa`: a reader never raises on a bad row (bad JSON, a missing field, an
answer out of range, an empty text, a duplicate id): the row becomes a :class:`~clinray.qa.Skipped`
with its locator (``train.jsonl:3``), a short reason code and a detail, so ``read = kept + skipped``
always holds and a real file with one broken line still trains, and says so. It raises only when the
path is missing, a ``field_map`` or option is wrong, or nothing usable is left. Rows are read into
memory per file, which suits the Table 3 sizes (the largest source, MedMCQA, is 183k rows); the
Ray Data stage splits by file.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import inspect
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from clinray.models.chat_template import MCQ_SYSTEM_PROMPT, format_mcq, mcq_answer
from clinray.qa.readers import detect_cop_base
from clinray.qa.record import BadRow, Question, Skipped
from clinray.qa.rows import cop_value, parse_medmcqa, parse_medqa, parse_mmlu, parse_pubmedqa

__all__ = [
    "EXTENSIONS",
    "LAYOUTS",
    "LAYOUT_HELP",
    "MCQ_LAYOUTS",
    "Conversation",
    "ConversationSet",
    "MCQReasoning",
    "layout_options",
    "mcq_conversation",
    "read_source",
]

MCQReasoning = Literal["never", "when_present"]
ROLES = ("system", "user", "assistant")
#: The layouts that become Figure 4/5 prompts (and take ``mcq_reasoning``).
MCQ_LAYOUTS = frozenset({"medmcqa", "medqa", "pubmedqa", "headqa", "sciq", "mmlu"})
#: Skipped rows listed by :meth:`ConversationSet.describe_skipped`.
_LISTED_REASONS = 3

_JSON_EXT = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
#: Layout -> the file endings read from a folder.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "medmcqa": _JSON_EXT,
    "medqa": _JSON_EXT,
    "pubmedqa": (".json",),
    "mmlu": (".csv",),
    "medquad": (*_JSON_EXT, ".csv"),
    "sciq": _JSON_EXT,
    "headqa": _JSON_EXT,
    "stackexchange": _JSON_EXT,
    "orca": _JSON_EXT,
    "ultrachat": _JSON_EXT,
    "niv2": (".json",),
    "chat": _JSON_EXT,
    "jsonl": _JSON_EXT,
}
#: One line per layout: what its files must look like (used in every missing-path and no-row error).
LAYOUT_HELP: dict[str, str] = {
    "medmcqa": "MedMCQA JSON lines (cop 1-based) or Parquet (cop 0-based): question, opa..opd, cop, exp, id",
    "medqa": "MedQA JSONL: question, options {A: text, ...}, answer_idx (or answer text)",
    "pubmedqa": "PubMedQA JSON {pmid: {QUESTION, CONTEXTS, final_decision, LONG_ANSWER}}",
    "mmlu": "MMLU CSV without header: question, A, B, C, D, answer letter",
    "medquad": "MedQuAD CSV/JSONL: question, answer (+ focus, qtype, document_source)",
    "sciq": "SciQ JSON list or JSONL: question, correct_answer, distractor1..3, support",
    "headqa": "HEAD-QA release JSON {exams: {name: {data: [{qid, qtext, ra, answers: [{aid, atext}]}]}}} "
    "or flat rows",
    "stackexchange": "StackExchange JSONL: question (or title + body), answers [{text, pm_score, selected}]; "
    "or question, response_j pairs",
    "orca": "SlimOrca JSONL conversations [{from, value}] or OpenOrca system_prompt, question, response",
    "ultrachat": "UltraChat JSONL: messages [{role, content}] or data [user, assistant, ...]",
    "niv2": "Natural Instructions v2 task JSON: Definition, Instances [{id, input, output}]",
    "chat": "clinray SFT JSONL: id, system, prompter, assistant, source",
    "jsonl": "JSONL with the fields named by field_map (prompt, response, optional system and id)",
}


# ----------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Conversation:
    """One SFT sample: chat messages, a stable id, the mixture component it belongs to."""

    id: str
    """Stable ``{source}/{native id or file-stem:row}``."""
    source: str
    """The Table 3 source (mixture component), e.g. ``medmcqa``."""
    messages: tuple[dict, ...]
    """``{"role": "system"|"user"|"assistant", "content": str}``; system optional, first; >= 1 assistant."""
    meta: dict = dataclasses.field(default_factory=dict, compare=False)
    """``question`` (for decontamination), ``has_cot``, ``locator``; MCQ rows: ``options``, ``answer``."""

    def __post_init__(self) -> None:
        messages = tuple({"role": m["role"], "content": m["content"]} for m in self.messages)
        for n, m in enumerate(messages):
            if m["role"] not in ROLES:
                raise ValueError(
                    f"conversation {self.id}: unknown role {m['role']!r}, expected one of {ROLES}"
                )
            if m["role"] == "system" and n != 0:
                raise ValueError(f"conversation {self.id}: a system message is allowed only first")
            if not isinstance(m["content"], str) or not m["content"].strip():
                raise ValueError(f"conversation {self.id}: message {n} ({m['role']}) is empty")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"conversation {self.id}: no assistant message to learn from")
        object.__setattr__(self, "messages", messages)

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages[0]["role"] == "system" else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row (``id``, ``source``, ``messages``, ``meta``)."""
        return {"id": self.id, "source": self.source, "messages": list(self.messages), "meta": self.meta}


@dataclasses.dataclass(kw_only=True)
class ConversationSet:
    """What a reader returns: the usable conversations and every row it could not use, with its reason."""

    conversations: list[Conversation]
    skipped: list[Skipped]
    """Every unusable row (or unreadable file) as ``(locator, reason, detail)``, in file order."""
    source: str = ""
    layout: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    """Things the caller must show (e.g. an ambiguous MedMCQA ``cop`` base)."""

    def __len__(self) -> int:
        return len(self.conversations)

    def __iter__(self) -> Iterator[Conversation]:
        return iter(self.conversations)

    def counts(self) -> dict[str, Any]:
        """``{"read": rows, "kept": n, "skipped_by_reason": {reason: n}}``; read = kept + skipped, always."""
        by_reason = dict(Counter(s.reason for s in self.skipped).most_common())
        return {
            "read": len(self.conversations) + len(self.skipped),
            "kept": len(self.conversations),
            "skipped_by_reason": by_reason,
        }

    def describe_skipped(self, limit: int = _LISTED_REASONS) -> str:
        """``'2 x bad_json (first at train.jsonl:3: not JSON ...); ...'``; ``''`` when none was skipped."""
        counts = Counter(s.reason for s in self.skipped)
        first: dict[str, Skipped] = {}
        for s in self.skipped:
            first.setdefault(s.reason, s)
        parts = [
            f"{n} x {r} (first at {first[r].locator}{': ' + first[r].detail if first[r].detail else ''})"
            for r, n in counts.most_common(limit)
        ]
        if len(counts) > limit:
            parts.append(f"{len(counts) - limit} more reasons")
        return "; ".join(parts)


# ----------------------------------------------------------------------------- files and rows

Row = tuple[str, str, Any]
"""(locator ``file:row``, fallback native id ``file-stem:row``, the record or the BadRow reading raised)."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".".join(["", *name.split(".")[-2:]]) if name.endswith(".gz") else path.suffix.lower()


def _files(path: Path, layout: str, source: str) -> tuple[Path, list[tuple[Path, str]]]:
    """(root, [(file, name relative to root without its ending)]): one file, or a folder's files, sorted."""
    if not path.exists():
        raise ValueError(
            f"SFT source {source!r}: {path} does not exist; put the {layout} files there ({LAYOUT_HELP[layout]})"
        )
    exts = EXTENSIONS[layout]
    if path.is_file():
        return path.parent, [(path, path.name.removesuffix(_suffix(path)))]
    found = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and _suffix(p) in exts
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise ValueError(
            f"SFT source {source!r}: no {'/'.join(exts)} file under {path} ({layout}: {LAYOUT_HELP[layout]})"
        )
    return path, [(p, p.relative_to(path).as_posix().removesuffix(_suffix(p))) for p in found]


def _bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.decompress(data)
    return data.removeprefix(b"\xef\xbb\xbf")


class _BadFile(Exception):
    """A whole file that cannot be read (recorded as one skipped entry, not raised to the caller)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _whole_json(path: Path) -> Any:
    try:
        return json.loads(_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _BadFile("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise _BadFile("bad_json", f"not JSON ({exc.msg}, line {exc.lineno})") from None


def _lines(data: bytes, name: str, stem: str) -> Iterator[Row]:
    from clinray.qa.readers import iter_json_lines

    return iter_json_lines(data, name, stem)


def _numbered(records: Iterable[Any], name: str, stem: str) -> list[Row]:
    return [(f"{name}:{n}", f"{stem}:{n}", r) for n, r in enumerate(records, 1)]


def _records(path: Path, rel: str) -> list[Row]:
    """The rows of one file, numbered from 1: JSON lines, a JSON array (or object), Parquet, CSV with a header.

    A ``.json`` file is tried as one JSON value first, then as JSON lines (MedMCQA's release ``.json``
    files are JSON lines), so one broken line costs that line only.
    """
    name, ext = rel + _suffix(path), _suffix(path)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            return _numbered(pq.read_table(path).to_pylist(), name, rel)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise _BadFile("bad_parquet", f"{type(exc).__name__}: {exc}") from None
    data = _bytes(path)
    if ext == ".csv":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadFile("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
        return _numbered(csv.DictReader(io.StringIO(text, newline="")), name, rel)
    if ext in (".json", ".json.gz"):
        try:
            whole = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = None
        if isinstance(whole, list):
            return _numbered(whole, name, rel)
        if isinstance(whole, dict):
            return _numbered([whole], name, rel)
        if data.lstrip()[:1] == b"[":  # a broken JSON array: the whole file is unreadable
            _whole_json(path)
    return list(_lines(data, name, rel))


# ----------------------------------------------------------------------------- field maps and helpers


def _check_field_map(layout: str, field_map: dict | None, fields: tuple[str, ...]) -> dict[str, list[str]]:
    """``{layout field: [file fields]}``; an unknown layout field or a bad value is a ``ValueError``."""
    out: dict[str, list[str]] = {}
    for key, value in (field_map or {}).items():
        if key not in fields:
            raise ValueError(
                f"field_map key {key!r} is not a field of the {layout} layout; its fields: {', '.join(fields)}"
            )
        names = [value] if isinstance(value, str) else value
        if (
            not isinstance(names, list | tuple)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise ValueError(f"field_map[{key!r}] must be a field name or a list of names, got {value!r}")
        out[key] = list(names)
    return out


def _apply_map(record: Any, fmap: dict[str, list[str]], seen: set[str]) -> Any:
    """The record with the mapped fields under the layout's names (lists of fields joined by a blank line)."""
    if not isinstance(record, dict):
        return record
    seen.update(record)
    if not fmap:
        return record
    out = dict(record)
    for key, names in fmap.items():
        present = [record[n] for n in names if n in record]
        if not present:
            out.pop(key, None)
        elif len(names) == 1:
            out[key] = present[0]
        else:
            out[key] = "\n\n".join(str(v).strip() for v in present if v is not None and str(v).strip())
    return out


def _text(record: dict, key: str, *, what: str | None = None) -> str:
    """A non-empty string field: ``missing_field`` when absent, ``empty`` when blank or not text."""
    if key not in record or record[key] is None:
        raise BadRow("missing_field", f"no {what or key!r} field")
    value = record[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadRow("empty", f"empty {what or key}")
    return value.strip()


def _first_key(record: dict, *keys: str) -> str | None:
    return next((k for k in keys if k in record and record[k] is not None), None)


def _object(record: Any) -> dict:
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise BadRow("not_an_object", f"a {type(record).__name__}, not an object")
    return record


def _native_id(record: dict, key: str, fallback: str) -> str:
    value = record.get(key)
    return fallback if value is None or str(value).strip() == "" else str(value).strip()


def _messages(*turns: tuple[str, str | None]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns if c is not None]


Parse = Callable[[Any, str, str], Conversation]
"""(record, fallback native id, locator) -> Conversation, or raises BadRow."""


def _conversation(source: str, native: str, messages: list[dict], meta: dict) -> Conversation:
    try:
        return Conversation(id=f"{source}/{native}", source=source, messages=tuple(messages), meta=meta)
    except ValueError as exc:
        raise BadRow("bad_turns", str(exc).split(": ", 1)[-1]) from None


class _Builder:
    """Collects conversations and skipped rows of one source; checks ids and the field map at the end."""

    def __init__(
        self, *, source: str, layout: str, path: Path, field_map: dict | None, fields: tuple[str, ...]
    ):
        if not source or "/" in source:
            raise ValueError(f"SFT source name {source!r} must be non-empty and contain no '/'")
        self.source, self.layout, self.path = source, layout, path
        self.fmap = _check_field_map(layout, field_map, fields)
        self.seen_fields: set[str] = set()
        self.ids: set[str] = set()
        self.conversations: list[Conversation] = []
        self.skipped: list[Skipped] = []
        self.warnings: list[str] = []

    def rows(self, rows: Iterable[Row], parse: Parse) -> None:
        for locator, native, record in rows:
            try:
                if isinstance(record, BadRow):
                    raise record
                conv = parse(_apply_map(record, self.fmap, self.seen_fields), native, locator)
                if conv.id in self.ids:
                    raise BadRow("duplicate_id", f"id {conv.id} already read")
            except BadRow as exc:
                self.skipped.append(Skipped(locator, exc.reason, exc.detail))
                continue
            self.ids.add(conv.id)
            conv.meta.setdefault("locator", locator)
            self.conversations.append(conv)

    def bad_file(self, name: str, exc: _BadFile) -> None:
        self.skipped.append(Skipped(name, exc.reason, exc.detail))

    def each_file(self, read: Callable[[Path, str], None]) -> None:
        """``read(file, rel)`` for every file of the path; an unreadable file is one skipped entry."""
        _, files = _files(self.path, self.layout, self.source)
        for file, rel in files:
            try:
                read(file, rel)
            except _BadFile as exc:
                self.bad_file(rel + _suffix(file), exc)

    def done(self) -> ConversationSet:
        for key, names in self.fmap.items():
            if self.seen_fields and not any(n in self.seen_fields for n in names):
                raise ValueError(
                    f"SFT source {self.source!r}: field_map maps {key!r} to {names if len(names) > 1 else names[0]!r}, "
                    f"which no row of {self.path} has; fields seen: {', '.join(sorted(self.seen_fields)[:20])}"
                )
        out = ConversationSet(
            conversations=self.conversations,
            skipped=self.skipped,
            source=self.source,
            layout=self.layout,
            warnings=self.warnings,
        )
        if not self.conversations:
            reasons = out.describe_skipped() or "no row"
            raise ValueError(
                f"no usable {self.layout} rows in {self.path} for SFT source {self.source!r}: {reasons}; "
                f"expected {LAYOUT_HELP[self.layout]}"
            )
        return out


def _json_rows(builder: _Builder, parse: Parse) -> ConversationSet:
    builder.each_file(lambda file, rel: builder.rows(_records(file, rel), parse))
    return builder.done()


# ----------------------------------------------------------------------------- multiple choice


def _check_reasoning(mcq_reasoning: str) -> None:
    if mcq_reasoning not in ("never", "when_present"):
        raise ValueError(f"mcq_reasoning must be 'never' or 'when_present', got {mcq_reasoning!r}")


def mcq_conversation(
    *,
    source: str,
    native: str,
    stem: str,
    options: Iterable[str],
    answer_index: int | None,
    explanation: str | None = None,
    mcq_reasoning: MCQReasoning = "when_present",
    contexts: Iterable[str] = (),
    meta: dict | None = None,
) -> Conversation:
    """The Figure 4 (or, with an explanation and ``when_present``, Figure 5) conversation of one question.

    Raises :class:`~clinray.qa.BadRow` (``no_answer``, ``bad_answer``) for a question it cannot teach.

    ``contexts`` (PubMedQA's abstract) go before the question in the user turn, one per line, as
    :attr:`clinray.qa.Question.text` and the PubMedQA evaluation put them (the paper shows no PubMedQA
    prompt). ``meta["question"]`` is the stem alone, the text decontamination compares.
    """
    options = tuple(options)
    if answer_index is None:
        raise BadRow("no_answer", "unlabelled question")
    if not 0 <= answer_index < len(options):
        raise BadRow("bad_answer", f"answer index {answer_index} out of range for {len(options)} options")
    answer = options[answer_index]
    cot = mcq_reasoning == "when_present" and bool(explanation and explanation.strip())
    contexts = [c for c in contexts if c]
    user = format_mcq("\n".join([*contexts, stem.strip()]), options)
    messages = _messages(
        ("system", MCQ_SYSTEM_PROMPT),
        ("user", user),
        ("assistant", mcq_answer(answer, reasoning=explanation if cot else None)),
    )
    info = {
        "has_cot": cot,
        "question": stem.strip(),
        "options": list(options),
        "answer": answer,
        "answer_index": answer_index,
        **(meta or {}),
    }
    return _conversation(source, native, messages, info)


def _from_question(
    q: Question, *, source: str, mcq_reasoning: MCQReasoning, keep: tuple[str, ...] = ()
) -> Conversation:
    native = q.id.split("/", 2)[2]  # the record's own id, or file-stem:row
    meta = {k: q.meta[k] for k in keep if k in q.meta and q.meta[k] not in (None, "")}
    if q.meta.get("contexts"):
        meta["contexts"] = list(q.meta["contexts"])
    return mcq_conversation(
        source=source,
        native=native,
        stem=q.stem,
        options=q.options,
        answer_index=q.answer_index,
        explanation=q.explanation,
        mcq_reasoning=mcq_reasoning,
        contexts=q.meta.get("contexts", ()),
        meta=meta,
    )


def read_medmcqa(
    path: Path,
    *,
    source: str,
    field_map: dict | None = None,
    mcq_reasoning: MCQReasoning = "when_present",
    cop_base: Any = "auto",
) -> ConversationSet:
    """MedMCQA (hub ``openlifescienceai/medmcqa``, release ``medmcqa/data/{train,dev,test}.json``).

    Fields: ``id``, ``question``, ``opa``..``opd``, ``cop`` (1-based in the release JSON lines, 0-based
    in the hub's Parquet; detected per file by :func:`clinray.qa.detect_cop_base` unless ``cop_base``
    is 0 or 1), ``exp`` (the explanation: Figure 5 reasoning with ``when_present``), ``choice_type``,
    ``subject_name``, ``topic_name`` (kept in meta). ``cop`` -1 or absent (the test split): ``no_answer``.
    """
    _check_reasoning(mcq_reasoning)
    b = _Builder(
        source=source,
        layout="medmcqa",
        path=path,
        field_map=field_map,
        fields=("id", "question", "opa", "opb", "opc", "opd", "cop", "exp"),
    )

    def read(file: Path, rel: str) -> None:
        rows = _records(file, rel)
        values = []
        for _, _, rec in rows:
            try:
                value = cop_value(_apply_map(rec, b.fmap, set()))
            except BadRow:
                continue
            if value is not None:
                values.append(value)
        default = 0 if _suffix(file) == ".parquet" else 1
        base, warnings = detect_cop_base(values, setting=cop_base, default=default, source=str(file))
        b.warnings += warnings

        def parse(rec: Any, native: str, _loc: str) -> Conversation:
            q = parse_medmcqa(_object(rec), benchmark="medmcqa", split="train", native=native, cop_base=base)
            return _from_question(
                q,
                source=source,
                mcq_reasoning=mcq_reasoning,
                keep=("choice_type", "subject_name", "topic_name"),
            )

        b.rows(rows, parse)

    b.each_file(read)
    return b.done()


def read_medqa(
    path: Path, *, source: str, field_map: dict | None = None, mcq_reasoning: MCQReasoning = "when_present"
) -> ConversationSet:
    """MedQA (USMLE) JSONL (release ``data_clean/questions/US/train.jsonl``;
    hub ``GBaker/MedQA-USMLE-4-options``).

    Fields: ``question``, ``options`` (``{"A": text, ...}``, a ``[{key, value}]`` list or a list of texts),
    ``answer_idx`` (letter) and/or ``answer`` (text; must agree), optional ``id`` and ``explanation``;
    ``meta_info`` kept in meta. Parsed by :func:`clinray.qa.rows.parse_medqa`.
    """
    _check_reasoning(mcq_reasoning)
    b = _Builder(
        source=source,
        layout="medqa",
        path=path,
        field_map=field_map,
        fields=("id", "question", "options", "answer_idx", "answer_index", "answer", "explanation"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        q = parse_medqa(_object(rec), benchmark="medqa", split="train", native=native)
        return _from_question(q, source=source, mcq_reasoning=mcq_reasoning, keep=("meta_info",))

    return _json_rows(b, parse)


def read_pubmedqa(
    path: Path, *, source: str, field_map: dict | None = None, mcq_reasoning: MCQReasoning = "when_present"
) -> ConversationSet:
    """PubMedQA expert-labelled set (release ``data/ori_pqal.json``, or a fold's ``train_set.json``; hub
    ``qiaojin/PubMedQA``, config ``pqa_labeled``):
    ``{PMID: {QUESTION, CONTEXTS, final_decision, LONG_ANSWER}}``.

    Options are yes / no / maybe; the abstract (``CONTEXTS``) goes before the question, one part per line,
    as in evaluation; ``LONG_ANSWER`` (the abstract's conclusion) is the Figure 5 reasoning with
    ``when_present``. Ids are ``{source}/{PMID}``. Table 3's 499 samples are the labelled set's training
    half: read the fold's ``train_set.json`` (same layout), not the evaluation PMIDs.
    """
    _check_reasoning(mcq_reasoning)
    b = _Builder(
        source=source,
        layout="pubmedqa",
        path=path,
        field_map=field_map,
        fields=("QUESTION", "CONTEXTS", "final_decision", "LONG_ANSWER"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        q = parse_pubmedqa(_object(rec), benchmark="pubmedqa", split="train", native=native)
        return _from_question(q, source=source, mcq_reasoning=mcq_reasoning)

    def read(file: Path, rel: str) -> None:
        data = _whole_json(file)
        if not isinstance(data, dict):
            raise _BadFile("not_an_object", f"a JSON {type(data).__name__}, expected {{pmid: record}}")
        name = rel + _suffix(file)
        b.rows(((f"{name}:{k}", str(k), v) for k, v in data.items()), parse)

    b.each_file(read)
    return b.done()


def read_mmlu(
    path: Path, *, source: str, field_map: dict | None = None, mcq_reasoning: MCQReasoning = "when_present"
) -> ConversationSet:
    """MMLU subject CSVs without a header (release ``data/{dev,val}/<subject>_<split>.csv``;
    hub ``cais/mmlu``).

    Columns: question, A, B, C, D, answer letter; parsed by :func:`clinray.qa.rows.parse_mmlu`. Ids are
    ``{source}/{subject}_{split}:{row}``. Point it at the dev/val files of the medical subjects only
    (Table 3's 244 samples); the test files are the evaluation set. MMLU has no explanation.
    """
    _check_reasoning(mcq_reasoning)
    if field_map:
        raise ValueError("the mmlu layout has no field names to map (a header-less CSV)")
    b = _Builder(source=source, layout="mmlu", path=path, field_map=None, fields=())

    def read(file: Path, rel: str) -> None:
        try:
            text = _bytes(file).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadFile("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
        subject = Path(rel).name.rsplit("_", 1)[0]
        rows = [r for r in enumerate(csv.reader(io.StringIO(text, newline="")), 1) if r[1]]
        name = rel + _suffix(file)

        def parse(row: Any, native: str, _loc: str) -> Conversation:
            q = parse_mmlu(row, benchmark="mmlu", split="train", native=native, subject=subject)
            conv = _from_question(q, source=source, mcq_reasoning=mcq_reasoning)
            conv.meta["subject"] = subject
            return conv

        b.rows(((f"{name}:{n}", f"{rel}:{n}", row) for n, row in rows), parse)

    b.each_file(read)
    return b.done()


def _sciq_slot(key: str, num_options: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % num_options


def read_sciq(
    path: Path, *, source: str, field_map: dict | None = None, mcq_reasoning: MCQReasoning = "when_present"
) -> ConversationSet:
    """SciQ (hub ``allenai/sciq``; release ``SciQ dataset-2 3/{train,valid,test}.json``, a JSON list).

    Fields: ``question``, ``correct_answer``, ``distractor1``..``distractor3``, ``support`` (the
    evidence paragraph, often empty: the Figure 5 reasoning with ``when_present``). The files always
    list the correct answer apart, so its position among the options is drawn from a hash of the
    question (deterministic, no seed, uniform over the four slots): a model cannot learn "the first".
    """
    _check_reasoning(mcq_reasoning)
    b = _Builder(
        source=source,
        layout="sciq",
        path=path,
        field_map=field_map,
        fields=("id", "question", "correct_answer", "distractor1", "distractor2", "distractor3", "support"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        stem = _text(rec, "question")
        correct = _text(rec, "correct_answer")
        distractors = [_text(rec, f"distractor{i}") for i in (1, 2, 3)]
        if correct in distractors:
            raise BadRow("bad_answer", f"the correct answer {correct!r} is also a distractor")
        slot = _sciq_slot(stem, len(distractors) + 1)
        options = [*distractors[:slot], correct, *distractors[slot:]]
        support = rec.get("support") if isinstance(rec.get("support"), str) else None
        return mcq_conversation(
            source=source,
            native=_native_id(rec, "id", native),
            stem=stem,
            options=options,
            answer_index=slot,
            explanation=support,
            mcq_reasoning=mcq_reasoning,
        )

    return _json_rows(b, parse)


def _has_image(value: Any) -> bool:
    """A release path (``"images/q3.jpg"``) or the hub's image struct with bytes or a path."""
    if isinstance(value, dict):
        return any(v not in (None, "", b"") for v in value.values())
    return bool(value)


def read_headqa(
    path: Path,
    *,
    source: str,
    field_map: dict | None = None,
    mcq_reasoning: MCQReasoning = "when_present",
    skip_images: bool = True,
) -> ConversationSet:
    """HEAD-QA (release ``HEAD_EN.json`` / ``HEAD.json``; hub ``dvilares/head_qa``, config ``en``).

    The release JSON is ``{"exams": {name: {"name", "category", "year", "data": [{qid, qtext, ra,
    answers: [{aid, atext}], image}]}}}``; the hub's flat rows carry ``name``, ``category``, ``year``,
    ``qid``, ``qtext``, ``ra``, ``answers``, ``image`` each. ``ra`` is the ``aid`` of the right answer.
    Ids are ``{source}/{exam name}:{qid}``. A question that refers to an image (``image`` set) is skipped
    as ``has_image`` unless ``skip_images`` is false: the model sees text only. No explanations.
    """
    _check_reasoning(mcq_reasoning)
    b = _Builder(
        source=source,
        layout="headqa",
        path=path,
        field_map=field_map,
        fields=("name", "category", "qid", "qtext", "ra", "answers", "image"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        stem = _text(rec, "qtext")
        if skip_images and _has_image(rec.get("image")):
            raise BadRow("has_image", "the question refers to an image")
        answers = rec.get("answers")
        if not isinstance(answers, list) or len(answers) < 2 or not all(isinstance(a, dict) for a in answers):
            raise BadRow("bad_options", "'answers' is not a list of {aid, atext}")
        options = [_text(a, "atext", what="answer text") for a in answers]
        aids = [str(a.get("aid")) for a in answers]
        if str(rec.get("ra")) not in aids:
            raise BadRow("bad_answer", f"ra {rec.get('ra')!r} is not one of the answer ids {aids}")
        exam = rec.get("name")
        own = f"{exam}:{rec['qid']}" if exam and rec.get("qid") is not None else native
        meta = {k: rec[k] for k in ("category", "year") if rec.get(k) not in (None, "")}
        return mcq_conversation(
            source=source,
            native=own,
            stem=stem,
            options=options,
            answer_index=aids.index(str(rec.get("ra"))),
            mcq_reasoning=mcq_reasoning,
            meta=meta,
        )

    def read(file: Path, rel: str) -> None:
        name = rel + _suffix(file)
        if _suffix(file) == ".json" and _bytes(file).lstrip()[:1] == b"{":
            data = _whole_json(file)
            if isinstance(data, dict) and isinstance(data.get("exams"), dict):
                rows = []
                for exam_key, exam in data["exams"].items():
                    items = exam.get("data") if isinstance(exam, dict) else None
                    if not isinstance(items, list):
                        rows.append(
                            (
                                f"{name}:{exam_key}",
                                f"{rel}:{exam_key}",
                                BadRow("missing_field", "exam without 'data'"),
                            )
                        )
                        continue
                    info = {k: exam[k] for k in ("name", "category", "year") if k in exam}
                    info.setdefault("name", exam_key)
                    for n, item in enumerate(items, 1):
                        record = {**info, **item} if isinstance(item, dict) else item
                        rows.append((f"{name}:{exam_key}:{n}", f"{rel}:{exam_key}:{n}", record))
                b.rows(rows, parse)
                return
        b.rows(_records(file, rel), parse)

    b.each_file(read)
    return b.done()


# ----------------------------------------------------------------------------- free text and chat


def read_medquad(path: Path, *, source: str, field_map: dict | None = None) -> ConversationSet:
    """MedQuAD question-answer pairs (hub ``lavita/MedQuAD`` or ``keivalya/MedQuad-MedicalQnADataset``).

    ``lavita/MedQuAD`` columns: ``question``, ``answer``, ``question_id``, ``question_focus``,
    ``question_type``, ``document_source``, ``document_url``; ``keivalya`` spells them ``Question``,
    ``Answer``, ``qtype``. CSV (with a header), JSONL or Parquet. Free text: no system prompt, user =
    the question, assistant = the answer. About a third of the released answers are empty (the
    MedlinePlus subsets were withdrawn for copyright): those rows are skipped as ``empty``.
    """
    b = _Builder(
        source=source,
        layout="medquad",
        path=path,
        field_map=field_map,
        fields=("id", "question", "answer", "focus", "qtype", "source"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        q_key = _first_key(rec, "question", "Question") or "question"
        a_key = _first_key(rec, "answer", "Answer") or "answer"
        question, answer = _text(rec, q_key, what="question"), _text(rec, a_key, what="answer")
        id_key = _first_key(rec, "id", "question_id") or "id"
        meta: dict[str, Any] = {"has_cot": False, "question": question}
        for out, keys in (
            ("focus", ("focus", "question_focus")),
            ("qtype", ("qtype", "question_type")),
            ("document_source", ("source", "document_source")),
        ):
            key = _first_key(rec, *keys)
            if key and str(rec[key]).strip():
                meta[out] = str(rec[key]).strip()
        return _conversation(
            source,
            _native_id(rec, id_key, native),
            _messages(("user", question), ("assistant", answer)),
            meta,
        )

    return _json_rows(b, parse)


def _answer_text(answer: dict) -> str | None:
    key = _first_key(answer, "text", "body", "answer")
    return answer[key] if key and isinstance(answer[key], str) and answer[key].strip() else None


def _score(answer: dict) -> float:
    key = _first_key(answer, "pm_score", "score")
    try:
        return float(answer[key]) if key else 0.0
    except (TypeError, ValueError):
        return 0.0


def read_stackexchange(
    path: Path, *, source: str, field_map: dict | None = None, min_score: float | None = None
) -> ConversationSet:
    """StackExchange questions with their best answer (Table 3's Lambert et al. 2023:
    hub ``HuggingFaceH4/stack-exchange-preferences``, one folder per site; pairs as in
    ``lvwerra/stack-exchange-paired``).

    Rows: ``qid``, ``question`` (or ``title`` + ``body``, as in the Stack Exchange dump), ``answers``
    ``[{answer_id, text (or body), pm_score (or score), selected (or is_accepted)}]``; the accepted
    answer is taken, else the highest-scored (the first on a tie). Pair layout: ``question`` with
    ``response_j`` (the preferred answer of the pair). ``min_score``: a chosen answer scored below it is
    skipped as ``low_score``. Texts are kept as published (H4's are HTML-formatted).
    Choose the sites (academia, bioinformatics, biology, cogsci, fitness, health) by the path.
    """
    b = _Builder(
        source=source,
        layout="stackexchange",
        path=path,
        field_map=field_map,
        fields=("qid", "question", "title", "body", "answers", "response_j"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        if "question" in rec:
            question = _text(rec, "question")
        elif "title" in rec:
            parts = [str(rec.get(k) or "").strip() for k in ("title", "body")]
            question = "\n\n".join(p for p in parts if p)
            if not question:
                raise BadRow("empty", "empty title and body")
        else:
            raise BadRow("missing_field", "no 'question' (or 'title' + 'body') field")
        meta: dict[str, Any] = {"has_cot": False, "question": question}
        if "response_j" in rec:
            answer = _text(rec, "response_j")
        else:
            answers = rec.get("answers")
            if answers is None:
                raise BadRow("missing_field", "no 'answers' (or 'response_j') field")
            usable = (
                [a for a in answers if isinstance(a, dict) and _answer_text(a)]
                if isinstance(answers, list)
                else []
            )
            if not usable:
                raise BadRow("no_answer", "no answer with text")
            accepted = [a for a in usable if a.get("selected") is True or a.get("is_accepted") is True]
            best = accepted[0] if accepted else max(usable, key=_score)
            score = _score(best)
            if min_score is not None and score < min_score:
                raise BadRow("low_score", f"best answer scored {score:g} < min_score {min_score:g}")
            answer = str(_answer_text(best)).strip()
            meta.update(score=score, accepted=bool(accepted))
        qid = _first_key(rec, "qid", "question_id", "id") or "qid"
        return _conversation(
            source, _native_id(rec, qid, native), _messages(("user", question), ("assistant", answer)), meta
        )

    return _json_rows(b, parse)


_ORCA_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


def read_orca(path: Path, *, source: str, field_map: dict | None = None, subset: str = "") -> ConversationSet:
    """SlimOrca (hub ``Open-Orca/SlimOrca``, ``oo-labeled_correct.gpt4.sharegpt.jsonl``) and OpenOrca
    (hub ``Open-Orca/OpenOrca``, Parquet).

    SlimOrca rows: ``conversations`` ``[{from: system|human|gpt, value, weight}]`` (an empty system
    turn is dropped). OpenOrca rows: ``id`` (``flan.123``, ``t0.4``, ``cot.5``, ``niv.6``),
    ``system_prompt``, ``question``, ``response``. ``subset`` (``t0``, ``flan``, ``cot``: Table 3's three
    SlimOrca parts) keeps only rows whose ``id`` has that prefix; the others are skipped as
    ``other_subset`` (counted, so the accounting still adds up). SlimOrca rows carry no subset label: split
    them beforehand (by joining on OpenOrca) or leave ``subset`` empty.
    """
    b = _Builder(
        source=source,
        layout="orca",
        path=path,
        field_map=field_map,
        fields=("id", "conversations", "system_prompt", "question", "response"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        own = rec.get("id")
        if subset:
            if not isinstance(own, str) or "." not in own:
                raise BadRow("no_subset", f"no OpenOrca id to select subset {subset!r} by")
            if own.split(".", 1)[0] != subset:
                raise BadRow("other_subset", f"id {own} is not in subset {subset!r}")
        if "conversations" in rec:
            turns = rec["conversations"]
            if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                raise BadRow("bad_turns", "'conversations' is not a list of {from, value}")
            messages = []
            for t in turns:
                role = _ORCA_ROLES.get(str(t.get("from")))
                if role is None:
                    raise BadRow("bad_role", f"unknown speaker {t.get('from')!r}")
                value = t.get("value")
                if role == "system" and not (isinstance(value, str) and value.strip()):
                    continue
                if not isinstance(value, str) or not value.strip():
                    raise BadRow("empty", f"empty {role} turn")
                messages.append({"role": role, "content": value.strip()})
        else:
            system = rec.get("system_prompt")
            system = system.strip() if isinstance(system, str) and system.strip() else None
            messages = _messages(
                ("system", system), ("user", _text(rec, "question")), ("assistant", _text(rec, "response"))
            )
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        return _conversation(
            source, _native_id(rec, "id", native), messages, {"has_cot": False, "question": user}
        )

    return _json_rows(b, parse)


def read_ultrachat(path: Path, *, source: str, field_map: dict | None = None) -> ConversationSet:
    """UltraChat multi-turn dialogues (hub ``stingning/ultrachat``: ``id``, ``data`` = alternating user and
    assistant strings; hub ``HuggingFaceH4/ultrachat_200k``: ``prompt_id``,
    ``messages`` ``[{role, content}]``).

    Every turn is kept (the trainer learns from every assistant turn); a dialogue that ends with a user
    turn loses that turn (``meta["dropped_last_user_turn"]``).
    """
    b = _Builder(
        source=source,
        layout="ultrachat",
        path=path,
        field_map=field_map,
        fields=("id", "prompt_id", "messages", "data"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        if "messages" in rec:
            turns = rec["messages"]
            if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                raise BadRow("bad_turns", "'messages' is not a list of {role, content}")
            messages = [{"role": t.get("role"), "content": t.get("content")} for t in turns]
        elif "data" in rec:
            turns = rec["data"]
            if not isinstance(turns, list):
                raise BadRow("bad_turns", "'data' is not a list of strings")
            messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
        else:
            raise BadRow("missing_field", "no 'messages' or 'data' field")
        for m in messages:
            if m["role"] not in ROLES:
                raise BadRow("bad_role", f"unknown role {m['role']!r}")
            if not isinstance(m["content"], str) or not m["content"].strip():
                raise BadRow("empty", f"empty {m['role']} turn")
            m["content"] = m["content"].strip()
        meta: dict[str, Any] = {"has_cot": False}
        if messages and messages[-1]["role"] == "user":
            messages.pop()
            meta["dropped_last_user_turn"] = True
        meta["question"] = next((m["content"] for m in messages if m["role"] == "user"), "")
        own = _first_key(rec, "id", "prompt_id") or "id"
        return _conversation(source, _native_id(rec, own, native), messages, meta)

    return _json_rows(b, parse)


def read_niv2(path: Path, *, source: str, field_map: dict | None = None) -> ConversationSet:
    """Super-NaturalInstructions v2 task files (``allenai/natural-instructions``, ``tasks/taskNNN_*.json``).

    A task file holds ``Definition`` (a list with the instruction) and ``Instances``
    ``[{id, input, output: [answers]}]``; each instance becomes user = definition, a blank line, the
    input; assistant = its first output. Pick Table 3's 47 science/health tasks by the path (the files).
    """
    if field_map:
        raise ValueError("the niv2 layout has no field_map (task files have one fixed layout)")
    b = _Builder(source=source, layout="niv2", path=path, field_map=None, fields=())

    def read(file: Path, rel: str) -> None:
        data = _whole_json(file)
        name = rel + _suffix(file)
        if not isinstance(data, dict) or not isinstance(data.get("Instances"), list):
            raise _BadFile("missing_field", "not a task file: no 'Instances' list")
        definition = data.get("Definition")
        definition = " ".join(definition) if isinstance(definition, list) else definition
        if not isinstance(definition, str) or not definition.strip():
            raise _BadFile("missing_field", "task file without a 'Definition'")
        task = Path(rel).name

        def parse(rec: Any, native: str, _loc: str) -> Conversation:
            rec = _object(rec)
            given = _text(rec, "input")
            outputs = rec.get("output")
            if isinstance(outputs, str):
                outputs = [outputs]
            if not isinstance(outputs, list) or not outputs:
                raise BadRow("missing_field", "no 'output'")
            answer = outputs[0].strip() if isinstance(outputs[0], str) else ""
            if not answer:
                raise BadRow("empty", "empty output")
            user = f"{definition.strip()}\n\n{given}"
            meta = {"has_cot": False, "question": given, "task": task}
            return _conversation(
                source, _native_id(rec, "id", native), _messages(("user", user), ("assistant", answer)), meta
            )

        b.rows(_numbered(data["Instances"], name, f"{rel}"), parse)

    b.each_file(read)
    return b.done()


def read_chat(
    path: Path, *, source: str, field_map: dict | None = None, source_from_row: bool = False
) -> ConversationSet:
    """clinray's own SFT rows (the tiny world's ``sft/train.jsonl``, the CoT stage's output).

    Fields: ``id``, ``system`` (optional), ``prompter``, ``assistant``, ``source``, ``has_cot``,
    ``fact_id``. The conversation's source is the ``source`` argument (the mixture component), with the
    row's own in ``meta["row_source"]``; ``source_from_row`` uses the row's instead (the tiny world mixes
    medqa, medmcqa and general rows in one file).
    """
    b = _Builder(
        source=source,
        layout="chat",
        path=path,
        field_map=field_map,
        fields=("id", "system", "prompter", "assistant", "source", "has_cot", "fact_id"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        prompter, assistant = _text(rec, "prompter"), _text(rec, "assistant")
        system = rec.get("system")
        if system is not None and not isinstance(system, str):
            raise BadRow("empty", "system is not text")
        row_source = rec.get("source") if isinstance(rec.get("source"), str) and rec.get("source") else None
        meta: dict[str, Any] = {"has_cot": bool(rec.get("has_cot", False)), "question": prompter}
        if row_source:
            meta["row_source"] = row_source
        if rec.get("fact_id") is not None:
            meta["fact_id"] = rec["fact_id"]
        name = row_source if source_from_row and row_source and "/" not in row_source else source
        system = system.strip() if system and system.strip() else None
        messages = _messages(("system", system), ("user", prompter), ("assistant", assistant))
        return _conversation(name, _native_id(rec, "id", native), messages, meta)

    return _json_rows(b, parse)


def read_jsonl(path: Path, *, source: str, field_map: dict | None = None) -> ConversationSet:
    """Any JSONL (or JSON list, Parquet) of prompt/response rows, its fields named by ``field_map``.

    Layout fields: ``prompt`` and ``response`` (required), ``system`` and ``id`` (optional); by default
    each is read from the field of the same name. A list joins several fields with a blank line: the
    Medical Meadow sets of Table 3 (hub ``medalpaca/medical_meadow_medical_flashcards``, ``_cord19``,
    ``_mediqa``, ``_pubmed_causal``) are ``{"prompt": ["instruction", "input"], "response": "output"}``;
    PubHealth (hub ``ImperialCollegeLondon/health_fact``) is
    ``{"prompt": "claim", "response": "explanation"}``.
    A field the map names explicitly but no row has is a ``ValueError`` (a typo, not a dataset).
    """
    b = _Builder(
        source=source,
        layout="jsonl",
        path=path,
        field_map=field_map,
        fields=("prompt", "response", "system", "id"),
    )

    def parse(rec: Any, native: str, _loc: str) -> Conversation:
        rec = _object(rec)
        prompt, response = _text(rec, "prompt"), _text(rec, "response")
        system = rec.get("system")
        system = system.strip() if isinstance(system, str) and system.strip() else None
        messages = _messages(("system", system), ("user", prompt), ("assistant", response))
        return _conversation(
            source, _native_id(rec, "id", native), messages, {"has_cot": False, "question": prompt}
        )

    return _json_rows(b, parse)


#: Layout name -> reader ``(path, *, source, field_map=None, **options) -> ConversationSet``.
LAYOUTS: dict[str, Callable[..., ConversationSet]] = {
    "medmcqa": read_medmcqa,
    "medqa": read_medqa,
    "pubmedqa": read_pubmedqa,
    "mmlu": read_mmlu,
    "headqa": read_headqa,
    "sciq": read_sciq,
    "medquad": read_medquad,
    "stackexchange": read_stackexchange,
    "orca": read_orca,
    "ultrachat": read_ultrachat,
    "niv2": read_niv2,
    "chat": read_chat,
    "jsonl": read_jsonl,
}


def layout_options(layout: str) -> list[str]:
    """The keyword options a layout's reader takes beyond ``source`` and ``field_map``."""
    params = inspect.signature(LAYOUTS[layout]).parameters
    return [p for p in params if p not in ("path", "source", "field_map")]


def read_source(
    layout: str, path: str | Path, *, source: str, field_map: dict | None = None, **options: Any
) -> ConversationSet:
    """Read one SFT source: ``path`` is a file or a folder (every file of the layout's endings, sorted).

    ``options`` are the layout's own keywords (``mcq_reasoning`` for the MCQ layouts, ``cop_base``,
    ``subset``, ``skip_images``, ``min_score``, ``source_from_row``); one the layout lacks is a
    ``ValueError`` naming those it takes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown SFT layout {layout!r}; choose from {', '.join(sorted(LAYOUTS))}")
    allowed = layout_options(layout)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"SFT layout {layout!r} has no option {unknown[0]!r}; its options: {', '.join(allowed) or 'none'}"
        )
    return LAYOUTS[layout](Path(path), source=source, field_map=field_map, **options)
