"""The ``clinray`` command line: one subcommand per stage, plus a few tools.

Stages (``curate``, ``pack``, ``pretrain``, ``eval``, ``index``, ``medprompt-eval``) come from
:data:`clinray.jobs.JOBS` and run through the one job runner that ``ray_jobs`` and the demo use, so
every door gives the same config checks, outputs and exit codes. Tools (``world``, ``tiny-model``,
``demo``, ``recipes``, ``medprompt``) are the modules of :mod:`clinray.commands`; each defines ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int | None``, and is imported only when its
command runs, so ``clinray --help`` stays fast and one broken optional dependency cannot take the
whole CLI down. A command's name is its module or job name with ``_`` turned into ``-``.
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


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    from clinray.jobs import JOBS, add_job_arguments

    parser = argparse.ArgumentParser(
        prog="clinray",
        description="Clinical LLM adaptation on Ray: curate, pack, pretrain, fine-tune, evaluate, serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    modules: dict[str, object] = {}
    for job in JOBS.values():
        p = sub.add_parser(job.command, help=job.help, description=job.help)
        if job.command == wanted:
            add_job_arguments(p, job)
            modules[job.command] = job
    for name, (module_name, help_text) in discover().items():
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
    from clinray.jobs import Job, run_parsed

    if isinstance(modules[args.command], Job):
        return run_parsed(modules[args.command], args, prog=f"clinray {args.command}")
    try:
        result = modules[args.command].run(args)
    except ValueError as exc:  # user mistakes (ConfigError included) get a message, not a traceback
        print(f"clinray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
