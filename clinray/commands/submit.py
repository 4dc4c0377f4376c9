"""``clinray submit``: run a stage on a Ray cluster as a job and exit with the stage's own exit code."""

from __future__ import annotations

import argparse

HELP = "submit a stage to a Ray cluster (ray job submit), follow its logs, exit with its exit code"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", help="curate, pack, pretrain, eval, index or medprompt-eval")
    _add_options(parser)
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="-- then the stage's --config/--set")


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS)",
    )
    parser.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory")
    parser.add_argument(
        "--python", default="python", help="the cluster's interpreter that has clinray installed"
    )
    parser.add_argument("--pip", action="append", default=[], help="extra pip requirement for the job")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job environment")
    parser.add_argument("--submission-id", default=None)
    parser.add_argument("--no-follow", action="store_true", help="do not stream the job's logs")


def _split(args: argparse.Namespace) -> list[str]:
    """Options given after the stage (before ``--``) are this command's; the rest are the job's."""
    rest = list(args.job_args)
    if "--" not in rest:
        return rest
    i = rest.index("--")
    if rest[:i]:
        options = argparse.ArgumentParser(prog="clinray submit STAGE", add_help=False)
        _add_options(options)
        options.parse_args(rest[:i], namespace=args)
    return rest[i + 1 :]


def run(args: argparse.Namespace) -> int:
    import os

    from clinray.submit import SubmitSpec, submit_and_wait

    job_args = _split(args)
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("give --address http://HEAD:8265 (or set RAY_ADDRESS)")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r} must be KEY=VALUE")
        env[key] = value
    spec = SubmitSpec(
        job=args.stage,
        job_args=job_args,
        address=address,
        working_dir=args.working_dir,
        python=args.python,
        pip=args.pip,
        env_vars=env,
        submission_id=args.submission_id,
    )
    return submit_and_wait(spec, follow=not args.no_follow)
