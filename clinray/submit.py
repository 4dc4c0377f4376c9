"""Submit a stage to a Ray cluster as a job, follow its logs, and return the stage's own exit code.

``clinray submit curate --address http://head:8265 -- --config paper/curate --set input_root=s3://...``
is ``ray job submit --working-dir . -- python -m ray_jobs.curate ...`` with the traps of the plain CLI
handled (``docs/runbook.md`` lists them):

* ``ray job submit`` exits 1 for any failure and ``ray job status`` exits 0 even for a failed job; here
  the exit code is the driver's (``JobSubmissionClient.get_job_info(...).driver_exit_code``): 0 ok,
  1 not ok, 2 a bad config, as for every other door;
* the entrypoint's ``python`` is the head's interpreter, not the client's: ``--python`` names the one
  that has clinray installed on the cluster (default ``python``, right for the cluster images);
* a head started where ``~/.ray/auth_token`` exists turns token auth on, and every client call fails
  until ``RAY_AUTH_MODE=token`` is set: when the token file exists and the mode is unset, it is set;
* the recipe and overrides are checked here first (keys and values, not paths: the inputs live on the
  cluster), so a typo fails in a second, not after the upload.

The working directory is uploaded with Ray's default excludes (``.git``, ``.venv``), ``.gitignore``
(``runs/``, ``*.db``) and :data:`EXCLUDES`.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from pathlib import Path

from clinray.jobs import get_job

__all__ = ["SubmitSpec", "EXCLUDES", "build_runtime_env", "entrypoint", "submit_and_wait"]

#: Never uploaded with the working directory (on top of Ray's defaults and .gitignore).
EXCLUDES = [".venv*", "runs", "benchmarks/results", ".pytest_cache", ".ruff_cache", "*.egg-info"]
#: Terminal job states.
_DONE = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclasses.dataclass(kw_only=True)
class SubmitSpec:
    """One stage submitted as a Ray job."""

    job: str
    """Stage name (``curate``, ``pack``, ``pretrain``, ``eval``, ``index``, ``medprompt_eval``)."""
    job_args: list[str]
    """Arguments of ``python -m ray_jobs.<module>`` (``--config ...``, ``--set ...``)."""
    address: str
    """The cluster's dashboard address, e.g. ``http://127.0.0.1:8265``."""
    working_dir: str = "."
    """Folder uploaded as the job's working directory ('' = none: clinray must be installed there)."""
    python: str = "python"
    """The interpreter on the cluster that has clinray installed."""
    pip: list[str] = dataclasses.field(default_factory=list)
    """Extra pip requirements installed for the job (Ray's runtime_env ``pip``)."""
    env_vars: dict[str, str] = dataclasses.field(default_factory=dict)
    """Environment of the job's driver and workers."""
    submission_id: str | None = None
    """Job id (default: Ray's)."""
    entrypoint_num_cpus: float = 0.0
    """CPUs reserved for the driver (0: it schedules its work as tasks)."""


def _ensure_auth_mode() -> None:
    """Token auth on the client when a token exists and no mode was chosen (the head does the same)."""
    if "RAY_AUTH_MODE" in os.environ or not (Path.home() / ".ray" / "auth_token").is_file():
        return
    try:  # sets RAY_AUTH_MODE=token and refreshes the config Ray cached when it was imported
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # another Ray version: the variable alone (read when Ray starts)
        os.environ["RAY_AUTH_MODE"] = "token"


def build_runtime_env(spec: SubmitSpec) -> dict:
    """The job's runtime_env: working_dir with excludes, pip, env vars."""
    env: dict = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", **spec.env_vars}}
    if spec.working_dir:
        if not Path(spec.working_dir).is_dir():
            raise ValueError(f"--working-dir {spec.working_dir!r} is not a folder")
        env["working_dir"] = str(spec.working_dir)
        env["excludes"] = list(EXCLUDES)
    if spec.pip:
        env["pip"] = list(spec.pip)
    return env


def entrypoint(spec: SubmitSpec) -> str:
    """``PYTHON -m ray_jobs.<module> ARGS`` after checking the recipe's keys and values here."""
    import argparse

    from clinray.jobs import add_job_arguments, flag_overrides, load_job_config

    job = get_job(spec.job)
    parser = argparse.ArgumentParser(prog=f"clinray submit {job.command} --")
    add_job_arguments(parser, job)
    args = parser.parse_args(spec.job_args)
    load_job_config(job, args.config, [*args.overrides, *flag_overrides(job, args)], check_inputs=False)
    return shlex.join([spec.python, "-m", f"ray_jobs.{job.ray_job}", *spec.job_args])


def _submit(client, spec: SubmitSpec, command: str, *, wait_for_agent_s: float) -> str:
    """Submit; a head that has just started answers "No available agent" for a few seconds: retry."""
    deadline = time.monotonic() + wait_for_agent_s
    while True:
        try:
            return client.submit_job(
                entrypoint=command,
                submission_id=spec.submission_id,
                runtime_env=build_runtime_env(spec),
                entrypoint_num_cpus=spec.entrypoint_num_cpus,
            )
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def submit_and_wait(
    spec: SubmitSpec, *, follow: bool = True, poll_s: float = 1.0, agent_wait_s: float = 60.0, out=None
) -> int:
    """Submit, stream the logs (when ``follow``), wait; return the driver's exit code (1 when it has none)."""
    import sys

    from ray.job_submission import JobSubmissionClient

    out = out or sys.stdout
    _ensure_auth_mode()
    command = entrypoint(spec)
    client = JobSubmissionClient(spec.address)
    job_id = _submit(client, spec, command, wait_for_agent_s=agent_wait_s)
    print(f"submitted {job_id}: {command}", file=out, flush=True)
    printed = 0
    while True:
        info = client.get_job_info(job_id)
        if follow:
            logs = client.get_job_logs(job_id)
            print(logs[printed:], end="", file=out, flush=True)
            printed = len(logs)
        status = getattr(info.status, "value", str(info.status))
        if status in _DONE:
            break
        time.sleep(poll_s)
    code = info.driver_exit_code
    print(f"job {job_id} {status}: driver exit code {code}", file=out, flush=True)
    if status == "SUCCEEDED":
        return 0
    return int(code) if code else 1
