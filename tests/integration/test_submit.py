"""Stages as Ray jobs on a private head: ``clinray submit`` (and so ``ray job submit``) end to end.

The head is started with ``ray start --head`` on 127.0.0.1 with its own ports and temp folder, and
stopped by its process ids (never a bare ``ray stop``: it would kill every Ray cluster on the machine).
The job's interpreter is this test's (``--python sys.executable``), the one with clinray installed.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clinray.submit import SubmitSpec, submit_and_wait

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pids: set[int]) -> set[int]:
    import psutil

    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(p in pids for p in [proc.pid, proc.ppid()]):
                found.add(proc.pid)
                found |= {c.pid for c in proc.children(recursive=True)}
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def head():
    """A private Ray head: its own temp dir (short path: Ray's socket names have a length limit) and ports."""
    import psutil

    temp = Path(tempfile.mkdtemp(prefix="crh", dir="/tmp"))
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    before = {p.pid for p in psutil.process_iter()}
    ray_bin = Path(sys.executable).with_name("ray")
    subprocess.run(
        [
            str(ray_bin),
            "start",
            "--head",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # every other port its own too: another Ray on this machine (the suite's) holds the defaults
            *[
                f"--{name}={_free_port()}"
                for name in (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "runtime-env-agent-port",
                    "metrics-export-port",
                    "ray-client-server-port",
                    "node-manager-port",
                    "object-manager-port",
                )
            ],
            "--include-dashboard=true",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    started = {p.pid for p in psutil.process_iter() if str(temp) in " ".join(_cmdline(p))} - before
    yield f"http://127.0.0.1:{dash}"
    pids = _descendants(started)
    for pid in pids:
        _signal(pid, 15)
    time.sleep(3)
    for pid in pids:
        _signal(pid, 9)
    shutil.rmtree(temp, ignore_errors=True)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:
        return []


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def _submit(head: str, job: str, args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    spec = SubmitSpec(job=job, job_args=args, address=head, working_dir=str(REPO), python=sys.executable)
    return submit_and_wait(spec, out=out, poll_s=0.5), out.getvalue()


def test_curation_job_succeeds_on_the_cluster(head, world_dir, tmp_path):
    out = tmp_path / "curated"
    code, logs = _submit(
        head,
        "curate",
        [
            "--config",
            "tiny/curate",
            "--input-root",
            str(world_dir / "corpus"),
            "--out",
            str(out),
            "--set",
            f"decontaminate.questions_root={world_dir / 'questions'}",
        ],
    )
    assert code == 0, logs[-3000:]
    assert "SUCCEEDED" in logs and "documents kept" in logs
    assert (out / "_SUCCESS").is_file() and (out / "config.yaml").is_file()
    assert list((out / "docs").rglob("*.parquet"))


def test_a_bad_config_fails_with_its_one_line_message_and_exit_code(head, tmp_path):
    """The stage's own exit code (2) comes back, not ray job submit's blanket 1."""
    from clinray.submit import entrypoint

    with pytest.raises(ValueError, match="min_word"):  # checked on the client before any upload
        entrypoint(
            SubmitSpec(
                job="curate", job_args=["--config", "tiny/curate", "--set", "length.min_word=3"], address=head
            )
        )
    # a config that is valid here but whose inputs are missing on the cluster fails there, with code 2
    code, logs = _submit(
        head, "curate", ["--config", "tiny/curate", "--input-root", str(tmp_path / "nowhere")]
    )
    assert code == 2, logs[-3000:]
    assert "FAILED" in logs and "clinray curate" not in logs  # prog is ray_jobs.curate
    errors = [line for line in logs.splitlines() if line.startswith("ray_jobs.curate: error:")]
    assert len(errors) == 1 and "input_root" in errors[0] and "Traceback" not in logs
