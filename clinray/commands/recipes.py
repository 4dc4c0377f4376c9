"""``clinray recipes``: the shipped recipes, by name, with the job each configures."""

from __future__ import annotations

import argparse

HELP = "list the shipped recipes (pass one to a stage as --config NAME, e.g. --config tiny/curate)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--show", metavar="NAME", help="print one recipe's YAML instead")


def run(args: argparse.Namespace) -> int:
    from clinray.recipes import list_recipes, recipe_job, recipe_summary, resolve_recipe

    if args.show:
        print(resolve_recipe(args.show).read_text(encoding="utf-8"), end="")
        return 0
    names = list_recipes()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {recipe_job(name):<14}  {recipe_summary(name)}")
    return 0
