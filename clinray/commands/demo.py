"""``clinray demo``: every stage on the tiny world, with a report under ``runs/demo/``."""

from __future__ import annotations

import argparse

HELP = "run the whole pipeline on the bundled tiny world and write runs/demo/<timestamp>/report.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="root folder of demo runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="STAGE",
        help="run only these stages (repeatable); what they need must exist (earlier stages or --resume)",
    )
    from clinray.jobs import add_set_argument

    add_set_argument(parser, example="pretrain:train.max_steps=10 (JOB:KEY=VALUE)", metavar="JOB:KEY=VALUE")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="an earlier demo run: stages read its artifacts and its report is updated",
    )


def run(args: argparse.Namespace) -> int:
    from clinray.demo import run_demo
    from clinray.jobs import get_job

    overrides: dict[str, list[str]] = {}
    for item in args.overrides:
        job, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ValueError(f"--set {item!r} must be JOB:KEY=VALUE, e.g. pretrain:train.max_steps=10")
        overrides.setdefault(get_job(job).name, []).append(override)
    _, code = run_demo(
        out_root=args.out, seed=args.seed, only=args.only, resume=args.resume, overrides=overrides
    )
    return code
