"""Exact document dedup: one copy per distinct normalized text, chosen by a deterministic rule.

The hash is SHA-1 of the NFC text with all whitespace runs collapsed to one space, so copies that
differ only in line breaks or spacing collide. Rows are hash-partitioned on Ray Data (the same
co-location that ``groupby().map_groups`` uses) so every copy of a text lands in one block, then each
block keeps, per hash, the copy whose source comes first in ``source_priority`` (unknown sources
after the listed ones), ties broken by the smallest id. The trade-off: one shuffle of the full rows,
instead of a slimmer two-pass (hash-only shuffle, then a join), which is simpler and keeps the
dataset streaming without a join stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import unicodedata

import pyarrow as pa

from clinray.data.sizing import MiB, cluster_cpus, count_for
from clinray.data.stage import DETAIL, REASON, Accountant, batch_key, table_rows, text_bytes

HASH = "_hash"
#: Input bytes per hash partition when ``num_partitions`` is 0.
PARTITION_BYTES = 16 * MiB
DEFAULT_PRIORITY = ["pmc", "pubmed", "textbooks", "guidelines", "articles", "slimpajama"]


@dataclasses.dataclass(kw_only=True, slots=True)
class ExactDedupConfig:
    """Exact document dedup."""

    enabled: bool = True
    """Run the stage."""
    source_priority: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_PRIORITY))
    """Which copy is kept: the first source in this list wins, then the smallest id."""
    num_partitions: int = 0
    """Hash partitions of the shuffle; 0 = from the data: one per ``PARTITION_BYTES`` of input files,
    at least one per CPU (a fixed count makes each block, and its cost per document, grow with the corpus)."""

    def __post_init__(self):
        if self.num_partitions < 0:
            raise ValueError(
                f"exact_dedup.num_partitions must be >= 0 (0 = automatic), got {self.num_partitions}"
            )
        if len(set(self.source_priority)) != len(self.source_priority):
            raise ValueError(f"exact_dedup.source_priority lists a source twice: {self.source_priority}")


def content_hash(text: str) -> str:
    """SHA-1 of the NFC text with whitespace collapsed: equal up to spacing => equal hash."""
    canon = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.sha1(canon.encode("utf-8", "surrogatepass")).hexdigest()


def add_hash(batch: pa.Table) -> pa.Table:
    """Append the ``_hash`` column to a working-schema batch."""
    hashes = [content_hash(t or "") for t in batch.column("text").to_pylist()]
    return batch.append_column(HASH, pa.array(hashes, pa.string()))


def mark_duplicates(rows: list[dict], *, source_priority: list[str]) -> list[dict]:
    """Mark every row but the keeper of each hash with ``_reason = exact_duplicate``."""
    rank = {source: i for i, source in enumerate(source_priority)}
    best: dict[str, dict] = {}
    for row in rows:
        current = best.get(row[HASH])
        order = (rank.get(row["source"], len(rank)), row["id"])
        if current is None or order < (rank.get(current["source"], len(rank)), current["id"]):
            best[row[HASH]] = row
    for row in rows:
        keeper = best[row[HASH]]
        if row is not keeper:
            row[REASON] = "exact_duplicate"
            row[DETAIL] = f"duplicate of {keeper['id']} ({keeper['source']})"
    return rows


class DedupBlock:
    """``map_batches`` UDF over hash-partitioned blocks (``batch_size=None``): mark, split, count."""

    name = "exact_dedup"

    def __init__(self, cfg: ExactDedupConfig, *, sink_root: str):
        self.priority = list(cfg.source_priority)
        self.accountant = Accountant(self.name, sink_root=sink_root)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.time()
        rows = table_rows(batch)
        num_bytes_in = sum(text_bytes(r.get("text")) for r in rows)
        marked = mark_duplicates(rows, source_priority=self.priority)
        return self.accountant.account(marked, key=batch_key(rows), start=start, num_bytes_in=num_bytes_in)


def num_partitions(cfg: ExactDedupConfig, input_bytes: int, *, cpus: int | None = None) -> int:
    """The shuffle's partitions: ``cfg.num_partitions``, or one per ``PARTITION_BYTES`` of
    ``input_bytes`` (the input files), at least ``cpus`` (default: the cluster's CPUs)."""
    cpus = cpus or cluster_cpus()
    return count_for(input_bytes, target_bytes=PARTITION_BYTES, cpus=cpus, override=cfg.num_partitions)


def exact_dedup(ds, cfg: ExactDedupConfig, *, sink_root: str, input_bytes: int = 0):
    """The ``exact_dedup`` stage on a working-schema Ray Dataset (lazy: nothing runs here).

    ``input_bytes``: the size of the input files, which sizes the shuffle when ``num_partitions`` is 0.
    """
    hashed = ds.map_batches(add_hash, batch_format="pyarrow")
    shuffled = hashed.repartition(num_partitions(cfg, input_bytes), keys=[HASH])
    return shuffled.map_batches(
        DedupBlock(cfg, sink_root=sink_root), batch_size=None, batch_format="pyarrow", zero_copy_batch=False
    )
