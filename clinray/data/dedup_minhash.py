"""MinHash LSH near-duplicate removal on Ray (the paper's document-level dedup, section 4.1).

The input is materialized once (a barrier: every document is signed before any is marked); its
blocks are then worked on by Ray tasks in four timed passes (``report.json`` ``passes``), and every
document is named by its *address* (``block << 32 | row``) rather than looked up by id:

1. **signatures** (one task per block): 5-gram word shingles of the normalized text
   (:func:`clinray.data.text.shingles`), hashed and permuted by datasketch; each document gives one
   band key per LSH band. A hash-partitioned shuffle (``band_key % P``; ``P`` from the band-row bytes,
   :func:`plan_partitions`) brings equal keys together, and each of the ``P`` reducers emits a *star*
   of edges per bucket: ``k - 1`` edges for ``k`` documents, never all pairs.
2. **verify** (optional): candidate edges are spread by pair over ``Q`` partitions (duplicates from
   several bands meet and are counted once); each edge partition asks the block groups holding its
   documents for their shingle hashes, so only documents in an edge are re-shingled, and each
   partition keeps the edges whose true Jaccard reaches the threshold.
3. **components**: connected components on Ray tasks, alternating large-star and small-star rounds
   (Kiveris et al. 2014; :mod:`clinray.data.dedup_minhash_graph`): ``O(log^2 n)`` rounds proven,
   about ``log2 n`` observed. Node keys sort in keep-one order (source priority, then the longest
   text, then the smallest id), so each component converges to a star around the document to keep. The members are written as Parquet
   (``details/minhash_clusters.parquet/part-*.parquet``) by the tasks that find them.
4. **mark**: the cluster rows are routed to the block groups holding them and joined with each block
   by address; each block is marked and accounted by :class:`~clinray.data.stage.MarkBatches`
   (reason ``near_duplicate``, detail ``cluster kept <id>``).

Nothing per document reaches the driver: it holds object references (one per shuffle piece, and every
piece is kept above Ray's 100 KB inline limit, :data:`clinray.data.sizing.MIN_SHUFFLE_PIECE`), the
per-task counts and the per-round change counts. The trade-offs: the passes use plain Ray tasks
rather than Ray Data's hash shuffle (measured 6-10 s of actor start-up per shuffle on 2 cores, and
``Dataset.join`` needs polars; the graph passes take several shuffles), and the marked blocks are
computed eagerly, so the stage returns a materialized dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from clinray import storage
from clinray.data.arrays import sorted_unique
from clinray.data.dedup_minhash_graph import (  # noqa: F401  (re-exported)
    CLUSTER_COLUMNS,
    EDGE_COLUMNS,
    both_directions,
    chunks,
    clusters_from_edges,
    concat,
    connected_components,
    edge_keys,
    edges_from_partition,
    frame_bytes,
    hash_part,
    run_wave,
    split_frame,
    star_members,
    transpose,
)
from clinray.data.sizing import MiB, cluster_cpus, count_for, senders_for, square_shuffle_cap
from clinray.data.stage import (  # noqa: F401  (resolve re-exported)
    DETAIL,
    REASON,
    GlobalStage,
    MarkBatches,
    missing_columns,
    resolve,
)
from clinray.data.text import shingles
from clinray.data.timings import timed_pass

logger = logging.getLogger(__name__)

#: Keep-one order for duplicates, first wins (docs/tiny_world.md).
DEFAULT_SOURCE_PRIORITY = ("pmc", "pubmed", "textbooks", "guidelines", "articles", "slimpajama")
STAGE = "minhash"

#: Bytes of one band row in the shuffle: band key, address, rank and length (8 B each) and the id
#: (pandas 3 keeps strings in Arrow: its length plus an offset). Measured 49.5 B with the tiny
#: world's 9.5-character ids (memory and pickled alike); 64 B allows ids of ~20 characters.
BAND_ROW_BYTES = 64
#: Band-row bytes per shuffle reducer when ``num_partitions`` is automatic: ~260k rows, which sort in
#: well under a second in ~100 MB (measured before this design: 8M rows took 11.8 s and 1.6-2.7 GB).
#: Small on purpose: a reducer is cheap, the count grows past one from ~40 MB of input (~15k
#: documents of 2.8 KB at 18 bands), and the split pass keeps the number of pieces at about band
#: bytes / ``MIN_SHUFFLE_PIECE`` whatever the count. The paper's ~50M documents x 18 bands make ~58 GB of
#: band rows: ~3,400 reducers.
BAND_TARGET_BYTES = 16 * MiB
#: Edge and shingle-hash bytes per verification / connected-components partition.
GRAPH_TARGET_BYTES = 64 * MiB
#: Shingle-hash bytes per character of text (one 4-byte hash per word, ~5.7 characters a word) and
#: per hashed document (the numpy array), to size verification before anything is hashed.
HASH_BYTES_PER_CHAR, HASH_BYTES_PER_DOC = 0.7, 112
#: Bytes of one shingle request (address, partition) and of one cluster row on its way to marking.
REQUEST_BYTES, MARK_ROW_BYTES = 16, 120


def optimal_bands_rows(
    threshold: float, num_perm: int, *, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """datasketch's LSH parameters (bands, rows) minimizing weighted false positive + negative areas."""
    from datasketch.lsh import _optimal_param

    return tuple(int(x) for x in _optimal_param(threshold, num_perm, fp_weight, fn_weight))


def effective_threshold(bands: int, rows: int) -> float:
    """The Jaccard at which the LSH S-curve ``1 - (1 - s**rows)**bands`` crosses one half (approx.)."""
    return (1.0 / bands) ** (1.0 / rows)


@dataclass(kw_only=True, slots=True)
class MinHashConfig:
    """MinHash LSH near-duplicate removal."""

    enabled: bool = True
    """Run this stage at all."""
    preset: Literal["default", "paper"] = "default"
    """``default``: bands/rows tuned to ``threshold``; ``paper``: the paper's literal 9,000 hashes, 15 x 400."""
    threshold: float = 0.85
    """Jaccard similarity (of 5-gram shingle sets) above which two documents are duplicates."""
    num_perm: int = 256
    """Number of MinHash permutations (hashes per document)."""
    bands: int | None = None
    """LSH bands; None: datasketch's optimal choice for ``threshold`` and ``num_perm``."""
    rows: int | None = None
    """Hashes per band; None: datasketch's optimal choice."""
    false_positive_weight: float = 0.1
    """Weight of LSH false positives in datasketch's parameter choice (verification removes them later)."""
    false_negative_weight: float = 0.9
    """Weight of LSH false negatives: weighted up because a missed candidate is never recovered."""
    ngram: int = 5
    """Words per shingle."""
    seed: int = 1
    """Seed of the MinHash permutations."""
    verify: bool = True
    """Check candidate pairs against the true shingle Jaccard before clustering (drops LSH false positives)."""
    source_priority: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCE_PRIORITY))
    """Which copy of a cluster is kept: first listed source wins, then the longest text, then the smallest id."""
    num_partitions: int | None = None
    """Partitions of the band-key shuffle; None or 0: from the data (band-row bytes over
    ``BAND_TARGET_BYTES``, at least the cluster's CPUs; see ``plan_partitions``)."""
    batch_size: int = 512
    """Documents signed at a time inside a signature task (bounds its temporary lists)."""

    def __post_init__(self):
        if self.preset == "paper":
            self.num_perm, self.bands, self.rows = 9000, 15, 400
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"minhash.threshold must be in (0, 1), got {self.threshold}")
        if self.num_perm < 2:
            raise ValueError(f"minhash.num_perm must be at least 2, got {self.num_perm}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError(
                "set both minhash.bands and minhash.rows, or neither (datasketch then picks them)"
            )
        if self.bands is None:
            if min(self.false_positive_weight, self.false_negative_weight) < 0:
                raise ValueError("minhash false_positive_weight and false_negative_weight must be >= 0")
            self.bands, self.rows = optimal_bands_rows(
                self.threshold,
                self.num_perm,
                fp_weight=self.false_positive_weight,
                fn_weight=self.false_negative_weight,
            )
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"minhash.bands x minhash.rows = {self.bands} x {self.rows} must be positive and fit in "
                f"num_perm={self.num_perm}; raise num_perm or lower bands/rows"
            )
        if self.ngram < 1 or self.batch_size < 1:
            raise ValueError("minhash.ngram and batch_size must be positive")
        if self.num_partitions is not None and self.num_partitions < 0:
            raise ValueError(
                f"minhash.num_partitions must be >= 0 (0 or null: sized from the data), got {self.num_partitions}"
            )
        if len(self.source_priority) >= 9999:
            raise ValueError("minhash.source_priority lists too many sources (at most 9,998)")

    @property
    def effective_threshold(self) -> float:
        return effective_threshold(self.bands, self.rows)

    def warn_if_off_threshold(self) -> None:
        """Log a warning when the bands/rows put the LSH midpoint far from ``threshold`` (the paper preset)."""
        eff = self.effective_threshold
        if abs(eff - self.threshold) > 0.05:
            if eff > self.threshold:
                effect = "only near-exact copies become candidates"
            elif self.verify:
                effect = "more pairs become candidates, and verification checks them all"
            else:
                effect = "pairs below the threshold are removed too (verify is off)"
            logger.warning(
                "MinHash LSH with %d bands x %d rows (%d hashes) has an effective Jaccard threshold of %.3f, "
                "not %.2f: %s (preset=%s)",
                self.bands,
                self.rows,
                self.num_perm,
                eff,
                self.threshold,
                effect,
                self.preset,
            )


@dataclass(frozen=True, slots=True)
class MinHashPlan:
    """How the band shuffle is sized for one input (:func:`plan_partitions`)."""

    num_rows: int
    num_bytes: int
    band_bytes: int
    """Estimated band-row bytes: documents x bands x ``BAND_ROW_BYTES``."""
    band_partitions: int
    """Reducers of the band-key shuffle."""
    cpus: int


def plan_partitions(
    num_rows: int, num_bytes: int, cfg: MinHashConfig, *, cpus: int | None = None
) -> MinHashPlan:
    """The band shuffle's partition count for ``num_rows`` documents (``num_bytes`` of input).

    ``ceil(band bytes / BAND_TARGET_BYTES)``, at least ``cpus`` (default: the Ray cluster's), capped at
    100,000; ``cfg.num_partitions`` > 0 overrides it.
    """
    cpus = cluster_cpus() if cpus is None else cpus
    band_bytes = int(num_rows) * cfg.bands * BAND_ROW_BYTES
    n = count_for(band_bytes, target_bytes=BAND_TARGET_BYTES, cpus=cpus, override=cfg.num_partitions or None)
    return MinHashPlan(
        num_rows=int(num_rows), num_bytes=int(num_bytes), band_bytes=band_bytes, band_partitions=n, cpus=cpus
    )


def graph_partitions(edge_bytes: int, work_bytes: int, *, cpus: int) -> int:
    """Partitions of the verification and connected-components shuffles.

    ``work_bytes`` (edges + shingle hashes) over ``GRAPH_TARGET_BYTES``, at least the CPUs, but never
    more than :func:`~clinray.data.sizing.square_shuffle_cap` of the edge bytes: these shuffles are
    all-to-all between ``n`` and ``n`` tasks, and smaller pieces would be held in the driver's heap.
    """
    cap = square_shuffle_cap(edge_bytes)
    return count_for(work_bytes, target_bytes=GRAPH_TARGET_BYTES, cpus=min(cpus, cap), maximum=cap)


def block_groups(num_blocks: int, num_groups: int) -> tuple[int, int]:
    """``(group_size, num_groups)`` for about ``num_groups`` groups of consecutive blocks."""
    size = max(1, math.ceil(num_blocks / max(1, num_groups)))
    return size, max(1, math.ceil(num_blocks / size))


def _source_rank(priority: list[str]):
    order = {s: i for i, s in enumerate(priority)}
    return lambda s: order.get(s, len(priority))


class Signer:
    """Documents -> band rows: one row per (document, LSH band)."""

    def __init__(self, cfg: MinHashConfig):
        from datasketch import MinHash

        self.cfg = cfg
        template = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        self.scheme, self.perms = template.scheme, template.permutations
        self.rank = _source_rank(cfg.source_priority)

    def signature(self, text: str) -> np.ndarray:
        from datasketch import MinHash

        m = MinHash(
            num_perm=self.cfg.num_perm, seed=self.cfg.seed, permutations=self.perms, scheme=self.scheme
        )
        m.update_batch([s.encode("utf-8") for s in shingles(text, self.cfg.ngram)])
        return m.hashvalues

    def band_table(self, ids, texts, sources, locs=None) -> pd.DataFrame:
        """``band_key, doc_id, source_rank, num_chars`` (and ``loc`` when ``locs`` is given) per band."""
        cfg, out = self.cfg, {"band_key": [], "doc_id": [], "source_rank": [], "num_chars": []}
        for doc_id, text, source in zip(ids, texts, sources):
            sig = self.signature(text)
            rank, n = self.rank(source), len(text)
            for b in range(cfg.bands):
                band = sig[b * cfg.rows : (b + 1) * cfg.rows].tobytes()
                digest = hashlib.blake2b(band, digest_size=8, salt=b.to_bytes(2, "little")).digest()
                out["band_key"].append(int.from_bytes(digest, "little", signed=True))
            out["doc_id"].extend([doc_id] * cfg.bands)
            out["source_rank"].extend([rank] * cfg.bands)
            out["num_chars"].extend([n] * cfg.bands)
        df = pd.DataFrame(
            {
                "band_key": np.array(out["band_key"], dtype=np.int64),
                "doc_id": np.array(out["doc_id"], dtype=object),
                "source_rank": np.array(out["source_rank"], dtype=np.int64),
                "num_chars": np.array(out["num_chars"], dtype=np.int64),
            }
        )
        if locs is not None:
            df["loc"] = np.repeat(np.asarray(locs, dtype=np.int64), cfg.bands)
        return df

    def band_rows(self, batch: pd.DataFrame) -> pd.DataFrame:
        """:meth:`band_table` of a frame with ``id, text, source`` (and optionally ``loc``) columns."""
        locs = batch["loc"] if "loc" in batch.columns else None
        return self.band_table(batch["id"], batch["text"], batch["source"], locs)


_SIGNERS: dict = {}


def _signer(cfg: MinHashConfig) -> Signer:
    """A :class:`Signer` cached per worker process (permutations are built once)."""
    key = (cfg.num_perm, cfg.seed, cfg.bands, cfg.rows, cfg.ngram, tuple(cfg.source_priority))
    if key not in _SIGNERS:
        _SIGNERS[key] = Signer(cfg)
    return _SIGNERS[key]


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the shingles of ``text``, for the exact Jaccard.

    pandas' vectorized SipHash (the same in every process), cut to 32 bits: as many collisions as
    the SHA-1 prefix used before, at a third of the time per document (measured: 200 against 630 us
    for 100 words, shingling included).
    """
    hashed = pd.util.hash_array(np.fromiter(shingles(text, ngram), dtype=object), categorize=False)
    return sorted_unique(hashed.astype(np.uint32))


def filter_edges(
    edges: pd.DataFrame, table: dict, *, threshold: float, on: tuple[str, str] = ("a", "b")
) -> pd.DataFrame:
    """Edges whose shingle-hash Jaccard (``table``: node -> sorted hashes, nodes in ``on``) reaches ``threshold``."""

    def jac(a, b) -> float:
        x, y = table[a], table[b]
        inter = len(np.intersect1d(x, y, assume_unique=True))
        union = len(x) + len(y) - inter
        return inter / union if union else 1.0

    sims = np.array([jac(a, b) for a, b in zip(edges[on[0]], edges[on[1]])], dtype=float)
    return edges.assign(jaccard=sims)[sims >= threshold].reset_index(drop=True)


# --- the passes' task bodies (each: pieces -> (outs, stats); see dedup_minhash_graph.run_wave) ---------

_LOC_EDGE_COLUMNS = EDGE_COLUMNS + ["a_loc", "b_loc"]
_ROW_MASK = (1 << 32) - 1


def _block_table(block, start: int | None, end: int | None, columns: list[str] | None = None) -> pa.Table:
    """A Ray Data block (Arrow or pandas) as an Arrow table, sliced to ``[start, end)`` when given."""
    table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block, preserve_index=False)
    if start is not None:
        table = table.slice(start, end - start)
    return table.select(columns) if columns else table


def sign_block(pieces, *, cfg: MinHashConfig, block: int, start=None, end=None):
    """Band rows of one block, each with its document's address ``block << 32 | row``."""
    table = _block_table(pieces[0], start, end, ["id", "text", "source"])
    cols = table.to_pydict()
    signer, frames = _signer(cfg), []
    for s in range(0, table.num_rows, cfg.batch_size):
        e = min(s + cfg.batch_size, table.num_rows)
        locs = (block << 32) + np.arange(s, e, dtype=np.int64)
        frames.append(signer.band_table(cols["id"][s:e], cols["text"][s:e], cols["source"][s:e], locs))
    bands = concat(frames, ["band_key", "doc_id", "source_rank", "num_chars", "loc"])
    return [bands], {"rows": table.num_rows, "band_rows": len(bands), "bytes": frame_bytes(bands)}


def split_bands(pieces, *, num_partitions: int):
    """A group of blocks' band rows cut into the shuffle's partitions (``band_key % num_partitions``)."""
    rows = concat(pieces, ["band_key", "doc_id", "source_rank", "num_chars", "loc"])
    keys = rows["band_key"].to_numpy(np.int64).view(np.uint64)
    parts = (keys % np.uint64(num_partitions)).astype(np.int64)
    return split_frame(rows, parts, num_partitions), {}


def star_edges(pieces):
    """One band partition -> its star edges, with the counts that size the verification."""
    edges = edges_from_partition(concat(pieces, ["band_key", "doc_id", "source_rank", "num_chars", "loc"]))
    chars = int(edges["a_chars"].sum() + edges["b_chars"].sum()) if len(edges) else 0
    return [edges], {"edges": len(edges), "bytes": frame_bytes(edges), "chars": chars}


def _pair_part(edges: pd.DataFrame, num_partitions: int) -> np.ndarray:
    if num_partitions <= 1 or edges.empty:
        return np.zeros(len(edges), dtype=np.int64)
    hashed = pd.util.hash_pandas_object(edges[["a_loc", "b_loc"]], index=False).to_numpy()
    return (hashed % np.uint64(num_partitions)).astype(np.int64)


def route_edges(pieces, *, num_partitions: int, num_groups: int, group_size: int):
    """Edges -> ``num_partitions`` pieces by pair; then ``num_groups`` pieces of shingle requests
    (``loc, part``: "partition ``part`` needs the hashes of the document at ``loc``") by block group."""
    edges = concat(pieces, _LOC_EDGE_COLUMNS)
    parts = _pair_part(edges, num_partitions)
    outs = split_frame(edges, parts, num_partitions)
    if num_groups:
        requests = pd.DataFrame(
            {
                "loc": np.concatenate([edges["a_loc"].to_numpy(np.int64), edges["b_loc"].to_numpy(np.int64)]),
                "part": np.concatenate([parts, parts]),
            }
        ).drop_duplicates(ignore_index=True)
        groups = (requests["loc"].to_numpy() >> 32) // group_size
        outs += split_frame(requests, groups, num_groups)
    return outs, {}


def shingle_requested(pieces, *, blocks: list[tuple], ngram: int, num_partitions: int):
    """Shingle hashes of the requested documents of one block group, sent to each partition asking.

    ``blocks``: ``(block index, ref, start, end)`` of the group; only blocks with a request are fetched.
    """
    import ray

    requests = concat(pieces, ["loc", "part"]).drop_duplicates(ignore_index=True)
    locs = sorted_unique(requests["loc"].to_numpy(np.int64)) if len(requests) else np.zeros(0, np.int64)
    where = {b: (ref, start, end) for b, ref, start, end in blocks}
    hashed_locs, hashes = [], []
    for b in sorted_unique(locs >> 32):
        ref, start, end = where[int(b)]
        mine = locs[(locs >> 32) == b]
        table = _block_table(ray.get(ref), start, end, ["text"])
        texts = table.column("text").take(pa.array(mine & _ROW_MASK)).to_pylist()
        hashed_locs.append(mine)
        hashes += [shingle_hashes(t, ngram) for t in texts]
    table = pd.DataFrame(
        {
            "loc": np.concatenate(hashed_locs) if hashed_locs else np.zeros(0, np.int64),
            "hashes": pd.Series(hashes, dtype=object),
        }
    )
    out = requests.merge(table, on="loc", how="inner")
    return split_frame(out[["loc", "hashes"]], out["part"].to_numpy(np.int64), num_partitions), {
        "docs": len(table)
    }


def verify_partition(pieces, *, num_edge_pieces: int, threshold: float | None, num_partitions: int):
    """One pair partition: distinct candidate edges, verified against the true Jaccard when
    ``threshold`` is set, sent on as the first large-star's ``(u, v)`` rows keyed by node."""
    edges = concat(pieces[:num_edge_pieces], _LOC_EDGE_COLUMNS).drop_duplicates(
        subset=["a_loc", "b_loc"], ignore_index=True
    )
    num_candidates = len(edges)
    if threshold is not None and len(edges):
        hashes = concat(pieces[num_edge_pieces:], ["loc", "hashes"])
        table = dict(zip(hashes["loc"].to_numpy(np.int64).tolist(), hashes["hashes"]))
        edges = filter_edges(edges, table, threshold=threshold, on=("a_loc", "b_loc"))
    ka, kb = edge_keys(edges)
    swap = ka > kb
    outs = both_directions(np.where(swap, ka, kb), np.where(swap, kb, ka), num_partitions)
    return outs, {"candidates": num_candidates, "verified": len(edges)}


def mark_block(pieces, *, stage: MinHashStage, block: int, group_size: int, start=None, end=None):
    """Join one block with the cluster rows of its group by address, then mark and account it."""
    table = _block_table(pieces[0], start, end)
    marks = concat(pieces[1:], ["loc", "kept", "cluster_id", "cluster_size"])
    marks = marks[(marks["loc"].to_numpy(np.int64) >> 32) == block]
    removed, sizes = {}, {}
    for loc, kept, cluster_id, size in zip(
        marks["loc"], marks["kept"], marks["cluster_id"], marks["cluster_size"]
    ):
        if kept:
            sizes[int(loc) & _ROW_MASK] = int(size)
        else:
            removed[int(loc) & _ROW_MASK] = cluster_id
    return [MarkBatches(stage, (removed, sizes))(table)], {}


@dataclass
class MinHashAnalysis:
    """What the marking pass needs: object references and counts only (no per-document data)."""

    blocks: list[tuple[Any, int | None, int | None]]
    """``(ref, start, end)`` of each non-empty input block, in address order."""
    marks: list[list[Any]]
    """Per block group, the cluster-row pieces (one per components partition)."""
    group_size: int
    summary: dict = field(default_factory=dict)


class MinHashStage(GlobalStage):
    """The ``minhash`` stage: the analysis finds the clusters, marking drops every member but one.

    Counters: ``num_clusters`` and ``cluster_size_<k>`` (counted on each cluster's kept document).
    :meth:`apply` replaces the base's: the marking is a join by address, not a broadcast analysis.
    """

    name = STAGE
    requires = ("id", "text", "source")

    def __init__(self, cfg: MinHashConfig, *, sink_root: str, clusters_dir: str | Path | None = None):
        super().__init__(sink_root=sink_root)
        self.cfg = cfg
        self.clusters_dir = (
            str(clusters_dir) if clusters_dir is not None else storage.join(sink_root, "details")
        )

    @property
    def clusters_path(self) -> str:
        """The cluster members: a Parquet folder with one file per components partition (a path or URI)."""
        return storage.join(self.clusters_dir, "minhash_clusters.parquet")

    def apply(self, ds):
        """Materialize, run the passes, return the marked and accounted dataset (materialized)."""
        import ray

        ds = ds.materialize()
        missing_columns(self.requires, ds.columns(), stage=self.name)
        analysis = self.analyze(ds)
        if not analysis.blocks:
            return ds
        with timed_pass(self.sink_root, STAGE, "mark", blocks=len(analysis.blocks)):
            inputs, kwargs = [], []
            for b, (ref, start, end) in enumerate(analysis.blocks):
                group = b // analysis.group_size
                inputs.append([ref, *(analysis.marks[group] if analysis.marks else [])])
                kwargs.append({"block": b, "start": start, "end": end})
            outs, _ = run_wave(
                mark_block,
                inputs,
                1,
                remote=True,
                task_kwargs=kwargs,
                stage=self,
                group_size=analysis.group_size,
            )
            return ray.data.from_arrow_refs([o[0] for o in outs])

    def plan(self, num_rows: int, num_bytes: int, *, cpus: int | None = None) -> MinHashPlan:
        return plan_partitions(num_rows, num_bytes, self.cfg, cpus=cpus)

    def analyze(self, ds) -> MinHashAnalysis:
        """Signatures, band shuffle, verification and components over the materialized ``ds``; writes
        the clusters and ``minhash_summary.json`` and returns the marking pass's references."""
        cfg, sink = self.cfg, self.sink_root
        cfg.warn_if_off_threshold()
        blocks = _blocks(ds)
        cpus = cluster_cpus()
        plan = self.plan(sum(n for *_, n in blocks), ds.size_bytes(), cpus=cpus)
        blocks = [(ref, start, end) for ref, start, end, n in blocks if n]
        summary = {
            "bands": cfg.bands,
            "rows": cfg.rows,
            "num_perm": cfg.num_perm,
            "effective_threshold": round(cfg.effective_threshold, 4),
            "num_documents": plan.num_rows,
            "band_partitions": plan.band_partitions,
        }
        num_blocks, num_p = len(blocks), plan.band_partitions
        star_refs, star_stats = [], []
        with timed_pass(sink, STAGE, "signatures", partitions=num_p, blocks=num_blocks) as counters:
            if blocks:
                bands, stats = run_wave(
                    sign_block,
                    [[ref] for ref, _, _ in blocks],
                    1,
                    remote=True,
                    task_kwargs=[{"block": b, "start": s, "end": e} for b, (_, s, e) in enumerate(blocks)],
                    cfg=cfg,
                )
                band_bytes = sum(s["bytes"] for s in stats)
                senders = senders_for(band_bytes, receivers=num_p, maximum=num_blocks)
                split, _ = run_wave(
                    split_bands,
                    chunks([b[0] for b in bands], senders),
                    num_p,
                    remote=True,
                    num_partitions=num_p,
                )
                del bands
                outs, star_stats = run_wave(star_edges, transpose(split, num_p), 1, remote=True)
                star_refs = [o[0] for o in outs]
                del split
                counters.update(band_rows=sum(s["band_rows"] for s in stats), band_bytes=band_bytes)
                counters["star_edges"] = sum(s["edges"] for s in star_stats)
        num_edges = sum(s["edges"] for s in star_stats)
        marks: list[list[Any]] = []
        group_size = max(1, num_blocks)
        sizes: Counter = Counter()
        clusters_path = self.clusters_path
        storage.rmtree(clusters_path)  # a folder or a file from an earlier run (a local path or a URI)
        storage.makedirs(clusters_path)
        num_candidates = num_verified = num_clusters = num_removed = rounds = 0
        num_q = 1
        if num_edges:
            edge_bytes = sum(s["bytes"] for s in star_stats)
            hash_bytes = 0
            if cfg.verify:
                chars = sum(s["chars"] for s in star_stats)
                hash_bytes = int(chars * HASH_BYTES_PER_CHAR) + 2 * num_edges * HASH_BYTES_PER_DOC
            num_q = graph_partitions(edge_bytes, edge_bytes + hash_bytes, cpus=cpus)
            with timed_pass(sink, STAGE, "verify", partitions=num_q) as counters:
                verified, stats = self._verify(blocks, star_refs, star_stats, num_q, hash_bytes)
                del star_refs
                num_candidates = sum(s["candidates"] for s in stats)
                num_verified = sum(s["verified"] for s in stats)
                counters.update(candidate_pairs=num_candidates, verified_pairs=num_verified)
            with timed_pass(sink, STAGE, "components", partitions=num_q) as counters:
                final, rounds = connected_components(transpose(verified, num_q), num_q, remote=True)
                del verified
                mark_bytes = 2 * num_verified * MARK_ROW_BYTES
                group_size, num_groups = block_groups(
                    num_blocks, senders_for(mark_bytes, receivers=num_q, maximum=num_blocks)
                )
                outs, stats = run_wave(
                    star_members,
                    final,
                    num_groups,
                    remote=True,
                    task_kwargs=[
                        {"out_path": storage.join(clusters_path, f"part-{p:05d}.parquet")}
                        for p in range(num_q)
                    ],
                    num_groups=num_groups,
                    group_size=group_size,
                )
                marks = transpose(outs, num_groups)
                num_clusters = sum(s["clusters"] for s in stats)
                num_removed = sum(s["removed"] for s in stats)
                for s in stats:
                    sizes.update({int(k): v for k, v in s["sizes"].items()})
                counters.update(rounds=rounds, clusters=num_clusters)
        else:
            _write_empty_clusters(storage.join(clusters_path, "part-00000.parquet"))
        summary.update(
            graph_partitions=num_q,
            component_rounds=rounds,
            num_candidate_pairs=int(num_candidates),
            num_verified_pairs=int(num_verified),
            num_clusters=int(num_clusters),
            num_removed=int(num_removed),
            cluster_sizes={str(k): v for k, v in sorted(sizes.items())},
        )
        storage.write_text(
            storage.join(self.clusters_dir, "minhash_summary.json"), json.dumps(summary, indent=2)
        )
        return MinHashAnalysis(blocks=blocks, marks=marks, group_size=group_size, summary=summary)

    def _verify(self, blocks, star_refs, star_stats, num_q: int, hash_bytes: int):
        """Route edges by pair; with ``cfg.verify``, fetch the shingle hashes of their documents from the
        block groups that hold them; verify each pair partition. Returns its outputs and stats."""
        cfg, num_blocks = self.cfg, len(blocks)
        num_edges = sum(s["edges"] for s in star_stats)
        edge_bytes = sum(s["bytes"] for s in star_stats)
        routers = senders_for(edge_bytes, receivers=num_q, maximum=len(star_refs))
        group_size, num_groups = 1, 0
        if cfg.verify:
            request_bytes = 2 * num_edges * REQUEST_BYTES
            wanted = min(
                senders_for(hash_bytes, receivers=num_q, maximum=num_blocks),
                senders_for(request_bytes, receivers=routers, maximum=num_blocks),
            )
            group_size, num_groups = block_groups(num_blocks, wanted)
        routed, _ = run_wave(
            route_edges,
            chunks(star_refs, routers),
            num_q + num_groups,
            remote=True,
            num_partitions=num_q,
            num_groups=num_groups,
            group_size=group_size,
        )
        inputs = transpose([r[:num_q] for r in routed], num_q)
        if cfg.verify:
            requests = transpose([r[num_q:] for r in routed], num_groups)
            members = [
                [(b, *blocks[b]) for b in range(g * group_size, min(num_blocks, (g + 1) * group_size))]
                for g in range(num_groups)
            ]
            hashed, _ = run_wave(
                shingle_requested,
                requests,
                num_q,
                remote=True,
                task_kwargs=[{"blocks": m} for m in members],
                ngram=cfg.ngram,
                num_partitions=num_q,
            )
            inputs = [edges + hashes for edges, hashes in zip(inputs, transpose(hashed, num_q))]
        return run_wave(
            verify_partition,
            inputs,
            num_q,
            remote=True,
            num_edge_pieces=len(routed),
            threshold=cfg.threshold if cfg.verify else None,
            num_partitions=num_q,
        )

    def mark(self, rows: list[dict], analysis, *, step: int, counters: Counter) -> list[dict]:
        """``analysis``: one block's ``(removed: row -> kept id, sizes: row -> cluster size)``."""
        removed, sizes = analysis
        for i, row in enumerate(rows):
            if i in removed:
                row[REASON], row[DETAIL] = "near_duplicate", f"cluster kept {removed[i]}"
            elif i in sizes:
                counters["num_clusters"] += 1
                counters[f"cluster_size_{sizes[i]}"] += 1
        return rows


def _blocks(ds) -> list[tuple[Any, int | None, int | None, int]]:
    """``(ref, start, end, num_rows)`` of each block of a materialized dataset (slices kept)."""
    out = []
    for bundle in ds.iter_internal_ref_bundles():
        for entry, piece in zip(bundle.blocks, bundle.slices):
            if piece is None:
                out.append((entry.ref, None, None, int(entry.metadata.num_rows or 0)))
            else:
                out.append((entry.ref, piece.start_offset, piece.end_offset, piece.num_rows))
    return out


def _write_empty_clusters(path: str) -> None:
    import pyarrow.parquet as pq

    from clinray.data.dedup_minhash_graph import CLUSTER_SCHEMA

    fs, fs_path = storage.filesystem(path)
    pq.write_table(CLUSTER_SCHEMA.empty_table(), fs_path, filesystem=fs)


def minhash_dedup(
    ds, cfg: MinHashConfig | None = None, *, sink_root: str, clusters_dir: str | Path | None = None
):
    """The ``minhash`` stage on a working-schema Ray Dataset.

    Materializes the input (a barrier: clusters need every document, and the passes must read one
    execution of the upstream stages), runs the four passes now, writes the clusters (``clusters_dir``,
    default ``<sink_root>/details``) and a summary JSON, and returns the marked-and-accounted dataset.
    """
    stage = MinHashStage(cfg or MinHashConfig(), sink_root=str(sink_root), clusters_dir=clusters_dir)
    return stage.apply(ds)
