"""Shared helpers of the side-by-side benchmarks (see benchmarks/README.md for the contract).

Every benchmark script parses ``--quick`` with :func:`parser`, measures ours and the named peer in the
same run, and ends with :func:`write_result`, which writes ``benchmarks/results/<name>.json`` and a
Markdown twin and prints the JSON object as the last stdout line. Peers whose pins clash with
clinray's (datatrove needs ``xxhash<4``) live in their own virtual environment, ``.venv-peer``, made on
first use by :func:`peer_python`; clinray's own dependencies never carry them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEER_VENV = ROOT / ".venv-peer"
PEER_REQUIREMENTS = [
    "datatrove==0.10.1",
    "xxhash<4",
    "spacy",
    "datasketch",
    "pyarrow",
    "lxml",
    "tokenizers",
    "trl==1.16.0",  # benchmarks/sft_step.py: SFTTrainer with packing
]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in under 3 minutes on 2 cores")
    return p


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t()`` is the elapsed wall time in seconds."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end or time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def write_result(name: str, result: dict) -> dict:
    """Write ``results/<name>.json`` and ``.md``; print the JSON as the last stdout line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, **result, "machine": result.get("machine", machine())}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {k} | {v} |" for k, v in result.items() if not isinstance(v, dict | list)]
    md = [f"# {name}", "", "| key | value |", "|---|---|", *rows, ""]
    (RESULTS / f"{name}.md").write_text("\n".join(md))
    print(json.dumps(result), flush=True)
    return result


def peer_python() -> Path:
    """The Python of ``.venv-peer`` (created with the peer's pins on first use)."""
    py = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".installed"
    if not stamp.exists():
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "torch==2.13.0", *PEER_REQUIREMENTS],
            check=True,
        )
        stamp.touch()
    return py
