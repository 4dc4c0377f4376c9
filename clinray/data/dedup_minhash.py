"""MinHash LSH near-duplicate removal on Ray Data (the paper's document-level dedup, section 4.1).

Four named passes, each with an inspectable intermediate:

1. **signatures** (``map_batches`` tasks): 5-gram word shingles of the normalized text
   (:func:`clinray.data.text.shingles`), hashed and permuted by datasketch; each document gives one
   band key per LSH band, and each batch emits one combined row per shuffle partition
   (``part = band_key % num_partitions``) holding its ``band_key, doc_id, source_rank, num_chars`` lists.
2. **buckets** (hash-partitioned shuffle with Ray tasks: split every block by ``part``, one reducer per
   partition; one call per partition, not one per band key): inside a partition a vectorized sort finds
   runs of equal band keys and emits a *star* of edges from the best-ranked member to every other one,
   so a bucket of ``k`` documents gives ``k - 1`` edges, never ``k * (k - 1) / 2``. (Ray Data's own
   ``groupby`` shuffle was measured at about 20 s of actor start-up on 2 cores for 48 combined rows.)
3. **verify** (optional): the candidate edges are checked against the true Jaccard of the two
   documents' shingle sets; only documents that appear in an edge are re-shingled.
4. **clusters**: connected components of the surviving edges (union-find on the driver, which holds
   only documents that have an edge); one document is kept per cluster by a deterministic rule:
   source priority, then the longest text, then the smallest id. Dedup runs across sources.

The bucket and cluster passes live in :mod:`clinray.data.dedup_minhash_graph`.

Trade-off: the edge list and the union-find live on the driver. Edges are O(number of duplicate
documents), which is small next to the corpus; a corpus where most documents are near-duplicates of
each other would want a distributed connected-components pass instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from clinray.data.dedup_minhash_graph import (  # noqa: F401  (re-exported)
    clusters_from_edges,
    edges_from_packed,
    edges_from_partition,
    shuffle_to_edges,
)
from clinray.data.stage import DETAIL, REASON, GlobalStage, resolve  # noqa: F401  (resolve re-exported)
from clinray.data.text import shingles

logger = logging.getLogger(__name__)

#: Keep-one order for duplicates, first wins (docs/tiny_world.md).
DEFAULT_SOURCE_PRIORITY = ("pmc", "pubmed", "textbooks", "guidelines", "articles", "slimpajama")
STAGE = "minhash"


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
    num_partitions: int = 8
    """Partitions of the band-key shuffle."""
    batch_size: int = 512
    """Documents per signature batch."""

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
        if self.ngram < 1 or self.num_partitions < 1 or self.batch_size < 1:
            raise ValueError("minhash.ngram, num_partitions and batch_size must be positive")

    @property
    def effective_threshold(self) -> float:
        return effective_threshold(self.bands, self.rows)

    def warn_if_off_threshold(self) -> None:
        """Log a warning when the bands/rows put the LSH midpoint far from ``threshold`` (the paper preset)."""
        eff = self.effective_threshold
        if abs(eff - self.threshold) > 0.05:
            logger.warning(
                "MinHash LSH with %d bands x %d rows (%d hashes) has an effective Jaccard threshold of %.3f, "
                "not %.2f: only near-exact copies become candidates (preset=%s)",
                self.bands,
                self.rows,
                self.num_perm,
                eff,
                self.threshold,
                self.preset,
            )


def _source_rank(priority: list[str]):
    order = {s: i for i, s in enumerate(priority)}
    return lambda s: order.get(s, len(priority))


class Signer:
    """Ray Data callable: documents -> one row per (document, LSH band)."""

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

    def band_rows(self, batch: pd.DataFrame) -> pd.DataFrame:
        """One row per (document, band): ``band_key``, ``doc_id``, ``source_rank``, ``num_chars``, ``part``."""
        cfg, out = self.cfg, {"band_key": [], "doc_id": [], "source_rank": [], "num_chars": []}
        for doc_id, text, source in zip(batch["id"], batch["text"], batch["source"]):
            sig = self.signature(text)
            rank, n = self.rank(source), len(text)
            for b in range(cfg.bands):
                band = sig[b * cfg.rows : (b + 1) * cfg.rows].tobytes()
                digest = hashlib.blake2b(band, digest_size=8, salt=b.to_bytes(2, "little")).digest()
                out["band_key"].append(int.from_bytes(digest, "little", signed=True))
                out["doc_id"].append(doc_id)
                out["source_rank"].append(rank)
                out["num_chars"].append(n)
        df = pd.DataFrame(out)
        df["band_key"] = df["band_key"].astype(np.int64)
        keys = df["band_key"].to_numpy().view(np.uint64)
        df["part"] = (keys % np.uint64(cfg.num_partitions)).astype(np.int64)
        return df

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Band rows combined per shuffle partition: one row per partition, its columns as lists.

        The shuffle then moves ``num_batches x num_partitions`` rows instead of ``num_docs x bands``.
        """
        rows = self.band_rows(batch)
        packed = {"part": [], "band_key": [], "doc_id": [], "source_rank": [], "num_chars": []}
        for part, group in rows.groupby("part", sort=True):
            packed["part"].append(int(part))
            for col in ("band_key", "doc_id", "source_rank", "num_chars"):
                packed[col].append(group[col].to_numpy())
        return pd.DataFrame(packed)


_SIGNERS: dict = {}


def sign_batch(batch: pd.DataFrame, cfg: MinHashConfig) -> pd.DataFrame:
    """Ray Data task UDF: :class:`Signer` (cached per worker process, no actor start-up) on one batch."""
    key = (
        cfg.num_perm,
        cfg.seed,
        cfg.bands,
        cfg.rows,
        cfg.ngram,
        cfg.num_partitions,
        tuple(cfg.source_priority),
    )
    if key not in _SIGNERS:
        _SIGNERS[key] = Signer(cfg)
    return _SIGNERS[key](batch)


def _hash_wanted(batch: pd.DataFrame, wanted_ref, ngram: int) -> pd.DataFrame:
    """Ray Data UDF: the shingle hashes of the documents named in ``wanted`` (others are skipped)."""
    wanted = resolve(wanted_ref)
    pairs = [(d, shingle_hashes(t, ngram)) for d, t in zip(batch["id"], batch["text"]) if d in wanted]
    return pd.DataFrame({"id": [p[0] for p in pairs], "hashes": [p[1] for p in pairs]})


def verify_edges(ds, edges: pd.DataFrame, cfg: MinHashConfig) -> pd.DataFrame:
    """Keep the candidate edges whose true shingle Jaccard reaches ``cfg.threshold`` (adds ``jaccard``)."""
    import ray

    if edges.empty:
        return edges.assign(jaccard=pd.Series(dtype=float))
    wanted = set(edges["a"]) | set(edges["b"])
    hashed = ds.select_columns(["id", "text"]).map_batches(
        _hash_wanted, fn_args=(ray.put(wanted), cfg.ngram), batch_format="pandas", batch_size=cfg.batch_size
    )
    table = {}
    for batch in hashed.iter_batches(batch_format="pandas", batch_size=None):
        table.update(zip(batch["id"], batch["hashes"]))
    return filter_edges(edges, table, threshold=cfg.threshold)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Sorted unique 32-bit hashes (datasketch's sha1_hash32) of the shingles of ``text``."""
    from datasketch.hashfunc import sha1_hash32

    return np.unique(np.array([sha1_hash32(s.encode()) for s in shingles(text, ngram)], np.uint32))


def filter_edges(edges: pd.DataFrame, table: dict, *, threshold: float) -> pd.DataFrame:
    """Edges whose shingle-hash Jaccard (from ``table``: id -> sorted hashes) reaches ``threshold``."""

    def jac(a, b) -> float:
        x, y = table[a], table[b]
        inter = len(np.intersect1d(x, y, assume_unique=True))
        union = len(x) + len(y) - inter
        return inter / union if union else 1.0

    sims = np.array([jac(a, b) for a, b in zip(edges["a"], edges["b"])], dtype=float)
    return edges.assign(jaccard=sims)[sims >= threshold].reset_index(drop=True)


def find_clusters(ds, cfg: MinHashConfig) -> tuple[pd.DataFrame, dict]:
    """Signatures -> bucket shuffle -> (verified) edges -> clusters; returns (clusters, stats)."""
    cfg.warn_if_off_threshold()
    bands = ds.select_columns(["id", "text", "source"]).map_batches(
        sign_batch, fn_args=(cfg,), batch_format="pandas", batch_size=cfg.batch_size
    )
    edges = shuffle_to_edges(bands, cfg.num_partitions)
    if not edges.empty:
        edges = edges.drop_duplicates(subset=["a", "b"]).reset_index(drop=True)
    num_candidates = len(edges)
    if cfg.verify:
        edges = verify_edges(ds, edges, cfg)
    clusters = clusters_from_edges(edges)
    sizes = clusters.drop_duplicates("cluster_id")["cluster_size"].astype(int).tolist()
    summary = {
        "bands": cfg.bands,
        "rows": cfg.rows,
        "num_perm": cfg.num_perm,
        "effective_threshold": round(cfg.effective_threshold, 4),
        "num_candidate_pairs": int(num_candidates),
        "num_verified_pairs": int(len(edges)),
        "num_clusters": len(sizes),
        "num_removed": int((~clusters["kept"].astype(bool)).sum()),
        "cluster_sizes": dict(sorted(pd.Series(sizes, dtype=int).value_counts().to_dict().items())),
    }
    return clusters, summary


class MinHashStage(GlobalStage):
    """The ``minhash`` stage: the analysis finds the clusters, marking drops every member but one.

    Counters: ``num_clusters`` and ``cluster_size_<k>`` (counted on each cluster's kept document).
    """

    name = STAGE
    requires = ("id", "text", "source")

    def __init__(self, cfg: MinHashConfig, *, sink_root: str, clusters_dir: str | Path | None = None):
        super().__init__(sink_root=sink_root)
        self.cfg = cfg
        self.clusters_dir = Path(clusters_dir) if clusters_dir is not None else Path(sink_root) / "details"

    def analyze(self, ds) -> tuple[dict[str, str], dict[str, int]]:
        """Signatures, bucket shuffle, verified edges, clusters; writes them and a summary JSON.

        Returns ``(removed: doc id -> kept id, sizes: kept id -> cluster size)``.
        """
        clusters, summary = find_clusters(ds, self.cfg)
        write_clusters(clusters, self.clusters_dir)
        (self.clusters_dir / "minhash_summary.json").write_text(json.dumps(summary, indent=2))
        ids, kept = clusters["doc_id"], clusters["kept"]
        removed = {d: c for d, c, k in zip(ids, clusters["cluster_id"], kept) if not k}
        sizes = {d: int(n) for d, n, k in zip(ids, clusters["cluster_size"], kept) if k}
        return removed, sizes

    def mark(self, rows: list[dict], analysis, *, step: int, counters: Counter) -> list[dict]:
        removed, sizes = analysis
        for row in rows:
            doc_id = row.get("id")
            if doc_id in removed:
                row[REASON], row[DETAIL] = "near_duplicate", f"cluster kept {removed[doc_id]}"
            elif doc_id in sizes:
                counters["num_clusters"] += 1
                counters[f"cluster_size_{sizes[doc_id]}"] += 1
        return rows


def minhash_dedup(
    ds, cfg: MinHashConfig | None = None, *, sink_root: str, clusters_dir: str | Path | None = None
):
    """The ``minhash`` stage on a working-schema Ray Dataset.

    Materializes the input (a barrier: clusters need every document, and the passes must read one
    execution of the upstream stages), runs the signature, bucket and cluster passes now, writes the
    clusters (``clusters_dir``, default ``<sink_root>/details``) and a summary JSON, and returns the
    lazy, marked-and-accounted dataset.
    """
    stage = MinHashStage(cfg or MinHashConfig(), sink_root=str(sink_root), clusters_dir=clusters_dir)
    return stage.apply(ds)


def write_clusters(clusters: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write the duplicate clusters as ``clusters.parquet`` (one row per member) for inspection."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "minhash_clusters.parquet"
    pq.write_table(pa.Table.from_pandas(clusters, preserve_index=False), path)
    return path
