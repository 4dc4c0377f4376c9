"""Accounting primitives of the curation stages: per-batch stats and rejects written by the workers.

Split from :mod:`clinray.data.stage` (which re-exports every name here and holds the stage types).
A stage's rows are marked in the working schema; :class:`Accountant` splits a batch into kept rows and
rejects, writes the rejects (Parquet, ``REJECT_SCHEMA``) and one stats record per batch (JSON, named by
a hash of the batch's rows so a retried task overwrites its own files); :func:`collect_stats` sums the
records on the driver. The trade-off is stated in :mod:`clinray.data.stage`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clinray import storage
from clinray.data.schema import DOCUMENT_COLUMNS, DOCUMENT_SCHEMA, REJECT_SCHEMA

#: Marker columns of the working schema: a non-null ``_reason`` means "drop this row".
REASON, DETAIL = "_reason", "_detail"
WORK_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in DOCUMENT_SCHEMA]
    + [pa.field(REASON, pa.string()), pa.field(DETAIL, pa.string())]
)
#: Longest text kept in a reject record (binary or 50 MB inputs are cut, with the cut noted).
MAX_REJECT_TEXT = 2000


@dataclasses.dataclass
class StageStats:
    """Counts of one stage (one batch, or the sum over batches)."""

    stage: str
    num_rows_in: int = 0
    num_rows_out: int = 0
    num_bytes_in: int = 0
    num_bytes_out: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Rows dropped, by reason."""
    num_batches: int = 0
    busy_s: float = 0.0
    """Seconds spent in this stage summed over all workers (CPU-side work, not wall time)."""
    first_start: float | None = None
    last_end: float | None = None
    extra: dict[str, int] = dataclasses.field(default_factory=dict)
    """Stage-specific counters (e.g. input files seen by the readers)."""

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def wall_s(self) -> float:
        """Span from the stage's first batch start to its last batch end (stages overlap when streaming)."""
        if self.first_start is None or self.last_end is None:
            return 0.0
        return max(0.0, self.last_end - self.first_start)

    def balanced(self) -> bool:
        """The accounting identity: rows in = rows out + rows dropped (by any reason)."""
        return self.num_rows_in == self.num_rows_out + self.num_dropped

    def merge(self, other: StageStats) -> StageStats:
        self.num_rows_in += other.num_rows_in
        self.num_rows_out += other.num_rows_out
        self.num_bytes_in += other.num_bytes_in
        self.num_bytes_out += other.num_bytes_out
        self.dropped = dict(Counter(self.dropped) + Counter(other.dropped))
        self.extra = dict(Counter(self.extra) + Counter(other.extra))
        self.num_batches += other.num_batches
        self.busy_s += other.busy_s
        starts = [t for t in (self.first_start, other.first_start) if t is not None]
        ends = [t for t in (self.last_end, other.last_end) if t is not None]
        self.first_start = min(starts) if starts else None
        self.last_end = max(ends) if ends else None
        return self

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(num_dropped=self.num_dropped, wall_s=round(self.wall_s, 3), balanced=self.balanced())
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def text_bytes(text: str | None) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if text else 0


def batch_key(rows: Iterable[dict], *, fields: tuple[str, ...] = ("input_file", "locator", "id")) -> str:
    """A deterministic name for a batch: the same rows give the same key (so retries overwrite), in
    whatever order they come (a re-executed shuffle can deliver a block's rows in another order)."""
    sep = "\x1f"
    identities = sorted(sep.join(str(row.get(field)) for field in fields) for row in rows)
    return hashlib.sha1("\x1e".join(identities).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def reject_record(row: dict, *, stage: str, reason: str, detail: str | None = None) -> dict:
    """A ``REJECT_SCHEMA`` row for ``row`` (text cut to ``MAX_REJECT_TEXT`` characters)."""
    text = row.get("text")
    if isinstance(text, str) and len(text) > MAX_REJECT_TEXT:
        text = text[:MAX_REJECT_TEXT]
    return {
        "id": row.get("id"),
        "input_file": row.get("input_file") or "",
        "locator": row.get("locator"),
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "text": text,
    }


class AccountingSink:
    """Where workers write rejects (Parquet) and per-batch stats (JSON) under one folder.

    Layout: ``<root>/rejects/<stage>__<key>.parquet`` and ``<root>/stats/<stage>/<key>.json``.
    Writes go to a temporary name and are renamed, so a reader never sees half a file; under a URI
    root (``s3://``) each file is one object write, atomic by itself (:mod:`clinray.storage`).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)

    @property
    def rejects_dir(self) -> Path:
        return Path(self.root) / "rejects"

    @property
    def stats_dir(self) -> Path:
        return Path(self.root) / "stats"

    def write(self, stats: StageStats, rejects: list[dict], *, key: str) -> None:
        if storage.is_uri(self.root):
            self._write_uri(stats, rejects, key=key)
            return
        stats_dir = self.stats_dir / stats.stage
        stats_dir.mkdir(parents=True, exist_ok=True)
        tmp_suffix = f".tmp-{uuid.uuid4().hex[:8]}"
        if rejects:
            self.rejects_dir.mkdir(parents=True, exist_ok=True)
            target = self.rejects_dir / f"{stats.stage}__{key}.parquet"
            table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
            pq.write_table(table, str(target) + tmp_suffix)
            os.replace(str(target) + tmp_suffix, target)
        target = stats_dir / f"{key}.json"
        Path(str(target) + tmp_suffix).write_text(json.dumps(dataclasses.asdict(stats)))
        os.replace(str(target) + tmp_suffix, target)

    def _write_uri(self, stats: StageStats, rejects: list[dict], *, key: str) -> None:
        if rejects:
            fs, path = storage.filesystem(storage.join(self.root, "rejects", f"{stats.stage}__{key}.parquet"))
            pq.write_table(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), path, filesystem=fs)
        target = storage.join(self.root, "stats", stats.stage, f"{key}.json")
        storage.write_text(target, json.dumps(dataclasses.asdict(stats)))


class Accountant:
    """Split marked rows into kept rows and rejects, count them, and write the rejects and stats.

    Used by every stage: call :meth:`account` with a batch's rows after marking them (a row with a
    non-null ``_reason`` is dropped). ``bytes_in`` counts the text of every row that entered.
    """

    def __init__(self, stage: str, *, sink_root: str | os.PathLike):
        if not stage or "__" in stage or "/" in stage:
            raise ValueError(f"stage name {stage!r} must be non-empty and contain neither '__' nor '/'")
        self.stage = stage
        self.sink = AccountingSink(sink_root)
        self.last_bytes_out = 0
        """Text bytes of the rows the last :meth:`account_rows` kept: the next stage's bytes in."""

    def account(self, rows: list[dict], **kwargs) -> pa.Table:
        """:meth:`account_rows`, returning the kept rows as a working-schema table."""
        return rows_to_table(self.account_rows(rows, **kwargs))

    def account_rows(
        self,
        rows: list[dict],
        *,
        key: str,
        start: float,
        num_rows_in: int | None = None,
        num_bytes_in: int | None = None,
        extra: dict[str, int] | None = None,
    ) -> list[dict]:
        """Write the rejects and stats of one batch; return its kept rows.

        Args:
            rows: The batch's rows after this stage, kept and marked alike.
            key: Deterministic batch name (see :func:`batch_key`).
            start: ``time.time()`` when the stage began this batch.
            num_rows_in: Rows that entered the stage (default: ``len(rows)``).
            num_bytes_in: Text bytes that entered (default: the text bytes of ``rows``).
            extra: Stage-specific counters.
        """
        kept, rejects, dropped = [], [], Counter()
        num_bytes_out = 0
        for row in rows:
            reason = row.get(REASON)
            if reason:
                dropped[reason] += 1
                rejects.append(reject_record(row, stage=self.stage, reason=reason, detail=row.get(DETAIL)))
            else:
                kept.append(row)
                num_bytes_out += text_bytes(row.get("text"))
        end = time.time()
        stats = StageStats(
            stage=self.stage,
            num_rows_in=len(rows) if num_rows_in is None else num_rows_in,
            num_rows_out=len(kept),
            num_bytes_in=sum(text_bytes(r.get("text")) for r in rows)
            if num_bytes_in is None
            else num_bytes_in,
            num_bytes_out=num_bytes_out,
            dropped=dict(dropped),
            num_batches=1,
            busy_s=end - start,
            first_start=start,
            last_end=end,
            extra=dict(extra or {}),
        )
        self.sink.write(stats, rejects, key=key)
        self.last_bytes_out = num_bytes_out
        return kept


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts) to a working-schema table, marker columns reset to null."""
    cols = {name: [r.get(name) for r in rows] for name in DOCUMENT_COLUMNS}
    cols[REASON] = [None] * len(rows)
    cols[DETAIL] = [None] * len(rows)
    return pa.Table.from_pydict(cols, schema=WORK_SCHEMA)


def table_rows(batch: pa.Table | dict) -> list[dict]:
    """A Ray Data batch (pyarrow table or dict of columns) as a list of row dicts."""
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    return [
        {k: (batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]) for k in names}
        for i in range(n)
    ]


def collect_stats(sink_root: str | os.PathLike, *, order: Iterable[str] = ()) -> dict[str, StageStats]:
    """Sum the per-batch stats files under ``sink_root`` into one :class:`StageStats` per stage.

    Args:
        sink_root: The accounting folder the stages wrote to.
        order: Stage names in pipeline order; stages that saw no batch get zero counts, and stages not
            named come after, alphabetically.
    """
    stats_dir = AccountingSink(sink_root).stats_dir
    totals: dict[str, StageStats] = {name: StageStats(stage=name) for name in order}
    if stats_dir.is_dir():
        for stage_dir in sorted(p for p in stats_dir.iterdir() if p.is_dir()):
            total = totals.setdefault(stage_dir.name, StageStats(stage=stage_dir.name))
            for path in sorted(stage_dir.glob("*.json")):
                total.merge(StageStats.from_dict(json.loads(path.read_text())))
    return totals


def reject_files(sink_root: str | os.PathLike) -> list[Path]:
    """The rejects files under ``sink_root``, in name order (stage, then batch key)."""
    return sorted(AccountingSink(sink_root).rejects_dir.glob("*.parquet"))


def read_rejects(sink_root: str | os.PathLike) -> pa.Table:
    """All rejects written under ``sink_root`` as one table (empty table if none).

    For tests and small runs: the whole table is in memory. Code that must hold at any scale (the
    report) reads them with :func:`iter_rejects`.
    """
    files = reject_files(sink_root)
    if not files:
        return REJECT_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=REJECT_SCHEMA) for f in files])


#: Rows per record batch of :func:`iter_rejects` (a few MB of the small columns).
REJECT_BATCH_ROWS = 65_536


def iter_rejects(
    sink_root: str | os.PathLike, *, columns: Iterable[str], batch_rows: int = REJECT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The rejects under ``sink_root`` as record batches of ``columns``, file after file, in name order.

    Memory stays bounded whatever the number of rejects: one file is open at a time, only the named
    columns are decoded (leave out ``text``, the large one), and at most ``batch_rows`` rows are held.
    """
    columns = list(columns)
    unknown = sorted(set(columns) - set(REJECT_SCHEMA.names))
    if unknown:
        raise ValueError(f"rejects have no column(s) {unknown}; they have {REJECT_SCHEMA.names}")
    schema = pa.schema([REJECT_SCHEMA.field(c) for c in columns])
    for path in reject_files(sink_root):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield batch.cast(schema) if batch.schema != schema else batch
