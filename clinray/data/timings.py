"""Per-pass timings of the curation stages: one small JSON file per pass under ``<sink_root>/timings/``.

A global stage has passes the accounting records do not see (MinHash's signatures, band shuffle,
verification and connected components; the substring stage's sort and shard passes). Each is timed
where it runs, with :func:`timed_pass` (a context manager) or :func:`record_pass`, and the report
(:func:`clinray.data.report.write_report`) lists them in ``report.json`` under ``passes``, in the order
they ran. Files are named by stage and pass, so a re-run of a pass overwrites its own record.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clinray import storage

TIMINGS_DIR = "timings"


def _path(sink_root: str | os.PathLike, stage: str, pass_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stage}.{pass_name}")
    return Path(sink_root) / TIMINGS_DIR / f"{safe}.json"


def record_pass(
    sink_root: str | os.PathLike, stage: str, pass_name: str, seconds: float, **extra: Any
) -> None:
    """Write one pass's wall time (and any counters, e.g. ``partitions=64``) for the report.

    A URI ``sink_root`` (``s3://``) is written through :mod:`clinray.storage` (one object per pass)."""
    record = {"stage": stage, "pass": pass_name, "seconds": round(float(seconds), 4), "end": time.time()}
    record.update(extra)
    if storage.is_uri(sink_root):
        storage.write_text(
            storage.join(str(sink_root), TIMINGS_DIR, _path("", stage, pass_name).name),
            json.dumps(record) + "\n",
        )
        return
    path = _path(sink_root, stage, pass_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")


@contextlib.contextmanager
def timed_pass(sink_root: str | os.PathLike, stage: str, pass_name: str, **extra: Any) -> Iterator[dict]:
    """Time the ``with`` body as one pass; counters put into the yielded dict are recorded too."""
    counters: dict[str, Any] = dict(extra)
    start = time.perf_counter()
    try:
        yield counters
    finally:
        record_pass(sink_root, stage, pass_name, time.perf_counter() - start, **counters)


def read_passes(sink_root: str | os.PathLike) -> list[dict]:
    """Every recorded pass, in the order the passes ended."""
    folder = Path(sink_root) / TIMINGS_DIR
    if not folder.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(records, key=lambda r: r.get("end", 0.0))
