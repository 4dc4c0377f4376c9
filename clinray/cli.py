"""The ``clinray`` command line: one subcommand per job.

Subcommands are discovered from the modules of :mod:`clinray.commands`; each module defines ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int | None``, and is imported only when its
command runs, so ``clinray --help`` stays fast and one broken optional dependency cannot take the
whole CLI down. The command name is the module name with ``_`` turned into ``-``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import clinray.commands as _commands


def _module_help(path: Path) -> str:
    """Read ``HELP = "..."`` from a command module without importing it."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return ""
    for node in tree.body:
        is_help = isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "HELP" for t in node.targets)
        if is_help and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node.value.value
    return ""


def discover() -> dict[str, tuple[str, str]]:
    """Return ``{command: (module name, one-line help)}`` for every command module."""
    found = {}
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        path = Path(_commands.__path__[0]) / f"{info.name}.py"
        found[info.name.replace("_", "-")] = (f"clinray.commands.{info.name}", _module_help(path))
    return found


def add_config_arguments(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """Add the shared ``--config`` and ``--set`` options to a job's parser."""
    parser.add_argument("--config", default=default, help="YAML recipe (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.max_lr=1e-4 (repeatable)",
    )


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="clinray",
        description="Clinical LLM adaptation on Ray: curate, pack, pretrain, fine-tune, evaluate, serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = discover()
    wanted = next((a for a in argv if not a.startswith("-")), None)
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module of the command being run
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        result = modules[args.command].run(args)
    except ValueError as exc:  # user mistakes (ConfigError included) get a message, not a traceback
        print(f"clinray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
