"""Stage accounting: every curation stage reports rows and bytes in, out, dropped by reason, and time.

The contract every curation stage follows (readers, row stages, exact dedup and the global stages):

* Rows flow through Ray Data in the *working schema*: the document columns plus two marker columns,
  ``_reason`` (null = keep) and ``_detail``. A stage marks rows instead of deleting them.
* An accounting step (:class:`Accountant`, or the :class:`Filter` base, which is one) then splits a
  batch: marked rows go to the rejects sink (Parquet in ``REJECT_SCHEMA``), the rest continue, and one
  small JSON stats record per batch is written beside them.
* The driver sums those per-batch files after the run (:func:`collect_stats`).
* Every stage declares the columns it reads (``requires``); the pipeline checks them when it is built.

Two stage types carry the contract so a stage writes only its own rule: :class:`RowStage` (one row at a
time; :class:`Filter` for keep/drop) and :class:`GlobalStage` (MinHash, substring dedup,
decontamination: an analysis that needs every document, or an index, before any row can be marked).

The trade-off: stats are side files written by workers rather than Ray Data aggregations, so counting
never materializes or re-reads the dataset, and a stage costs no extra pass. Task retries could
double-count, so each batch's files are named by a hash of the batch's row identities (input file,
locator, id): a retried batch overwrites its own files instead of adding new ones.
"""

from __future__ import annotations

import abc
import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from clinray.data.accounting import (  # noqa: F401  (re-exported: the accounting half of the contract)
    DETAIL,
    MAX_REJECT_TEXT,
    REASON,
    WORK_SCHEMA,
    Accountant,
    AccountingSink,
    StageStats,
    batch_key,
    collect_stats,
    read_rejects,
    reject_record,
    rows_to_table,
    table_rows,
    text_bytes,
)
from clinray.data.schema import DOCUMENT_COLUMNS, DOCUMENT_SCHEMA, REJECT_SCHEMA  # noqa: F401  (re-exported)


class RowStage:
    """A per-row stage on Ray Data: subclass and implement :meth:`process` (mark, modify, or pass).

    Instances are the ``map_batches`` UDF (``batch_format="pyarrow"``). Keyword arguments only, and
    picklable state only: instances are shipped to workers.
    """

    #: Stage name in the report (override in subclasses or pass ``name=``).
    name = "stage"
    #: Columns :meth:`process` reads; the pipeline checks them when it is built.
    requires: tuple[str, ...] = ("text",)

    def __init__(self, *, sink_root: str | os.PathLike, name: str | None = None):
        self.name = name or self.name
        self.accountant = Accountant(self.name, sink_root=sink_root)
        self.counters: Counter = Counter()
        """Stage-specific counts of the current batch (e.g. redactions); written as ``extra``."""

    @property
    def names(self) -> tuple[str, ...]:
        """The accounting names this stage writes under (one)."""
        return (self.name,)

    def process(self, row: dict) -> dict:
        """Return the row, possibly modified; set ``row["_reason"]`` to drop it."""
        return row

    def run_rows(
        self, rows: list[dict], *, key: str | None = None, num_bytes_in: int | None = None
    ) -> list[dict]:
        """Process and account one batch of rows; return the kept rows.

        In a chain, pass the batch's ``key`` and the previous stage's ``last_bytes_out`` as
        ``num_bytes_in``, which saves hashing and re-encoding every row at every stage.
        """
        start = time.time()
        key = key or batch_key(rows)
        if num_bytes_in is None:
            num_bytes_in = sum(text_bytes(r.get("text")) for r in rows)
        self.counters = Counter()
        out = [self.process(row) for row in rows]
        return self.accountant.account_rows(
            out,
            key=key,
            start=start,
            num_rows_in=len(rows),
            num_bytes_in=num_bytes_in,
            extra=dict(self.counters),
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table(self.run_rows(table_rows(batch)))


class RowStageChain:
    """Several :class:`RowStage` s run back to back on one batch, each with its own accounting.

    Same counts and rejects as separate ``map_batches`` calls, without converting the batch between
    Arrow and Python rows at every stage (the pipeline chains consecutive row stages this way).
    """

    def __init__(self, stages: list[RowStage]):
        self.stages = list(stages)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table(self.run_rows(table_rows(batch)))

    def run_rows(
        self, rows: list[dict], *, key: str | None = None, num_bytes_in: int | None = None
    ) -> list[dict]:
        """Every stage on ``rows`` in turn, sharing the batch key and handing on the byte counts."""
        key = key or batch_key(rows)
        for stage in self.stages:
            rows = stage.run_rows(rows, key=key, num_bytes_in=num_bytes_in)
            num_bytes_in = stage.accountant.last_bytes_out
        return rows


class Filter(RowStage, abc.ABC):
    """The datatrove-style filter contract: implement ``keep(row) -> (bool, reason)``.

    The base counts drops by reason and routes dropped rows to the rejects sink. ``keep`` may modify
    ``row`` in place (e.g. redact) when it keeps it.
    """

    name = "filter"

    @abc.abstractmethod
    def keep(self, row: dict) -> tuple[bool, str | None]:
        """``(True, None)`` to keep ``row``; ``(False, reason)`` to drop it."""

    def process(self, row: dict) -> dict:
        ok, reason = self.keep(row)
        if not ok:
            row[REASON] = reason or self.name
        return row


_RESOLVED: dict = {}


def resolve(ref):
    """``ray.get`` an object passed by reference to a Ray Data UDF, once per worker process."""
    import ray

    if not isinstance(ref, ray.ObjectRef):
        return ref
    key = ref.hex()
    if key not in _RESOLVED:
        if len(_RESOLVED) > 4:
            _RESOLVED.clear()
        _RESOLVED[key] = ray.get(ref)
    return _RESOLVED[key]


def missing_columns(requires: Iterable[str], columns: Iterable[str], *, stage: str) -> None:
    """Raise a ``ValueError`` naming the columns ``stage`` needs that ``columns`` lacks."""
    missing = sorted(set(requires) - set(columns))
    if missing:
        raise ValueError(
            f"stage {stage!r} needs the column(s) {missing}, which its input does not have "
            f"(it has {sorted(columns)}; see clinray/data/schema.py)"
        )


class GlobalStage(abc.ABC):
    """A stage that must see every document (or an index) before it marks any row.

    A subclass writes its analysis (:meth:`analyze`) and its marking rule (:meth:`mark`); :meth:`apply`
    does the rest, in order:

    1. **materialize** (when ``barrier``): one execution of the upstream plan that the analysis and
       the marking both read (looking at a lazy dataset, even ``ds.columns()``, would re-run it);
    2. check the declared ``requires`` columns (after the barrier; the pipeline checks them at build);
    3. **analyze** on the driver (Ray work allowed); its result is put in the object store once;
    4. **mark** each batch of :meth:`partition`'s dataset, once per accounting name in ``names``, each
       pass **accounted** (rejects, stats, ``counters`` as the report's stage details) under its name.

    Instances travel to the workers (keep them to configs and paths); heavy state goes in the analysis.
    """

    name = "global"
    #: Columns the analysis and the marking read.
    requires: tuple[str, ...] = ("id", "text")
    #: Materialize the input before the analysis (False for a stage whose analysis reads no document).
    barrier = True

    def __init__(self, *, sink_root: str | os.PathLike):
        self.sink_root = str(sink_root)

    @property
    def names(self) -> tuple[str, ...]:
        """The accounting names, one per marking pass (:meth:`mark` gets the pass as ``step``)."""
        return (self.name,)

    @abc.abstractmethod
    def analyze(self, ds) -> Any:
        """The global passes over the (materialized) dataset: return what :meth:`mark` needs."""

    @abc.abstractmethod
    def mark(self, rows: list[dict], analysis: Any, *, step: int, counters: Counter) -> list[dict]:
        """Mark (``_reason``/``_detail``) or edit the rows of one batch; count into ``counters``."""

    def partition(self, ds, analysis: Any):
        """The dataset whose blocks are the marking batches (default: the input's blocks)."""
        return ds

    def analysis_counters(self, analysis: Any) -> dict[str, int]:
        """Counters of the analysis itself, written once (a stats record with no rows)."""
        return {}

    def apply(self, ds):
        """The stage on a working-schema dataset: materialize, analyze, then the lazy marking."""
        import ray

        if self.barrier:
            ds = ds.materialize()
            missing_columns(self.requires, ds.columns(), stage=self.name)
        analysis = self.analyze(ds)
        extra = self.analysis_counters(analysis)
        if extra:
            record = StageStats(stage=self.names[0], extra=dict(extra))
            AccountingSink(self.sink_root).write(record, [], key="analysis")
        marker = MarkBatches(self, ray.put(analysis))
        return self.partition(ds, analysis).map_batches(
            marker, batch_size=None, batch_format="pyarrow", zero_copy_batch=False
        )


class MarkBatches:
    """The ``map_batches`` UDF of a :class:`GlobalStage`: each marking pass on a batch, accounted."""

    def __init__(self, stage: GlobalStage, analysis_ref):
        self.stage, self.analysis_ref = stage, analysis_ref
        self.accountants = [Accountant(name, sink_root=stage.sink_root) for name in stage.names]

    def __call__(self, batch: pa.Table) -> pa.Table:
        analysis = resolve(self.analysis_ref)
        rows = table_rows(batch)
        for step, accountant in enumerate(self.accountants):
            start = time.time()
            key = batch_key(rows)
            num_bytes_in = sum(text_bytes(r.get("text")) for r in rows)
            counters: Counter = Counter()
            rows = self.stage.mark(rows, analysis, step=step, counters=counters)
            rows = accountant.account_rows(
                rows, key=key, start=start, num_bytes_in=num_bytes_in, extra=dict(counters)
            )
        return rows_to_table(rows)


@contextlib.contextmanager
def shared_operator_resources():
    """Let every operator of the curation plan use every CPU while this run executes.

    Ray Data reserves a share of the cluster for each operator of a plan by default. Curation's plans
    are chains of operators that mostly run one after another (parse, then the shuffles and passes of
    the global stages, then the write), so on a small cluster the busy operator got about one CPU
    whatever the concurrency said: 2 CPUs ran no faster than 1 (benchmarks/curate_parse.py, scaling
    0.9-1.0). Without the reservation the same run took half the time. ``run_curation`` runs inside
    this; so should anything that runs its stages directly (the dedup benchmarks). The setting is
    restored afterwards so other Ray Data work in the process is unaffected.
    """
    import ray.data

    data_ctx = ray.data.DataContext.get_current()
    before = data_ctx.op_resource_reservation_enabled
    data_ctx.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        data_ctx.op_resource_reservation_enabled = before
