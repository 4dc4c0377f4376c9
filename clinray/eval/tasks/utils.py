"""Loaders and prompt functions of clinray's lm-eval tasks (used by the YAML files beside this one).

Every task YAML names a loader here as ``custom_dataset: !function utils.load_<dataset>``. lm-eval calls
it with the task's ``metadata`` (``--metadata`` JSON, plus model args and the YAML's path) and its
``dataset_kwargs``. Files are read in each dataset's native layout, relative to one data folder, so that
the same YAML files work from lm-eval's own CLI and from ``clinray eval``:

* ``data_dir`` in the metadata (``lm_eval --metadata '{"data_dir": "DIR"}'``), else the environment
  variable ``CLINRAY_DATA_DIR``; the default file of each task is relative to it (e.g.
  ``medqa/test.jsonl``) and ``paths: {task_name: file}`` in the metadata overrides one task's file.
* ``use_hub: true`` in the metadata loads the task's ``hub_id`` with ``datasets.load_dataset`` instead.

Every loader returns a ``DatasetDict`` with a ``test`` split of uniform rows ``{id, question, options,
labels, answer_index}``; malformed rows are skipped with a logged warning that counts them by reason
(an evaluation set with a broken row should be noticed, not crash a sweep). The trade-off: one loader
function per dataset layout instead of lm-eval's ``dataset_path``/``data_files`` keys, in exchange for
files in their native layouts and a data folder given once instead of in every YAML.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from clinray.models.chat_template import ANSWER_PREFIX, mcq_prompt

log = logging.getLogger("clinray.eval.tasks")

DATA_DIR_ENV = "CLINRAY_DATA_DIR"
LETTERS = "ABCDEFGHIJ"
PUBMEDQA_CHOICES = ("yes", "no", "maybe")

#: The 13 MMLU subjects of the paper (section 5).
MMLU_MEDICAL_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
    "college_biology",
    "high_school_biology",
    "professional_psychology",
    "high_school_psychology",
    "human_sexuality",
    "human_aging",
    "nutrition",
    "virology",
)


# ----------------------------------------------------------------------------- prompts (lm-eval hooks)


def doc_to_text(doc: dict) -> str:
    """Figure 4 up to ``<|assistant|>: The correct answer is:``; the full answer text follows."""
    return f"{mcq_prompt(doc['question'], doc['options'])} {ANSWER_PREFIX}"


def doc_to_text_letter(doc: dict) -> str:
    """Figure 4 with lettered options (``A. text``); the option letter follows (leaderboard style)."""
    return f"{mcq_prompt(doc['question'], doc['options'], labels=doc['labels'])} {ANSWER_PREFIX}"


def doc_to_choice(doc: dict) -> list[str]:
    """The full answer texts."""
    return list(doc["options"])


def doc_to_choice_letter(doc: dict) -> list[str]:
    """The option letters."""
    return list(doc["labels"])


# ----------------------------------------------------------------------------- row normalizers


class BadRow(ValueError):
    """A question row that cannot be evaluated; the message is the reason."""


def _question(question: Any, options: list[str], answer_index: int, *, row_id: str) -> dict:
    if not isinstance(question, str) or not question.strip():
        raise BadRow("empty question")
    if len(options) < 2:
        raise BadRow("fewer than 2 options")
    if any(not isinstance(o, str) or not o.strip() for o in options):
        raise BadRow("empty option text")
    if not 0 <= answer_index < len(options):
        raise BadRow(f"answer index {answer_index} out of range for {len(options)} options")
    return {
        "id": str(row_id),
        "question": question.strip(),
        "options": [o.strip() for o in options],
        "labels": list(LETTERS[: len(options)]),
        "answer_index": int(answer_index),
    }


def medqa_row(row: dict, *, row_id: str) -> dict:
    """MedQA / USMLE JSONL: ``question``, ``options`` {letter: text}, ``answer_idx`` (or ``answer``)."""
    options = row.get("options")
    if isinstance(options, list):  # some exports store [{"key": "A", "value": "..."}]
        options = {o.get("key"): o.get("value") for o in options if isinstance(o, dict)}
    if not isinstance(options, dict) or not options:
        raise BadRow("missing 'options' mapping")
    letters = sorted(k for k in options if isinstance(k, str))
    texts = [options[k] for k in letters]
    if row.get("answer_idx") in letters:
        answer_index = letters.index(row["answer_idx"])
    elif row.get("answer") in texts:
        answer_index = texts.index(row["answer"])
    else:
        raise BadRow(f"answer_idx {row.get('answer_idx')!r} is not one of the option letters {letters}")
    return _question(row.get("question"), texts, answer_index, row_id=row.get("id", row_id))


def medmcqa_row(row: dict, *, row_id: str, cop_base: int) -> dict:
    """MedMCQA: ``question``, ``opa``..``opd``, ``cop`` (1-based in the release files, 0-based on the hub)."""
    try:
        cop = int(row["cop"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRow(f"missing or non-integer 'cop' ({exc})") from None
    options = [row.get(k) for k in ("opa", "opb", "opc", "opd")]
    return _question(row.get("question"), options, cop - cop_base, row_id=row.get("id", row_id))


def mmlu_row(row: list[str], *, row_id: str) -> dict:
    """MMLU CSV (no header): question, A, B, C, D, answer letter."""
    if len(row) != 6:
        raise BadRow(f"expected 6 columns, got {len(row)}")
    answer = row[5].strip()
    if answer not in LETTERS[:4]:
        raise BadRow(f"answer {answer!r} is not A-D")
    return _question(row[0], row[1:5], LETTERS.index(answer), row_id=row_id)


def pubmedqa_row(row: dict, *, row_id: str) -> dict:
    """PubMedQA ``ori_pqal.json`` entry: QUESTION, CONTEXTS, final_decision (yes/no/maybe)."""
    contexts = row.get("CONTEXTS") or []
    decision = str(row.get("final_decision", "")).strip().lower()
    if decision not in PUBMEDQA_CHOICES:
        raise BadRow(f"final_decision {decision!r} is not yes/no/maybe")
    question = row.get("QUESTION")
    if not isinstance(question, str) or not question.strip():
        raise BadRow("empty QUESTION")
    text = "\n".join([*(c.strip() for c in contexts if isinstance(c, str)), question.strip()])
    return _question(text, list(PUBMEDQA_CHOICES), PUBMEDQA_CHOICES.index(decision), row_id=row_id)


# ----------------------------------------------------------------------------- file readers


def read_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    """Yield ``(locator, record)`` for each line; a line that is not JSON yields the error as record."""
    with path.open(encoding="utf-8") as fh:
        for num, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"{path.name}:{num}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{path.name}:{num}", BadRow(f"not JSON ({exc.msg})")


def read_json_records(path: Path) -> Iterable[tuple[str, Any]]:
    """A JSON array, a ``{id: record}`` object, or one object per line (MedMCQA's release files)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from read_jsonl(path)
        return
    if isinstance(data, list):
        yield from ((f"{path.name}[{i}]", r) for i, r in enumerate(data))
    elif isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        yield from data.items()
    else:
        yield f"{path.name}", data


def normalize_rows(records: Iterable[tuple[str, Any]], convert: Callable[..., dict], *, source: str) -> list:
    """Convert records, skipping bad ones with one warning that counts them by reason."""
    rows, bad = [], collections.Counter()
    examples: dict[str, str] = {}
    for locator, record in records:
        try:
            if isinstance(record, Exception):
                raise record
            rows.append(convert(record, row_id=locator))
        except BadRow as exc:
            bad[str(exc)] += 1
            examples.setdefault(str(exc), locator)
    if bad:
        detail = "; ".join(f"{n} x {reason} (first at {examples[reason]})" for reason, n in bad.most_common())
        log.warning("skipped %d malformed question rows in %s: %s", sum(bad.values()), source, detail)
    if not rows:
        raise ValueError(
            f"no valid question rows in {source}; check the file's layout (see docs/evaluation.md)"
        )
    return rows


# ----------------------------------------------------------------------------- loaders (custom_dataset)


def resolve_file(
    default: str, *, data_dir: str | None, paths: dict | None, config_source: str | None
) -> Path:
    """The task's file: ``paths[task]`` or ``default``, relative to ``data_dir`` / ``$CLINRAY_DATA_DIR``."""
    task = Path(config_source).stem.removesuffix("_letter") if config_source else None
    chosen = (paths or {}).get(task, default) if task else default
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        root = data_dir or os.environ.get(DATA_DIR_ENV)
        if not root:
            raise ValueError(
                f'task {task or "?"} needs its data folder: pass --metadata \'{{"data_dir": "DIR"}}\' to lm_eval, '
                f"set {DATA_DIR_ENV}=DIR, or set data_dir in the clinray eval config; DIR holds {chosen}"
            )
        path = Path(root).expanduser() / path
    if not path.is_file():
        raise ValueError(
            f"task {task or '?'}: data file {str(path)!r} does not exist (expected layout: {chosen})"
        )
    return path


def _dataset(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _from_hub(hub_id: str | None, hub_name: str | None, hub_split: str, convert: Callable, **kw):
    if not hub_id:
        raise ValueError("use_hub is set but this task has no hub_id in its dataset_kwargs")
    import datasets

    ds = datasets.load_dataset(hub_id, hub_name, split=hub_split)
    records = ((f"{hub_id}[{i}]", r) for i, r in enumerate(ds))
    return _dataset(normalize_rows(records, convert, source=f"{hub_id}:{hub_split}"))


def load_medqa(
    *,
    test_file: str,
    data_dir=None,
    paths=None,
    config_source=None,
    use_hub=False,
    hub_id=None,
    hub_name=None,
    hub_split="test",
    **_,
):
    """MedQA / USMLE questions in MedQA's JSONL layout (any number of options)."""
    if use_hub:
        return _from_hub(hub_id, hub_name, hub_split, medqa_row)
    path = resolve_file(test_file, data_dir=data_dir, paths=paths, config_source=config_source)
    return _dataset(normalize_rows(read_jsonl(path), medqa_row, source=str(path)))


def load_medmcqa(
    *,
    test_file: str,
    cop_base: int | None = None,
    data_dir=None,
    paths=None,
    config_source=None,
    use_hub=False,
    hub_id=None,
    hub_name=None,
    hub_split="validation",
    **_,
):
    """MedMCQA (validation split as test): release JSON (``cop`` 1-based) or Parquet (0-based)."""
    if use_hub:
        return _from_hub(hub_id, hub_name, hub_split, _medmcqa_converter(0 if cop_base is None else cop_base))
    path = resolve_file(test_file, data_dir=data_dir, paths=paths, config_source=config_source)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = ((f"{path.name}[{i}]", r) for i, r in enumerate(pq.read_table(path).to_pylist()))
        base = 0 if cop_base is None else cop_base
    else:
        records = read_json_records(path)
        base = 1 if cop_base is None else cop_base
    return _dataset(normalize_rows(records, _medmcqa_converter(base), source=str(path)))


def _medmcqa_converter(cop_base: int) -> Callable[..., dict]:
    if cop_base not in (0, 1):
        raise ValueError(f"cop_base must be 0 (hub/Parquet) or 1 (release JSON files), got {cop_base!r}")
    return lambda row, *, row_id: medmcqa_row(row, row_id=row_id, cop_base=cop_base)


def load_mmlu(
    *,
    subject: str,
    test_file: str | None = None,
    data_dir=None,
    paths=None,
    config_source=None,
    use_hub=False,
    hub_id="cais/mmlu",
    hub_split="test",
    **_,
):
    """One MMLU subject from ``mmlu/test/<subject>_test.csv`` (the original release layout)."""
    if use_hub:

        def convert(row, *, row_id):
            return mmlu_row([row["question"], *row["choices"], LETTERS[int(row["answer"])]], row_id=row_id)

        return _from_hub(hub_id, subject, hub_split, convert)
    default = test_file or f"mmlu/test/{subject}_test.csv"
    path = resolve_file(default, data_dir=data_dir, paths=paths, config_source=config_source)
    with path.open(encoding="utf-8", newline="") as fh:
        records = [(f"{path.name}:{i}", row) for i, row in enumerate(csv.reader(fh), 1)]
    return _dataset(normalize_rows(records, mmlu_row, source=str(path)))


def load_pubmedqa(
    *,
    test_file: str,
    test_ids_file: str | None = None,
    data_dir=None,
    paths=None,
    config_source=None,
    use_hub=False,
    hub_id=None,
    hub_name=None,
    hub_split="train",
    **_,
):
    """PubMedQA's expert-labelled ``ori_pqal.json``; ``test_ids_file`` (``{pmid: label}``) selects a split."""
    if use_hub:

        def convert(row, *, row_id):
            ctx = row.get("context") or {}
            native = {
                "QUESTION": row.get("question"),
                "CONTEXTS": ctx.get("contexts", []),
                "final_decision": row.get("final_decision"),
            }
            return pubmedqa_row(native, row_id=row.get("pubid", row_id))

        return _from_hub(hub_id, hub_name, hub_split, convert)
    path = resolve_file(test_file, data_dir=data_dir, paths=paths, config_source=config_source)
    records = list(read_json_records(path))
    if test_ids_file:
        ids_path = resolve_file(test_ids_file, data_dir=data_dir, paths=None, config_source=None)
        wanted = set(json.loads(ids_path.read_text()))
        records = [(k, r) for k, r in records if k in wanted]
    return _dataset(normalize_rows(records, pubmedqa_row, source=str(path)))
