"""clinray's lm-eval task folder (``lm_eval --include_path clinray/eval/tasks``) and the files each task reads.

:func:`task_files` reads a task's YAML (following groups to their tasks) for the data file it loads
relative to the data folder, so ``clinray eval`` can list every missing file before Ray and lm-eval start.
Tasks that are not clinray's (lm-eval built-ins) read no local files and list none.
:func:`record_load` / :func:`take_load_reports` carry what each load skipped from the loaders (run inside
lm-eval, inside a Ray task) to the harness, which returns it to the driver.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

TASKS_DIR = Path(__file__).resolve().parent


class _Loader(yaml.SafeLoader):
    """Reads lm-eval task YAML without resolving ``!function`` tags."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


@functools.cache
def _task_index() -> dict[str, dict]:
    """Every task and group YAML of this folder by name, parsed once per process."""
    index: dict[str, dict] = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
        for key in ("task", "group"):
            if isinstance(data.get(key), str):
                index.setdefault(data[key], data)
    return index


def _task_yaml(name: str) -> dict | None:
    return _task_index().get(name)


def task_files(name: str) -> list[str]:
    """The data files (relative to the data folder) that task or group ``name`` reads."""
    data = _task_yaml(name)
    if data is None:
        return []
    if "group" in data:
        return [f for sub in data.get("task", []) if isinstance(sub, str) for f in task_files(sub)]
    kwargs = data.get("dataset_kwargs") or {}
    if kwargs.get("test_file"):
        return [kwargs["test_file"]]
    if kwargs.get("subject"):  # MMLU: the original release layout
        return [f"mmlu/test/{kwargs['subject']}_test.csv"]
    return []


# ----------------------------------------------------------------------------- what each load skipped

#: Task name -> :meth:`clinray.qa.QuestionSet.report` of its last load in this process. lm-eval imports
#: ``utils.py`` by file path (one module object per YAML), so the loaders record here, in a module every
#: copy imports the same way; :func:`clinray.eval.harness.evaluate_model` takes the reports back to the
#: driver.
_LOADS: dict[str, dict] = {}


def record_load(task: str, report: dict) -> None:
    """Remember what loading ``task``'s questions read and skipped."""
    _LOADS[task] = report


def take_load_reports() -> dict[str, dict]:
    """The reports recorded since the last call (and forget them)."""
    out = dict(_LOADS)
    _LOADS.clear()
    return out
