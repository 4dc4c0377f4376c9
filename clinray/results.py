"""The typed result every stage's library entry returns, and the checks a root config runs before Ray.

A stage's entry (``run_curation``, ``run_pack``, ``run_pretrain``, ``run_evaluation``, ``build_index``,
``run_medprompt_eval``) returns a :class:`StageResult` subclass: its output paths, the resolved
``config.yaml`` it wrote next to them, ``ok`` and a short ``summary()`` for the terminal. The job runner
(:mod:`clinray.jobs`) turns ``ok`` into the exit code, so every door (CLI, ``ray_jobs``, demo) agrees.

The helpers below are what root configs use in ``check_inputs()``: they only look at the file system
(no Ray, no model loads beyond a ``config.json`` read), so a mistake is reported in well under a second
with every missing file at once.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from pathlib import Path

from clinray import storage

__all__ = ["StageResult", "missing_dir", "missing_file", "missing_model", "missing_glob"]


@dataclasses.dataclass(kw_only=True)
class StageResult:
    """What every stage's library entry returns."""

    config_path: Path
    """The resolved config, written by the entry next to its outputs."""
    problems: list[str] = dataclasses.field(default_factory=list)
    """Why the run is not ok (empty on a sound run): a failed accounting identity, nothing written, ..."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def outputs(self) -> dict[str, str]:
        """Named output paths (what later stages read; the demo keeps them as its artifacts)."""
        return {}

    def summary(self) -> str:
        """A few lines for the terminal: the numbers that matter and where the outputs are."""
        lines = [f"{name}: {path}" for name, path in self.outputs().items()]
        lines.append(f"resolved config: {self.config_path}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def _remote_problem(path: str, what: str, check) -> list[str]:
    """Run a storage check of a URI; an unreachable store (no credentials, no such bucket) is a message."""
    try:
        return check()
    except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses for S3/GCS errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"{what} {path!r} cannot be read: {first}"]


def missing_dir(path: str | Path, what: str) -> list[str]:
    """``[message]`` when ``path`` is not an existing folder (for a URI: a prefix holding files)."""
    if storage.is_uri(str(path)):
        return _remote_problem(
            str(path),
            what,
            lambda: [] if storage.isdir_nonempty(path) else [f"{what} {str(path)!r} holds no file"],
        )
    if not str(path):
        return [f"{what} is not set"]
    return [] if Path(path).is_dir() else [f"{what} {str(path)!r} is not a folder"]


def missing_file(path: str | Path, what: str) -> list[str]:
    """``[message]`` when ``path`` is not an existing file."""
    if storage.is_uri(str(path)):
        return _remote_problem(
            str(path), what, lambda: [] if storage.isfile(path) else [f"{what} {str(path)!r} does not exist"]
        )
    if not str(path):
        return [f"{what} is not set"]
    return [] if Path(path).is_file() else [f"{what} {str(path)!r} does not exist"]


def missing_model(path: str, what: str) -> list[str]:
    """``[message]`` unless ``path`` is an HF model folder whose ``config.json`` parses (or a hub id)."""
    if not path:
        return [f"{what} is not set (a Hugging Face model folder)"]
    folder = Path(path)
    if not folder.exists():
        looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
        return [] if looks_like_hub_id else [f"{what} {path!r} does not exist"]
    config = folder / "config.json"
    if not config.is_file():
        return [f"{what} {path!r} is not a Hugging Face model folder (no config.json)"]
    try:
        if "model_type" not in json.loads(config.read_text()):
            return [f"{what} {path!r}: config.json has no model_type"]
    except (OSError, ValueError) as exc:
        return [f"{what} {path!r}: config.json does not load ({exc})"]
    return []


def missing_glob(root: str | Path, pattern: str, what: str) -> list[str]:
    """``[message]`` when ``root/pattern`` matches no file."""
    if storage.is_uri(str(root)):
        return _remote_problem(
            str(root), what, lambda: [] if storage.find(root, pattern) else [f"{what} matches no file"]
        )
    return [] if glob.glob(str(Path(root) / pattern), recursive=True) else [f"{what} matches no file"]
