"""Notes with multi-label outcomes: a loader for MIMIC-style CSV files and a synthetic task from the tiny world.

The loader reads local files only (MIMIC needs credentials; none ships): a note text column plus either
one 0/1 column per label (wide, e.g. mortality or length-of-stay buckets) or one column holding a list
of codes (``short_codes`` of the clinical outcome prediction diagnoses/procedures tasks). A row that is
broken on its own (wrong field count, empty note, a label that is not 0/1) is skipped and counted under
its reason; a file that is broken as a whole (missing, no header, unknown columns, no good row) raises
ValueError. The trade-off: a few bad rows never stop a run, and their count is in the report instead.

The synthetic task turns the tiny world's facts into admission notes: a patient "has" some of
``num_labels`` conditions, and each present condition is mentioned only through a cue the clinical
corpus ties to it (its diagnostic test, its typical finding, or its drug), never by name; notes also
mention cues of conditions outside the label set. The labels are thus exactly what follows from the
corpus's facts, so a clinical adapter trained on that corpus can help; ``held_out_cue`` keeps one cue
kind out of the training notes and uses only it in the test notes (the transfer a model can make only
through knowledge, not through the notes' surface). Deterministic for a seed.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import random
import sys
from pathlib import Path

__all__ = ["Notes", "OutcomeTask", "load_notes_csv", "write_notes_csv", "synthetic_outcome_task", "CUE_KINDS"]

CUE_KINDS = ("test", "finding", "drug")
_CUE_TEMPLATES = {
    "test": ["{test_cap} came back positive.", "{test_cap} was positive on admission."],
    "finding": ["Examination showed {finding}.", "On exam there was {finding}."],
    "drug": ["The patient was started on {drug}.", "Home medications include {drug}."],
}


@dataclasses.dataclass(kw_only=True, slots=True)
class Notes:
    """Notes and their 0/1 labels, one row per note, plus what the loader skipped."""

    texts: list[str]
    labels: list[list[int]]
    label_names: list[str]
    ids: list[str]
    bad_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    """Skipped rows per reason: wrong_field_count, empty_text, missing_label, bad_label_value, csv_error."""
    bad_examples: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    """(line number, reason) of the first skipped rows."""

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass(kw_only=True, slots=True)
class OutcomeTask:
    train: Notes
    test: Notes
    label_facts: list[dict]
    """The world facts behind the labels (label i is ``label_facts[i]["condition"]``)."""


def _label_value(raw: str) -> int | None:
    value = raw.strip().lower()
    if value in ("1", "1.0", "true"):
        return 1
    if value in ("0", "0.0", "false"):
        return 0
    return None


def load_notes_csv(
    path: str | Path,
    *,
    text_column: str = "text",
    label_columns: list[str] | None = None,
    id_column: str | None = None,
    codes_column: str | None = None,
    codes_sep: str = ",",
    label_names: list[str] | None = None,
    max_bad_examples: int = 20,
    require_labels: bool = True,
) -> Notes:
    """Read a MIMIC-style CSV of notes.

    Args:
        text_column: the note text.
        label_columns: the 0/1 label columns (wide layout); None: every column but the text, the id and
            ``codes_column``.
        id_column: a column of note ids (None: the line numbers).
        codes_column: a column of ``codes_sep``-separated codes, one label per distinct code (instead of
            wide columns); ``label_names`` fixes the codes and their order (e.g. a test file read with the
            train file's codes), else the sorted codes seen.
        require_labels: False reads the notes alone (``label_columns=[]``: step 1's clinical text).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"notes CSV {str(path)!r}: no such file")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # discharge summaries exceed the 128 KB default
    bad: collections.Counter[str] = collections.Counter()
    examples: list[tuple[int, str]] = []

    def reject(line: int, reason: str) -> None:
        bad[reason] += 1
        if len(examples) < max_bad_examples:
            examples.append((line, reason))

    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"notes CSV {str(path)!r} is empty (no header row)") from None
        header = [h.strip() for h in header]
        if text_column not in header:
            raise ValueError(f"notes CSV {str(path)!r} has no text column {text_column!r}; columns: {header}")
        for name, what in ((id_column, "id"), (codes_column, "codes")):
            if name is not None and name not in header:
                raise ValueError(f"notes CSV {str(path)!r} has no {what} column {name!r}; columns: {header}")
        if codes_column is None:
            skip = {text_column, id_column}
            names = label_columns if label_columns is not None else [h for h in header if h not in skip]
            unknown = [n for n in names if n not in header]
            if unknown:
                raise ValueError(f"notes CSV {str(path)!r} lacks label columns {unknown}; columns: {header}")
            if not names and require_labels:
                raise ValueError(f"notes CSV {str(path)!r} has no label column besides {text_column!r}")
        col = {h: i for i, h in enumerate(header)}
        rows: list[tuple[str, str, object]] = []
        line = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:
                reject(reader.line_num, "csv_error")  # the reader cannot resynchronize after this
                break
            line = reader.line_num
            if len(row) != len(header):
                reject(line, "wrong_field_count")
                continue
            text = row[col[text_column]].strip()
            if not text:
                reject(line, "empty_text")
                continue
            note_id = row[col[id_column]] if id_column else str(line)
            if codes_column is not None:
                codes = [c.strip() for c in row[col[codes_column]].split(codes_sep) if c.strip()]
                rows.append((note_id, text, codes))
                continue
            values = [row[col[n]] for n in names]
            if any(not v.strip() for v in values):
                reject(line, "missing_label")
                continue
            parsed = [_label_value(v) for v in values]
            if any(v is None for v in parsed):
                reject(line, "bad_label_value")
                continue
            rows.append((note_id, text, parsed))
    if codes_column is not None:
        names = label_names or sorted({c for _, _, codes in rows for c in codes})
        index = {n: i for i, n in enumerate(names)}
        labelled = []
        for note_id, text, codes in rows:
            vec = [0] * len(names)
            for code in codes:
                if code in index:
                    vec[index[code]] = 1
            labelled.append((note_id, text, vec))
        rows = labelled
    if not rows:
        raise ValueError(
            f"notes CSV {str(path)!r}: no usable row (skipped: {dict(bad) or 'none, the file has no rows'})"
        )
    return Notes(
        texts=[r[1] for r in rows],
        labels=[list(r[2]) for r in rows],
        label_names=list(names),
        ids=[r[0] for r in rows],
        bad_rows=dict(bad),
        bad_examples=examples,
    )


def write_notes_csv(notes: Notes, path: str | Path) -> Path:
    """Write ``notes`` in the wide MIMIC-style layout (``id``, ``text``, one 0/1 column per label)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", *notes.label_names])
        for note_id, text, row in zip(notes.ids, notes.texts, notes.labels, strict=True):
            writer.writerow([note_id, text, *row])
    return path


def _cue(fact: dict, kind: str, rng: random.Random) -> str:
    slots = {**fact, "test_cap": fact["test"][:1].upper() + fact["test"][1:]}
    return rng.choice(_CUE_TEMPLATES[kind]).format(**slots)


def _notes(
    count: int,
    *,
    split: str,
    label_facts: list[dict],
    others: list[dict],
    rng: random.Random,
    present_prob: float,
    distractors: int,
    kinds: tuple[str, ...],
    other_kinds: tuple[str, ...],
) -> Notes:
    texts, labels = [], []
    for _ in range(count):
        row = [1 if rng.random() < present_prob else 0 for _ in label_facts]
        cues = [_cue(f, rng.choice(kinds), rng) for f, on in zip(label_facts, row, strict=True) if on]
        cues += [_cue(f, rng.choice(other_kinds), rng) for f in rng.sample(others, distractors)]
        rng.shuffle(cues)
        age, sex = rng.randint(18, 90), rng.choice(["man", "woman"])
        texts.append(f"Admission note. A {age}-year-old {sex} was admitted for evaluation. {' '.join(cues)}")
        labels.append(row)
    return Notes(
        texts=texts,
        labels=labels,
        label_names=[f["condition"] for f in label_facts],
        ids=[f"{split}-{i:05d}" for i in range(count)],
    )


def synthetic_outcome_task(
    world_dir: str | Path,
    *,
    num_labels: int = 6,
    num_train: int = 240,
    num_test: int = 160,
    seed: int = 0,
    present_prob: float = 0.3,
    distractors: int = 2,
    held_out_cue: str | None = None,
) -> OutcomeTask:
    """Admission notes from the tiny world's ``kb/facts.jsonl`` whose labels are the conditions the notes'
    cues (test, finding, drug) point to, by the facts the clinical corpus states (module docstring)."""
    facts_path = Path(world_dir) / "kb" / "facts.jsonl"
    if not facts_path.is_file():
        raise ValueError(f"{facts_path} not found: world_dir must be a tiny world (clinray world --out DIR)")
    if held_out_cue is not None and held_out_cue not in CUE_KINDS:
        raise ValueError(f"held_out_cue {held_out_cue!r} is not one of {list(CUE_KINDS)}")
    facts = [json.loads(line) for line in facts_path.read_text().splitlines() if line.strip()]
    findings = collections.Counter(f["finding"] for f in facts)
    unique = [f for f in facts if findings[f["finding"]] == 1]  # a cue must point to one condition only
    if len(unique) < num_labels + distractors:
        raise ValueError(f"the world has {len(unique)} facts with a unique finding, fewer than needed")
    rng = random.Random(f"outcome:{seed}")
    label_facts = rng.sample(unique, num_labels)
    others = [f for f in unique if f not in label_facts]
    train_kinds = tuple(k for k in CUE_KINDS if k != held_out_cue)
    test_kinds = (held_out_cue,) if held_out_cue else CUE_KINDS
    common = dict(
        label_facts=label_facts,
        others=others,
        present_prob=present_prob,
        distractors=distractors,
        other_kinds=CUE_KINDS,
    )
    train = _notes(num_train, split="train", rng=rng, kinds=train_kinds, **common)
    test = _notes(num_test, split="test", rng=rng, kinds=test_kinds, **common)
    return OutcomeTask(train=train, test=test, label_facts=label_facts)
