"""The substring stage on Ray: byte-balanced id-range shards, then each pass as five rounds of tasks.

Split from :mod:`clinray.data.dedup_substring` (the method, its cost and its memory factors are stated
there); the numpy work of the cross-shard rounds is :mod:`clinray.data.dedup_substring_cross`.

**Shards** (:func:`make_shards`): one task per input block samples its ids weighted by text bytes (an
id per ``step`` bytes, from a random offset); the driver sorts the sample (about ``SAMPLE_SIZE`` ids,
never one per document) and cuts it into ``num_shards`` equal byte ranges; the blocks, in groups
(``senders_for``: a group's piece for one shard is at least ``MIN_SHUFFLE_PIECE`` on average, so no
piece is small enough for Ray to keep it in the driver's heap, however many shards), are split by those
id boundaries and each shard's pieces are concatenated and sorted by id (then input file and locator,
so equal ids keep one order). That is one all-to-all move of the text, as a sort would be, but the cut
follows bytes: shards differ by a sampling error, not by the 2.9x a row-count cut gave.

**A pass** (:func:`run_pass`), for ``S`` shards: fingerprints (``S`` tasks) -> shared hashes (one task
per hash partition) -> context records (``S``) -> resolve (one per partition) -> suffix array and
removal (``S``, accounted). The partitions of each shuffle follow its estimated bytes
(:func:`partition_count`). With one shard only the last round runs. The rounds are barriers (each needs
all of the previous one), timed as passes of :mod:`clinray.data.timings`. Each task asks Ray for the
memory it will use: a measured factor times its input (:func:`task_memory`).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinray.data import dedup_substring_cross as cross
from clinray.data.sizing import cluster_cpus, count_for, memory_request, senders_for
from clinray.data.stage import Accountant, batch_key, rows_to_table, table_rows, text_bytes
from clinray.data.tasks import PeakRSS, chunks, remote_task, transpose
from clinray.data.timings import timed_pass

logger = logging.getLogger(__name__)

#: Ids the driver holds to place the shard boundaries (byte-weighted, so each shard's share is known
#: to about ``1 / SAMPLE_SIZE`` of the text, whatever the number of documents).
SAMPLE_SIZE = 100_000
#: Columns that order a shard (corpus order; the first occurrence of a repeat is the earliest here).
ORDER_COLUMNS = ("id", "input_file", "locator")
#: Average bytes of one piece of a shuffle round (a shard's share for one hash partition): the number of
#: partitions is the round's estimated bytes over ``shards x PIECE_BYTES``, so pieces stay in the object
#: store (Ray keeps a task result under 100 KB in the memory of its caller, here the driver) and the
#: marks sent back, about a tenth of the records, mostly do too. Reducers' memory follows their input.
PIECE_BYTES = 1 << 20
#: Most bytes one reducer of a shuffle round takes: the number of partitions is raised to keep it (so
#: pieces shrink instead when there are many shards; :data:`MAX_SHARDS` keeps them above Ray's inline
#: size at any corpus size).
REDUCER_BYTES = 256 << 20
#: Most shards a pass uses. ``shards x partitions`` pieces of at least ~128 KB with reducers of at most
#: ``REDUCER_BYTES`` allow about 2,000 shards; past ``MAX_SHARDS x shard_bytes`` of text the shards
#: grow instead (200 GB: 2,048 shards of ~98 MB, a 3.1 GB suffix-array task each).
MAX_SHARDS = 2048


# --- memory ---------------------------------------------------------------------------------------------


def node_memory() -> int:
    """The largest ``memory`` resource of an alive node (0 when Ray reports none): a task asking more
    than this could never be scheduled."""
    import ray

    sizes = [n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")]
    return int(max(sizes, default=0))


def task_memory(num_bytes: int, bytes_per_byte: float, *, limit: int) -> int:
    """The ``memory=`` request of a task over ``num_bytes`` of input, at most ``limit`` (a node)."""
    want = memory_request(num_bytes, bytes_per_byte=bytes_per_byte)
    if limit and want > limit:
        logger.warning(
            "substring: a task over %.0f MB wants %.1f GB but the largest node has %.1f GB; asking for "
            "that (set substring.num_shards higher or substring.shard_bytes lower)",
            num_bytes / 1e6,
            want / 1e9,
            limit / 1e9,
        )
        return limit
    return want


# --- shard text -----------------------------------------------------------------------------------------


def concat_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A text column's UTF-8 bytes joined by ``0xFF``, straight from the Arrow buffers (read-only).

    The same bytes :func:`clinray.data.dedup_substring.concat_docs` builds from the Python strings
    (null texts count as empty), without a Python string per document: one copy of the text.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    pieces: list = []
    for arr in chunks:
        if arr.null_count:
            arr = pc.fill_null(arr, "")
        if len(arr) == 0:
            continue
        large = pa.types.is_large_string(arr.type)
        _, offsets_buf, values_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64 if large else np.int32)
        offsets = offsets[arr.offset : arr.offset + len(arr) + 1].tolist()
        values = memoryview(values_buf) if values_buf is not None else memoryview(b"")
        pieces.extend(values[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
    return np.frombuffer(bytes([cross.SEPARATOR]).join(pieces), dtype=np.uint8)


def text_bytes_of(table: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0) if table.num_rows else 0


# --- shards by bytes ------------------------------------------------------------------------------------


def sample_block(table: pa.Table, step: int, seed: int) -> tuple[int, list[str]]:
    """The block's text bytes and one id per ``step`` bytes of its text (a byte-weighted sample).

    The count starts at a random offset in ``[0, step)`` so that blocks smaller than ``step`` are
    sampled in proportion to their bytes, not never.
    """
    if table.num_rows == 0:
        return 0, []
    sizes = pc.binary_length(pc.fill_null(table.column("text"), "")).to_numpy(zero_copy_only=False)
    sizes = sizes.astype(np.int64)
    cum = random.Random(seed).randrange(step) + np.cumsum(sizes)
    hits = cum // step - (cum - sizes) // step  # multiples of ``step`` inside each document's bytes
    ids = table.column("id").to_numpy(zero_copy_only=False)
    return int(sizes.sum()), [str(i) for i in np.repeat(ids, hits)]


def boundaries_from_sample(sample: list[str], num_shards: int) -> list[str]:
    """Ids that cut the sorted sample into ``num_shards`` equal parts (duplicates merged)."""
    if num_shards <= 1 or not sample:
        return []
    ordered = sorted(sample)
    cuts = [
        ordered[min(len(ordered) - 1, round(k * len(ordered) / num_shards))] for k in range(1, num_shards)
    ]
    return sorted(set(cuts) - {ordered[0]})


def split_block(table: pa.Table, boundaries: list[str]) -> list[pa.Table]:
    """The block's rows by shard: shard ``k`` holds ids in ``[boundaries[k-1], boundaries[k])``."""
    num = len(boundaries) + 1
    if num == 1:
        return [table]
    ids = np.asarray(table.column("id").to_pylist(), dtype=str) if table.num_rows else np.zeros(0, dtype=str)
    shard = np.searchsorted(np.asarray(boundaries, dtype=str), ids, side="right")
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(num + 1))
    taken = table.take(pa.array(order))
    return [taken.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]


def split_blocks(boundaries: list[str], *tables: pa.Table) -> list[pa.Table]:
    """:func:`split_block` over a group of blocks: one piece per shard for the whole group, so the
    pieces stay large when there are many shards (see :func:`make_shards`)."""
    return split_block(pa.concat_tables(tables, promote_options="default"), boundaries)


def build_shard(*pieces: pa.Table) -> tuple[pa.Table, dict]:
    """One shard: its pieces of every block, concatenated and sorted into corpus order."""
    table = pa.concat_tables(pieces, promote_options="default") if pieces else pa.table({})
    keys = [(c, "ascending") for c in ORDER_COLUMNS if c in table.column_names]
    if table.num_rows:
        table = table.sort_by(keys)
    return table, {"rows": table.num_rows, "text_bytes": text_bytes_of(table)}


@dataclass
class Shards:
    """The shard tables (object refs, corpus order) and their text bytes."""

    refs: list[Any]
    text_bytes: list[int]
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.refs)


def shard_count(total_bytes: int, cfg, *, cpus: int, node_memory: int = 0) -> int:
    """How many shards for ``total_bytes`` of text: ``cfg.num_shards`` if set, else
    ``ceil(total / shard_bytes)`` raised to the cluster's CPUs while each shard keeps at least
    ``min_shard_bytes``, at most :data:`MAX_SHARDS`. ``shard_bytes`` is lowered first if a shard's
    suffix-array task (``MEMORY_BYTES_PER_INPUT_BYTE`` per byte) would need more than 80% of the
    largest node."""
    from clinray.data.dedup_substring import MEMORY_BYTES_PER_INPUT_BYTE

    target = cfg.shard_bytes
    if node_memory:
        target = max(cfg.min_shard_bytes, min(target, int(0.8 * node_memory / MEMORY_BYTES_PER_INPUT_BYTE)))
    return count_for(
        total_bytes,
        target_bytes=target,
        cpus=min(cpus, max(1, total_bytes // cfg.min_shard_bytes)),
        maximum=MAX_SHARDS,
        override=cfg.num_shards,
    )


def make_shards(block_refs: list, *, size_bytes: int, cfg, sink_root: str, stage: str) -> Shards:
    """Byte-balanced, id-contiguous shards of the blocks (see the module docstring)."""
    import ray

    from clinray.data.dedup_substring import BUILD_BYTES_PER_INPUT_BYTE

    with timed_pass(sink_root, stage, "shard") as rec:
        step = max(1, size_bytes // SAMPLE_SIZE)
        sampled = ray.get([remote_task(sample_block).remote(b, step, i) for i, b in enumerate(block_refs)])
        total = sum(n for n, _ in sampled)
        sample = [i for _, ids in sampled for i in ids]
        del sampled
        cpus, limit = cluster_cpus(), node_memory()
        wanted = shard_count(total, cfg, cpus=cpus, node_memory=limit)
        bounds = boundaries_from_sample(sample, wanted)
        del sample
        num = len(bounds) + 1
        senders = 0
        if num == 1:
            per_shard = [list(block_refs)]
        else:
            # blocks grouped so that a group's piece for one shard keeps MIN_SHUFFLE_PIECE on average:
            # senders x shards pieces, none of them small enough to be kept in the driver's heap
            senders = senders_for(total, receivers=num, maximum=len(block_refs))
            split = remote_task(
                split_blocks,
                num_returns=num,
                memory=task_memory(int(1.25 * total / senders), BUILD_BYTES_PER_INPUT_BYTE, limit=limit),
            )
            pieces = [split.remote(bounds, *group) for group in chunks(block_refs, senders)]
            per_shard = transpose(pieces, num)
        # the builder holds its shard about three times (pieces, concatenation, sorted copy)
        share = int(1.25 * total / num)
        build = remote_task(
            build_shard, num_returns=2, memory=task_memory(share, BUILD_BYTES_PER_INPUT_BYTE, limit=limit)
        )
        built = [build.remote(*refs) for refs in per_shard]
        infos = ray.get([b[1] for b in built])
        keep = [i for i, info in enumerate(infos) if info["rows"]]
        shards = Shards([built[i][0] for i in keep], [infos[i]["text_bytes"] for i in keep])
        sizes = shards.text_bytes or [0]
        rec.update(
            shards=len(shards),
            shards_wanted=wanted,
            cpus=cpus,
            blocks=len(block_refs),
            split_tasks=senders,
            text_bytes=int(total),
            max_shard_bytes=int(max(sizes)),
            min_shard_bytes=int(min(sizes)),
        )
    shards.stats = dict(rec)
    return shards


# --- one pass -------------------------------------------------------------------------------------------


def _task_info(peak: PeakRSS, **extra) -> dict:
    """What a task reports besides its data: its peak RSS and the memory Ray reserved for it."""
    import ray

    memory = ray.get_runtime_context().get_assigned_resources().get("memory", 0)
    return {"peak_rss_bytes": int(peak.peak), "memory": int(memory), **extra}


def _peaks(infos: list[dict]) -> dict:
    """A round's largest measured peak and request, for its timing record."""
    return {
        "peak_rss_bytes": max((i["peak_rss_bytes"] for i in infos), default=0),
        "memory_request_bytes": max((i["memory"] for i in infos), default=0),
    }


def fingerprint_task(table: pa.Table, min_len: int, num_parts: int):
    """Round 1 (map): the shard's fingerprints (kept for round 3) and its distinct hashes per reducer."""
    with PeakRSS() as peak:
        fp = cross.winnow(concat_column(table.column("text")), min_len)
        parts = cross.distinct_hash_parts(fp, num_parts)
    return [fp, _task_info(peak, part_bytes=[p.nbytes for p in parts]), *parts]


def shared_task(*per_shard: np.ndarray):
    """Round 2 (reduce): per shard, the hashes of this partition another shard selected too."""
    out = cross.shared_hashes(list(per_shard))
    return [{"shared": [len(h) for h in out]}, *out]


def context_task(table: pa.Table, fp, shard: int, min_len: int, num_parts: int, *shared: np.ndarray):
    """Round 3 (map): the context records of the shard's shared fingerprints, per reducer."""
    with PeakRSS() as peak:
        hashes = np.concatenate(shared) if shared else np.zeros(0, np.uint64)
        data = concat_column(table.column("text"))
        recs = cross.context_records(data, fp, hashes, shard=shard, min_len=min_len, num_parts=num_parts)
    return [
        _task_info(peak, part_bytes=[r.nbytes for r in recs], records=sum(len(r.pos) for r in recs)),
        *recs,
    ]


def resolve_task(min_len: int, num_shards: int, keep_first: bool, *records):
    """Round 4 (reduce): the cross marks of every shard from this partition's records."""
    with PeakRSS() as peak:
        t, _ = cross.window_params(min_len)
        merged = cross.Records.concat(list(records), min_len + t - 1)
        del records
        out = cross.resolve_records(merged, min_len=min_len, num_shards=num_shards, keep_first=keep_first)
    return [_task_info(peak), *out]


def mark_shard(stage, table: pa.Table, step: int, marks: np.ndarray | None) -> tuple[pa.Table, dict]:
    """Round 5's work: the shard's suffix array plus its cross marks, the removal, and the pass's
    accounting; returns the kept rows and what the task measured (its peak RSS above its start)."""
    with PeakRSS() as peak:
        start = time.time()
        rows = table_rows(table)
        del table
        key = batch_key(rows)
        num_bytes_in = sum(text_bytes(r.get("text")) for r in rows)
        counters: Counter = Counter()
        rows = stage.mark(rows, marks, step=step, counters=counters)
        accountant = Accountant(stage.names[step], sink_root=stage.sink_root)
        kept = accountant.account_rows(
            rows, key=key, start=start, num_bytes_in=num_bytes_in, extra=dict(counters)
        )
        out = rows_to_table(kept)
        del rows, kept
    info = {
        "peak_rss_bytes": int(peak.peak),
        "bytes_in": num_bytes_in,
        "bytes_out": accountant.last_bytes_out,
        "cross_mark_runs": int(len(marks)) if marks is not None else 0,
    }
    return out, info


def mark_task(stage, table: pa.Table, step: int, *marks: np.ndarray):
    """Round 5 as a task (:func:`mark_shard`), with the memory Ray reserved for it."""
    import ray

    out, info = mark_shard(stage, table, step, np.concatenate(marks) if marks else None)
    info["memory"] = int(ray.get_runtime_context().get_assigned_resources().get("memory", 0))
    return out, info


def suffix_array_memory(num_bytes: int, *, limit: int = 0) -> int:
    """The ``memory=`` request of a shard's suffix-array task over ``num_bytes`` of text."""
    from clinray.data.dedup_substring import MEMORY_BYTES_PER_INPUT_BYTE

    return task_memory(num_bytes, MEMORY_BYTES_PER_INPUT_BYTE, limit=limit)


def partition_count(estimate: int, num_shards: int) -> int:
    """Hash partitions of a shuffle round of about ``estimate`` bytes: pieces of ``PIECE_BYTES`` on
    average, at most one partition per shard, but enough that no reducer takes more than
    ``REDUCER_BYTES`` (at least one)."""
    by_piece = min(num_shards, estimate // (num_shards * PIECE_BYTES))
    return int(max(1, by_piece, -(-estimate // REDUCER_BYTES)))


def _cross_marks(stage, shards: Shards, step: int, limit: int) -> list[list]:
    """Rounds 1-4 of a pass: for each shard, the refs of its cross marks (one per hash partition)."""
    import ray

    from clinray.data.dedup_substring import FINGERPRINT_BYTES_PER_INPUT_BYTE, RESOLVE_BYTES_PER_RECORD_BYTE

    min_len, num, name = stage.cfg.thresholds[step], len(shards), stage.names[step]
    keep_first = stage.cfg.mode == "keep_first"
    t, _ = cross.window_params(min_len)
    sized = list(zip(shards.refs, shards.text_bytes))
    # an 8-byte hash per selected position, 2 / (t + 1) of the positions
    hash_parts = partition_count(sum(shards.text_bytes) * 16 // (t + 1), num)
    with timed_pass(stage.sink_root, name, "fingerprints", shards=num, partitions=hash_parts) as rec:
        fmap = [
            remote_task(
                fingerprint_task,
                num_returns=hash_parts + 2,
                memory=task_memory(b, FINGERPRINT_BYTES_PER_INPUT_BYTE, limit=limit),
            ).remote(ref, min_len, hash_parts)
            for ref, b in sized
        ]
        infos = ray.get([f[1] for f in fmap])
        part_bytes = [sum(i["part_bytes"][p] for i in infos) for p in range(hash_parts)]
        # the reducer concatenates, sorts and intersects 8-byte hashes: a few copies of its input
        shared = [
            remote_task(
                shared_task, num_returns=num + 1, memory=task_memory(part_bytes[p], 6, limit=limit)
            ).remote(*[f[2 + p] for f in fmap])
            for p in range(hash_parts)
        ]
        counts = ray.get([r[0] for r in shared])
        num_shared = sum(sum(c["shared"]) for c in counts)
        rec.update(hash_bytes_shuffled=int(sum(part_bytes)), shared_hashes=int(num_shared), **_peaks(infos))
    # about one record of K bytes (+ 20 of position, hash and shard) per shared hash and shard
    record_parts = partition_count(num_shared * (min_len + t + 19), num)
    with timed_pass(stage.sink_root, name, "contexts", shards=num, partitions=record_parts) as rec:
        cmap = [
            remote_task(
                context_task,
                num_returns=record_parts + 1,
                memory=task_memory(b, FINGERPRINT_BYTES_PER_INPUT_BYTE, limit=limit),
            ).remote(
                ref, fmap[s][0], s, min_len, record_parts, *[shared[p][1 + s] for p in range(hash_parts)]
            )
            for s, (ref, b) in enumerate(sized)
        ]
        del fmap, shared
        cinfos = ray.get([c[0] for c in cmap])
        part_bytes = [sum(i["part_bytes"][p] for i in cinfos) for p in range(record_parts)]
        resolved = [
            remote_task(
                resolve_task,
                num_returns=num + 1,
                memory=task_memory(part_bytes[p], RESOLVE_BYTES_PER_RECORD_BYTE, limit=limit),
            ).remote(min_len, num, keep_first, *[c[1 + p] for c in cmap])
            for p in range(record_parts)
        ]
        del cmap
        rinfos = ray.get([r[0] for r in resolved])
        rec.update(
            context_bytes_shuffled=int(sum(part_bytes)),
            context_records=int(sum(i["records"] for i in cinfos)),
            **_peaks(cinfos + rinfos),
        )
    return [[resolved[p][1 + s] for p in range(record_parts)] for s in range(num)]


def run_pass(stage, shards: Shards, step: int) -> Shards:
    """One threshold's pass over every shard (five rounds, or the last one alone for one shard)."""
    import ray

    limit = node_memory()
    num = len(shards)
    marks = _cross_marks(stage, shards, step, limit) if num > 1 else [[] for _ in range(num)]
    with timed_pass(stage.sink_root, stage.names[step], "suffix_array", shards=num) as rec:
        done = [
            remote_task(mark_task, num_returns=2, memory=suffix_array_memory(b, limit=limit)).remote(
                stage, ref, step, *marks[s]
            )
            for s, (ref, b) in enumerate(zip(shards.refs, shards.text_bytes))
        ]
        infos = ray.get([d[1] for d in done])
        rec.update(
            text_bytes=int(sum(i["bytes_in"] for i in infos)),
            max_shard_bytes=int(max(i["bytes_in"] for i in infos)),
            cross_mark_runs=int(sum(i["cross_mark_runs"] for i in infos)),
            **_peaks(infos),
        )
    return Shards([d[0] for d in done], [i["bytes_out"] for i in infos], stats={"tasks": infos})
