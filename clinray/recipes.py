"""Recipes: the YAML configs shipped inside the package, found by name from any folder.

``--config tiny/curate`` names ``clinray/configs/tiny/curate.yaml``; a path to a YAML file works too and
wins when both exist. Nothing here depends on the current folder, so an installed clinray finds its
recipes wherever it runs (a job's working directory, a notebook, a fresh clone's sibling folder).

A recipe's job is its file stem when that names a job (``tiny/pack`` -> ``pack``), else the last ``_``
part of the stem that names one (``paper/mistral7b_pretrain`` -> ``pretrain``, ``paper/mistral7b_sft_neftune``
and the SFT mixture ``paper/sft_mix`` -> ``sft``), else the last part.
"""

from __future__ import annotations

from pathlib import Path

from clinray.config import ConfigError

__all__ = ["RECIPES_DIR", "resolve_recipe", "list_recipes", "recipe_job", "recipe_summary"]

#: The folder of the shipped recipes (package data).
RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def list_recipes() -> list[str]:
    """Names of every shipped recipe, e.g. ``["paper/curate", ..., "tiny/pretrain"]``."""
    return sorted(p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in RECIPES_DIR.rglob("*.yaml"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """The YAML file of a recipe name (``tiny/curate``) or of a path; a clear error when neither exists."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removesuffix(".yaml").removesuffix(".yml")
    shipped = RECIPES_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"config {str(name_or_path)!r} does not exist as a file or a shipped recipe; "
        f"recipes: {', '.join(list_recipes())} (see `clinray recipes`)"
    )


def recipe_job(name: str) -> str:
    """The job a shipped recipe configures (by the file-stem rule of this module's docstring)."""
    from clinray.jobs import JOBS

    stem = Path(name).name
    if stem in JOBS:
        return stem
    parts = stem.split("_")
    return next((part for part in reversed(parts) if part in JOBS), parts[-1])


def recipe_summary(name: str) -> str:
    """The first comment line of a recipe (its one-line description)."""
    for line in resolve_recipe(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
