"""Loaders and prompt functions of clinray's lm-eval tasks (used by the YAML files beside this one).

Every task YAML names a loader here as ``custom_dataset: !function utils.load_<dataset>``. lm-eval calls
it with the task's ``metadata`` (``--metadata`` JSON, plus model args and the YAML's path) and its
``dataset_kwargs``. Files are read in each dataset's native layout, relative to one data folder, so that
the same YAML files work from lm-eval's own CLI and from ``clinray eval``:

* ``data_dir`` in the metadata (``lm_eval --metadata '{"data_dir": "DIR"}'``), else the environment
  variable ``CLINRAY_DATA_DIR``; the default file of each task is relative to it (e.g.
  ``medqa/test.jsonl``) and ``paths: {task_name: file}`` in the metadata overrides one task's file.
* ``use_hub: true`` in the metadata loads the task's ``hub_id`` with ``datasets.load_dataset`` instead.

Files are parsed by :mod:`clinray.qa` (the one owner of the layouts). Every loader returns a
``DatasetDict`` with a ``test`` split of uniform rows ``{id, question, options, labels, answer_index}``
whose ``id`` is the question's stable ``clinray.qa`` id (``medqa/test/<id>``), the id decontamination
reports. Malformed and unlabelled rows are skipped, counted by reason, logged, and recorded with
:func:`clinray.eval.tasks.record_load` so ``clinray eval`` shows them on the console, in
``results.json`` and in the table's notes (an evaluation set with a broken row should be noticed, not
crash a sweep); a file with no usable row is an error. The trade-off: one loader function per dataset
layout instead of lm-eval's ``dataset_path``/``data_files`` keys, in exchange for files in their native
layouts and a data folder given once instead of in every YAML.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from clinray.models.chat_template import ANSWER_PREFIX, mcq_prompt
from clinray.qa import (
    LETTERS,
    QuestionSet,
    from_records,
    normalize_cop_base,
    pubmedqa_from_mapping,
    read_medmcqa,
    read_medqa,
    read_mmlu,
    read_pubmedqa,
    split_of,
)

log = logging.getLogger("clinray.eval.tasks")

DATA_DIR_ENV = "CLINRAY_DATA_DIR"

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


def task_name(config_source: str | None) -> str | None:
    """The task a loader is called for: its YAML file's stem (lm-eval passes the path as ``config_source``)."""
    return Path(config_source).stem if config_source else None


def question_rows(questions: QuestionSet) -> list[dict]:
    """lm-eval rows ``{id, question, options, labels, answer_index}`` (PubMedQA: abstract, then question)."""
    return [
        {
            "id": q.id,
            "question": q.text,
            "options": list(q.options),
            "labels": q.letters,
            "answer_index": q.answer_index,
        }
        for q in questions
    ]


def _num_options_hint(benchmark: str, num_options: int) -> str:
    if benchmark == "medqa" and num_options == 4:
        return "5-option MedQA belongs in medqa_5/ and is evaluated by clinray_medqa_5"
    if benchmark == "medqa_5" and num_options == 5:
        return "4-option MedQA belongs in medqa/ and is evaluated by clinray_medqa_4"
    return ""


def finish(questions: QuestionSet, *, task: str | None, num_options: int | None = None):
    """Questions a task can score, recorded for the harness and logged; lm-eval's ``DatasetDict``."""
    from clinray.eval.tasks import record_load

    name = task or questions.source
    questions = questions.require_answers(purpose=f"evaluation (task {name})")
    if num_options:
        benchmark = questions.questions[0].benchmark
        questions = questions.require_num_options(num_options, hint=_num_options_hint(benchmark, num_options))
    if questions.skipped:
        log.warning(
            "skipped %d question rows in %s: %s",
            len(questions.skipped),
            questions.source,
            questions.describe_skipped(),
        )
    for warning in questions.warnings:
        log.warning("%s", warning)
    record_load(name, {"task": name, **questions.report()})
    return _dataset(question_rows(questions))


def _dataset(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _hub_rows(hub_id: str | None, hub_name: str | None, hub_split: str) -> list[dict]:
    if not hub_id:
        raise ValueError("use_hub is set but this task has no hub_id in its dataset_kwargs")
    import datasets

    return list(datasets.load_dataset(hub_id, hub_name, split=hub_split))


def load_medqa(
    *,
    test_file: str,
    benchmark: str = "medqa",
    num_options: int | None = None,
    data_dir=None,
    paths=None,
    config_source=None,
    use_hub=False,
    hub_id=None,
    hub_name=None,
    hub_split="test",
    **_,
):
    """MedQA / USMLE questions in MedQA's JSONL layout; ``num_options`` (from the YAML) is enforced."""
    if use_hub:
        records = _hub_rows(hub_id, hub_name, hub_split)
        split = split_of(hub_split, benchmark)
        questions = from_records(
            records, layout="medqa", benchmark=benchmark, split=split, source=f"{hub_id}:{hub_split}"
        )
    else:
        path = resolve_file(test_file, data_dir=data_dir, paths=paths, config_source=config_source)
        questions = read_medqa(path, benchmark=benchmark)
    return finish(questions, task=task_name(config_source), num_options=num_options)


def load_medmcqa(
    *,
    test_file: str,
    cop_base="auto",
    medmcqa_cop_base="auto",
    data_dir=None,
    paths=None,
    config_source=None,
    use_hub=False,
    hub_id=None,
    hub_name=None,
    hub_split="validation",
    **_,
):
    """MedMCQA (validation split as test): release JSON or Parquet, ``cop``'s base detected.

    ``cop_base`` (dataset_kwargs) or ``medmcqa_cop_base`` (metadata: ``clinray eval``'s ``cop_base``,
    which wins) set it to 0 or 1 instead of ``auto``.
    """
    setting = medmcqa_cop_base if normalize_cop_base(medmcqa_cop_base) != "auto" else cop_base
    normalize_cop_base(setting)
    if use_hub:
        split = split_of(hub_split, "medmcqa")
        questions = from_records(
            _hub_rows(hub_id, hub_name, hub_split),
            layout="medmcqa",
            benchmark="medmcqa",
            split=split,
            source=f"{hub_id}:{hub_split}",
            cop_base=setting,
        )
    else:
        path = resolve_file(test_file, data_dir=data_dir, paths=paths, config_source=config_source)
        questions = read_medmcqa(path, cop_base=setting)
    return finish(questions, task=task_name(config_source))


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
        rows = [
            [r["question"], *r["choices"], LETTERS[int(r["answer"])]]
            for r in _hub_rows(hub_id, subject, hub_split)
        ]
        questions = from_records(
            rows,
            layout="mmlu",
            benchmark="mmlu",
            split=hub_split,
            source=f"{hub_id}:{subject}:{hub_split}",
            subject=subject,
        )
    else:
        default = test_file or f"mmlu/test/{subject}_test.csv"
        path = resolve_file(default, data_dir=data_dir, paths=paths, config_source=config_source)
        questions = read_mmlu(path, subject=subject)
    return finish(questions, task=task_name(config_source))


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
    ids = None
    if test_ids_file:
        ids_path = resolve_file(test_ids_file, data_dir=data_dir, paths=None, config_source=None)
        ids = list(json.loads(ids_path.read_text(encoding="utf-8")))
    if use_hub:
        native = {
            str(r.get("pubid")): {
                "QUESTION": r.get("question"),
                "CONTEXTS": (r.get("context") or {}).get("contexts", []),
                "final_decision": r.get("final_decision"),
                "LONG_ANSWER": r.get("long_answer"),
            }
            for r in _hub_rows(hub_id, hub_name, hub_split)
        }
        # pqa_labeled on the hub is the release's ori_pqal.json: the same split name, the same ids
        questions = pubmedqa_from_mapping(native, source=f"{hub_id}:{hub_split}", split="ori_pqal", ids=ids)
    else:
        path = resolve_file(test_file, data_dir=data_dir, paths=paths, config_source=config_source)
        questions = read_pubmedqa(path, ids=ids)
    return finish(questions, task=task_name(config_source))
