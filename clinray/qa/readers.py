"""Readers of the benchmarks' native layouts: a file (or hub rows) in, a :class:`QuestionSet` out.

Layouts: MedQA JSONL (MedQA 4/5 options, USMLE; ``options`` as a letter map, a ``[{key, value}]`` list or
a list of texts; ``answer_idx`` letter, ``answer_index`` or ``answer`` text), MedMCQA (JSON lines or
array, or Parquet; ``opa``..``opd``, ``cop``, ``exp``), MMLU (header-less CSV: question, A-D, answer
letter) and PubMedQA (``{pmid: {QUESTION, CONTEXTS, final_decision, LONG_ANSWER}}``). Rows are numbered
from 1 (the line of a JSONL file, the record of an array, Parquet file or CSV), which gives both the
locator of a skipped row (``test.jsonl:3``) and the native id of a record without one (``test:3``).

MedMCQA's ``cop`` is 1-based in the release JSON and 0-based in the hub's Parquet, and a file does not
say which: a 0 anywhere means 0-based; all values in 1..4 with at least one 4 means 1-based (values
outside 0..4 are bad rows in either base and count for neither); anything else is ambiguous, read with
the layout's usual base and a warning naming the ``cop_base`` setting, which overrides the detection. Trade-off: the detection reads every ``cop`` first (one extra pass over
small records) so that one file never mixes bases.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from clinray.qa.record import BENCHMARKS, BadRow, Question, QuestionSet, Skipped, no_valid_rows, split_of
from clinray.qa.rows import cop_value, parse_medmcqa, parse_medqa, parse_mmlu, parse_pubmedqa

#: One line per layout: what a file must look like (used in every missing-file and no-row error).
LAYOUTS = {
    "medqa": "MedQA JSONL, one object per line: question, options {A: text, ...}, answer_idx",
    "medmcqa": "MedMCQA JSON lines (cop 1-based) or Parquet (cop 0-based): question, opa..opd, cop, exp",
    "mmlu": "MMLU CSV without header: question, A, B, C, D, answer letter; one <subject>_<split>.csv each",
    "pubmedqa": "PubMedQA JSON {pmid: {QUESTION, CONTEXTS, final_decision}}",
}
#: The evaluation files of each benchmark under a data folder (the task YAMLs name the same files).
EVAL_FILES = {
    "medqa": ("medqa/test.jsonl",),
    "medqa_5": ("medqa_5/test.jsonl",),
    "usmle": ("usmle/sample_exam.jsonl", "usmle/self_assessment.jsonl"),
    "medmcqa": ("medmcqa/dev.json",),
    "mmlu": ("mmlu/test/*_test.csv",),
    "pubmedqa": ("pubmedqa/ori_pqal.json",),
}
COP_BASES = ("auto", "0", "1")

Item = tuple[str, str, Any]
"""(locator, native id if the record has none, record or the BadRow that reading it raised)."""


# ----------------------------------------------------------------------------- the set builder


def _build(
    items: Iterable[Item], parse: Callable[[Any, str], Question], *, source: str, layout: str, warnings=()
) -> QuestionSet:
    """Parse every item, skipping (and recording) bad rows and repeated ids; no valid row is an error."""
    questions: list[Question] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for locator, native, record in items:
        try:
            if isinstance(record, BadRow):
                raise record
            question = parse(record, native)
            if question.id in seen:
                raise BadRow("duplicate_id", f"id {question.id} already read")
        except BadRow as exc:
            skipped.append(Skipped(locator, exc.reason, exc.detail))
            continue
        seen.add(question.id)
        question.meta["locator"] = locator
        questions.append(question)
    if not questions:
        raise no_valid_rows(source, skipped, layout)
    return QuestionSet(
        source=source, questions=tuple(questions), skipped=tuple(skipped), warnings=tuple(warnings)
    )


def _missing(path: Path, benchmark: str, layout: str) -> ValueError:
    return ValueError(
        f"{benchmark} questions not found at {path}; put them there in their native layout ({LAYOUTS[layout]})"
    )


def _check_file(path: Path, benchmark: str, layout: str) -> Path:
    if not path.is_file():
        raise _missing(path, benchmark, layout)
    return path


def iter_json_lines(data: bytes, name: str, stem: str) -> Iterator[Item]:
    """``(locator name:line, native stem:line, record or BadRow)`` per non-blank line of JSON-lines bytes."""
    for num, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        locator, native = f"{name}:{num}", f"{stem}:{num}"
        try:
            yield locator, native, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield locator, native, BadRow("not_utf8", f"invalid UTF-8 at byte {exc.start} of the line")
        except json.JSONDecodeError as exc:
            yield locator, native, BadRow("bad_json", f"not JSON ({exc.msg})")


def _lines(path: Path) -> Iterator[Item]:
    """JSON lines: one item per non-blank line, numbered by line."""
    return iter_json_lines(path.read_bytes().removeprefix(b"\xef\xbb\xbf"), path.name, path.stem)


def _whole_json(path: Path, layout: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 (byte {exc.start}); expected {LAYOUTS[layout]}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not JSON ({exc.msg}, line {exc.lineno}); expected {LAYOUTS[layout]}"
        ) from None


def _numbered(records: Iterable[Any], *, name: str, stem: str) -> list[Item]:
    return [(f"{name}:{n}", f"{stem}:{n}", r) for n, r in enumerate(records, 1)]


def _json_records(path: Path, layout: str) -> list[Item]:
    """A JSON array (items numbered by position) or JSON lines (numbered by line)."""
    head = path.read_bytes()[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        data = _whole_json(path, layout)
        return _numbered(data, name=path.name, stem=path.stem)
    return list(_lines(path))


# ----------------------------------------------------------------------------- readers


def read_medqa(path: str | Path, *, benchmark: str = "medqa", split: str | None = None) -> QuestionSet:
    """A MedQA-layout JSONL (or JSON array) file: MedQA 4/5 options, USMLE, clinray example files."""
    path = _check_file(Path(path), benchmark, "medqa")
    split = split or split_of(path, benchmark)
    return _build(
        _json_records(path, "medqa"),
        lambda rec, native: parse_medqa(rec, benchmark=benchmark, split=split, native=native),
        source=str(path),
        layout="medqa",
    )


def detect_cop_base(
    values: Iterable[int], *, setting: Any = "auto", default: int = 1, source: str = ""
) -> tuple[int, list[str]]:
    """``(base, warnings)`` for a MedMCQA file's ``cop`` values; ``setting`` 0 or 1 overrides the rule."""
    values = {v for v in values if 0 <= v <= 4}  # anything else is a bad row in either base
    setting = normalize_cop_base(setting)
    hint = "set cop_base: 0 or 1 (eval: the config's cop_base or the task's dataset_kwargs; index: inputs[].cop_base)"
    if setting != "auto":
        base = int(setting)
        if (base == 1 and 0 in values) or (base == 0 and 4 in values and 0 not in values):
            return base, [
                f"{source}: cop_base {base} is set but the cop values ({sorted(values)}) look {1 - base}-based"
            ]
        return base, []
    if 0 in values:
        return 0, []
    if 4 in values:  # with no 0: every value is in 1..4
        return 1, []
    seen = ", ".join(map(str, sorted(values))) or "none"
    return default, [
        f"{source}: MedMCQA cop base is ambiguous (values {seen}: no 0, no 4); read as {default}-based; {hint}"
    ]


def normalize_cop_base(setting: Any) -> str:
    """``'auto'``, ``'0'`` or ``'1'`` from a config value (``auto``, 0, 1, "0", "1", None)."""
    value = "auto" if setting is None or setting == "" else str(setting).strip().lower()
    if value not in COP_BASES:
        raise ValueError(f"cop_base must be auto, 0 (hub/Parquet) or 1 (release JSON files), got {setting!r}")
    return value


def _medmcqa_set(
    items: list[Item], *, source: str, benchmark: str, split: str, cop_base: Any, default: int
) -> QuestionSet:
    values = []
    for _, _, record in items:
        try:
            cop = cop_value(record)
        except BadRow:
            continue
        if cop is not None:
            values.append(cop)
    base, warnings = detect_cop_base(values, setting=cop_base, default=default, source=source)
    return _build(
        items,
        lambda rec, native: parse_medmcqa(
            rec, benchmark=benchmark, split=split, native=native, cop_base=base
        ),
        source=source,
        layout="medmcqa",
        warnings=warnings,
    )


def read_medmcqa(path: str | Path, *, split: str | None = None, cop_base: Any = "auto") -> QuestionSet:
    """MedMCQA release JSON (lines or array) or hub Parquet; ``cop``'s base detected unless ``cop_base`` is 0/1."""
    path = _check_file(Path(path), "medmcqa", "medmcqa")
    split = split or split_of(path, "medmcqa")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        items = _numbered(pq.read_table(path).to_pylist(), name=path.name, stem=path.stem)
    else:
        items = _json_records(path, "medmcqa")
    default = 0 if path.suffix == ".parquet" else 1
    return _medmcqa_set(
        items, source=str(path), benchmark="medmcqa", split=split, cop_base=cop_base, default=default
    )


def read_mmlu(path: str | Path, *, subject: str | None = None, split: str | None = None) -> QuestionSet:
    """One MMLU subject file ``<subject>_<split>.csv``; ids ``mmlu/<split>/<subject>:<row>``."""
    path = _check_file(Path(path), "mmlu", "mmlu")
    subject = subject or path.stem.rsplit("_", 1)[0]
    split = split or split_of(path, "mmlu")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    items: list[Item] = []
    for n, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        if not row:
            continue
        bad = any("\ufffd" in cell for cell in row)
        record = BadRow("not_utf8", "invalid UTF-8 in the row") if bad else row
        items.append((f"{path.name}:{n}", f"{subject}:{n}", record))
    return _build(
        items,
        lambda row, native: parse_mmlu(row, benchmark="mmlu", split=split, native=native, subject=subject),
        source=str(path),
        layout="mmlu",
    )


def read_pubmedqa(
    path: str | Path, *, split: str | None = None, ids: Iterable[str] | None = None
) -> QuestionSet:
    """PubMedQA ``ori_pqal.json``; ``ids`` (e.g. the keys of ``test_ground_truth.json``) selects a subset."""
    path = _check_file(Path(path), "pubmedqa", "pubmedqa")
    data = _whole_json(path, "pubmedqa")
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected {LAYOUTS['pubmedqa']}")
    return pubmedqa_from_mapping(
        data, source=str(path), split=split or split_of(path, "pubmedqa"), ids=ids, name=path.name
    )


def pubmedqa_from_mapping(
    data: dict, *, source: str, split: str, ids: Iterable[str] | None = None, name: str | None = None
) -> QuestionSet:
    """PubMedQA entries ``{pmid: record}`` (a file's or converted hub rows)."""
    wanted = None if ids is None else {str(i) for i in ids}
    items = [
        (f"{name or source}:{k}", str(k), r) for k, r in data.items() if wanted is None or str(k) in wanted
    ]
    return _build(
        items,
        lambda rec, native: parse_pubmedqa(rec, benchmark="pubmedqa", split=split, native=native),
        source=source,
        layout="pubmedqa",
    )


def from_records(
    records: Iterable[Any],
    *,
    layout: str,
    benchmark: str,
    split: str,
    source: str,
    cop_base: Any = "auto",
    subject: str = "",
) -> QuestionSet:
    """Native records from elsewhere (a hub dataset's rows), numbered from 1; ids ``{split}:{n}`` where none."""
    stem = subject if layout == "mmlu" else split
    items = _numbered(records, name=source, stem=stem)
    if layout == "medmcqa":
        return _medmcqa_set(
            items, source=source, benchmark=benchmark, split=split, cop_base=cop_base, default=0
        )
    parsers = {
        "medqa": lambda rec, native: parse_medqa(rec, benchmark=benchmark, split=split, native=native),
        "mmlu": lambda row, native: parse_mmlu(
            row, benchmark=benchmark, split=split, native=native, subject=subject
        ),
    }
    if layout not in parsers:
        raise ValueError(f"from_records reads the medqa, medmcqa and mmlu layouts, not {layout!r}")
    return _build(items, parsers[layout], source=source, layout=layout)


def detect_layout(path: str | Path) -> str:
    """The layout of a file, from its name and first record (for files given without a benchmark)."""
    path = Path(path)
    if path.suffix == ".csv":
        return "mmlu"
    if path.suffix == ".parquet":
        return "medmcqa"
    if not path.is_file():
        return "medqa"
    head = path.read_bytes()[:65536].decode("utf-8", errors="replace")
    if '"QUESTION"' in head:
        return "pubmedqa"
    return "medmcqa" if '"opa"' in head else "medqa"


def read_questions(
    path: str | Path,
    *,
    benchmark: str | None = None,
    split: str | None = None,
    layout: str | None = None,
    cop_base: Any = "auto",
) -> QuestionSet:
    """Any question file: the layout from ``benchmark`` (or ``layout``, or the file itself)."""
    path = Path(path)
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {sorted(BENCHMARKS)}")
    layout = layout or (BENCHMARKS[benchmark] if benchmark else detect_layout(path))
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {sorted(LAYOUTS)}")
    benchmark = benchmark or (path.parent.name if BENCHMARKS.get(path.parent.name) == layout else layout)
    if layout == "medqa":
        return read_medqa(path, benchmark=benchmark, split=split)
    if layout == "medmcqa":
        return read_medmcqa(path, split=split, cop_base=cop_base)
    if layout == "mmlu":
        return read_mmlu(path, split=split)
    return read_pubmedqa(path, split=split)


def eval_files(root: str | Path, benchmark: str) -> list[Path]:
    """The evaluation files of ``benchmark`` under the data folder ``root`` (missing ones: ``ValueError``)."""
    if benchmark not in EVAL_FILES:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {sorted(EVAL_FILES)}")
    layout = BENCHMARKS[benchmark]
    out: list[Path] = []
    for rel in EVAL_FILES[benchmark]:
        if "*" in rel:
            folder, pattern = (Path(root) / rel).parent, Path(rel).name
            found = sorted(folder.glob(pattern))
            if not found:
                raise _missing(folder / pattern, benchmark, layout)
            out += found
        else:
            out.append(_check_file(Path(root) / rel, benchmark, layout))
    return out


def read_benchmark(root: str | Path, benchmark: str, *, cop_base: Any = "auto") -> QuestionSet:
    """A benchmark's evaluation split from its default files under ``root`` (``EVAL_FILES``), as one set."""
    sets = [read_questions(p, benchmark=benchmark, cop_base=cop_base) for p in eval_files(root, benchmark)]
    return sets[0] if len(sets) == 1 else QuestionSet.merge(sets, source=f"{Path(root) / benchmark}")
