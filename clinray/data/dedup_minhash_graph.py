"""The graph half of MinHash near-dup: band-key shuffle, star edges per bucket, connected components.

Split from :mod:`clinray.data.dedup_minhash` (which re-exports these names). Everything here is pure
pandas/numpy except :func:`shuffle_to_edges`, which moves the combined band rows between Ray tasks.
The trade-off is stated there: a bucket of ``k`` documents gives ``k - 1`` star edges, and the
connected components run on the driver over the (small) edge list.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _split_by_part(block: pd.DataFrame, num_partitions: int) -> list[pd.DataFrame]:
    return [block[block["part"] == p] for p in range(num_partitions)]


def shuffle_to_edges(bands, num_partitions: int) -> pd.DataFrame:
    """Hash-partitioned shuffle of the combined band rows with Ray tasks, then star edges per partition.

    Map: each block is split by ``part`` (``band_key % num_partitions``) into ``num_partitions`` pieces;
    reduce: one task per partition gathers its piece of every block and emits that partition's edges.
    Plain tasks (not Ray Data's shuffle actors) because the combined rows are few: the shuffle moves
    ``num_blocks x num_partitions`` small rows, and tasks reuse the signature pass's warm workers.
    """
    import ray

    split = ray.remote(num_returns=num_partitions)(_split_by_part) if num_partitions > 1 else None
    reduce = ray.remote(lambda *pieces: edges_from_packed(pd.concat(pieces, ignore_index=True)))
    blocks = bands.to_pandas_refs()
    if split is None:
        pieces = [[b] for b in blocks]
    else:
        pieces = [split.remote(b, num_partitions) for b in blocks]
    per_part = [[p[i] for p in pieces] for i in range(num_partitions)] if pieces else []
    results = ray.get([reduce.remote(*refs) for refs in per_part])
    edges = pd.concat(results, ignore_index=True) if results else edges_from_partition(pd.DataFrame())
    return edges


def edges_from_packed(group: pd.DataFrame) -> pd.DataFrame:
    """One shuffle partition of combined band rows -> star edges (see :func:`edges_from_partition`)."""
    flat = {
        col: np.concatenate(list(group[col])) if len(group) else []
        for col in ("band_key", "doc_id", "source_rank", "num_chars")
    }
    return edges_from_partition(pd.DataFrame(flat))


def edges_from_partition(rows: pd.DataFrame) -> pd.DataFrame:
    """One hash partition of band rows -> star edges (best-ranked member -> each other member)."""
    cols = ["a", "b", "a_rank", "a_chars", "b_rank", "b_chars"]
    if len(rows) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c in "ab" else np.int64) for c in cols})
    rows = rows.assign(neg_chars=-rows["num_chars"]).sort_values(
        ["band_key", "source_rank", "neg_chars", "doc_id"], kind="stable"
    )
    keys = rows["band_key"].to_numpy()
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = keys[1:] != keys[:-1]
    head = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
    member = ~starts
    ids, rank, chars = rows["doc_id"].to_numpy(), rows["source_rank"].to_numpy(), rows["num_chars"].to_numpy()
    edges = pd.DataFrame(
        {
            "a": ids[head[member]],
            "b": ids[member],
            "a_rank": rank[head[member]],
            "a_chars": chars[head[member]],
            "b_rank": rank[member],
            "b_chars": chars[member],
        }
    )
    edges = edges[edges["a"] != edges["b"]]
    return edges.drop_duplicates(subset=["a", "b"]).reset_index(drop=True)


def clusters_from_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """Connected components of ``edges``; one row per member with ``cluster_id`` (= kept doc id) and ``kept``."""
    cols = ["cluster_id", "doc_id", "kept", "source_rank", "num_chars", "cluster_size"]
    if edges.empty:
        return pd.DataFrame({c: [] for c in cols})
    info = {}
    for side in ("a", "b"):
        for d, r, c in zip(edges[side], edges[f"{side}_rank"], edges[f"{side}_chars"]):
            info[d] = (int(r), int(c))
    parent = {d: d for d in info}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(edges["a"], edges["b"]):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = {}
    for d in info:
        members.setdefault(find(d), []).append(d)
    rows = []
    for group in members.values():
        keep = min(group, key=lambda d: (info[d][0], -info[d][1], d))
        for d in sorted(group):
            rows.append((keep, d, d == keep, info[d][0], info[d][1], len(group)))
    return pd.DataFrame(rows, columns=cols).sort_values(["cluster_id", "doc_id"]).reset_index(drop=True)
