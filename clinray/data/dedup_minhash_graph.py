"""The graph half of MinHash near-dup: star edges per bucket, then connected components on Ray tasks.

Split from :mod:`clinray.data.dedup_minhash` (which re-exports the public names). Every step here is a
pure pandas function over the *pieces* of one partition, returning the pieces it sends on and a small
stats dict, so the same code runs in-process (unit tests, :func:`clusters_from_edges`) and as Ray tasks
(:func:`run_wave`), where the driver holds object references and per-round counts only.

* **Star edges** (:func:`edges_from_partition`): inside one band partition a vectorized sort finds runs
  of equal band keys and links the best-ranked member of each bucket to every other one, so a bucket
  of ``k`` documents gives ``k - 1`` edges, never ``k * (k - 1) / 2``.
* **Node keys** (:func:`node_keys`): each document in an edge becomes one string whose order *is* the
  keep-one rule: source rank, then longer text first, then the smallest id, then the row's address
  (``block << 32 | row``, which tells apart two rows with one id). The minimum key of a component is
  therefore the document to keep, and components need no extra pass to pick it.
* **Connected components** (Kiveris et al. 2014, "Connected components in MapReduce and beyond"):
  alternating *large-star* (every node links its larger neighbours to the smallest node of its
  neighbourhood) and *small-star* (every node links itself and its smaller neighbours to the smallest
  of them) rounds, each one hash shuffle of the edge list keyed by node. They converge to one star
  per component, centred on its minimum key, in ``O(log^2 n)`` rounds (the paper's bound; about
  ``log2 n`` observed: 8 rounds for a 300-node path in shuffled order). A round that changes no
  edge in either step ends the loop (then every node has at most one smaller neighbour and no node
  with a smaller neighbour has a larger one: a star forest); :data:`MAX_ROUNDS` caps it.
* **Members** (:func:`star_members`): each star's centre is kept; its leaves are the removed copies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from clinray import storage
from clinray.data.tasks import chunks, remote_task, transpose  # noqa: F401  (chunks re-exported)

#: Digits of the source rank and of the inverted length in a node key (see :func:`node_keys`).
RANK_DIGITS, CHARS_DIGITS = 4, 12
MAX_CHARS = 10**CHARS_DIGITS - 1
#: A node key ends with this separator and the row address as 16 hex digits.
_ADDR_SUFFIX = 17
#: Large-star/small-star rounds before giving up: a guard against a bug, far above the ~log2 n
#: rounds observed (log2 of 10**8 is 27), and a round on converged stars costs one pass over the edges.
MAX_ROUNDS = 200
CLUSTER_COLUMNS = ["cluster_id", "doc_id", "kept", "source_rank", "num_chars", "cluster_size"]
#: The schema of ``minhash_clusters.parquet`` (every part file, empty ones too).
CLUSTER_SCHEMA = pa.schema(
    [
        ("cluster_id", pa.string()),
        ("doc_id", pa.string()),
        ("kept", pa.bool_()),
        ("source_rank", pa.int64()),
        ("num_chars", pa.int64()),
        ("cluster_size", pa.int64()),
    ]
)
EDGE_COLUMNS = ["a", "b", "a_rank", "a_chars", "b_rank", "b_chars"]


# --- pieces ------------------------------------------------------------------------------------------


def concat(pieces: Sequence[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    """The non-empty pieces as one frame (an empty frame with ``columns`` when there is none)."""
    frames = [p for p in pieces if p is not None and len(p)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def hash_part(values, num_partitions: int) -> np.ndarray:
    """Partition index of each value: a hash that is the same in every process (not Python's ``hash``)."""
    values = np.asarray(values)
    if num_partitions <= 1 or len(values) == 0:
        return np.zeros(len(values), dtype=np.int64)
    if values.dtype.kind in "iu":
        hashed = pd.util.hash_array(values.astype(np.int64))
    else:
        hashed = pd.util.hash_array(values.astype(object), categorize=False)
    return (hashed % np.uint64(num_partitions)).astype(np.int64)


def split_frame(df: pd.DataFrame, parts: np.ndarray, num_partitions: int) -> list[pd.DataFrame]:
    """``df`` cut into ``num_partitions`` frames by ``parts`` (one partition index per row)."""
    if num_partitions == 1:
        return [df.reset_index(drop=True)]
    order = np.argsort(parts, kind="stable")
    bounds = np.cumsum(np.bincount(parts, minlength=num_partitions))
    ordered = df.iloc[order]
    starts = np.concatenate([[0], bounds[:-1]])
    return [ordered.iloc[s:e].reset_index(drop=True) for s, e in zip(starts, bounds)]


def group_of(locs, group_size: int) -> np.ndarray:
    """The block group (of ``group_size`` consecutive blocks) that holds each row address."""
    return (np.asarray(locs, dtype=np.int64) >> 32) // max(1, group_size)


def frame_bytes(df: pd.DataFrame) -> int:
    return int(df.memory_usage(index=False, deep=True).sum()) if len(df) else 0


# --- running steps as waves of tasks -----------------------------------------------------------------


def _call(fn, kwargs, *pieces):
    outs, stats = fn(list(pieces), **kwargs)
    return (*outs, stats)


def run_wave(
    fn: Callable[..., tuple[list, dict]],
    task_inputs: Sequence[Sequence[Any]],
    num_out: int,
    *,
    remote: bool,
    task_kwargs: Sequence[dict] | None = None,
    **kwargs,
) -> tuple[list[list], list[dict]]:
    """Run ``fn(pieces, **kwargs)`` once per entry of ``task_inputs``; return its outputs and stats.

    ``fn`` returns ``(outs, stats)`` with ``num_out`` outputs. With ``remote`` each call is a Ray task
    (its pieces are object references, resolved by Ray) and the outputs stay in the object store:
    the driver only ``ray.get``s the stats, which also makes the wave a barrier. ``task_kwargs`` adds
    per-task keyword arguments.
    """
    task_kwargs = task_kwargs or [{}] * len(task_inputs)
    if not remote:
        results = [fn(list(p), **kwargs, **kw) for p, kw in zip(task_inputs, task_kwargs)]
        return [list(r[0]) for r in results], [r[1] for r in results]
    import ray

    task = remote_task(_call, num_returns=num_out + 1)
    refs = [task.remote(fn, {**kwargs, **kw}, *p) for p, kw in zip(task_inputs, task_kwargs)]
    stats = ray.get([r[-1] for r in refs])
    return [list(r[:-1]) for r in refs], stats


# --- star edges per bucket ---------------------------------------------------------------------------


def edges_from_partition(rows: pd.DataFrame) -> pd.DataFrame:
    """One hash partition of band rows -> star edges (best-ranked member -> each other member).

    ``rows``: ``band_key, doc_id, source_rank, num_chars`` and optionally ``loc`` (the row address),
    which the edges then carry as ``a_loc, b_loc`` and which identifies a document instead of its id.
    """
    with_loc = "loc" in rows.columns
    cols = EDGE_COLUMNS + (["a_loc", "b_loc"] if with_loc else [])
    if len(rows) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c in "ab" else np.int64) for c in cols})
    order = ["band_key", "source_rank", "neg_chars", "doc_id"] + (["loc"] if with_loc else [])
    rows = rows.assign(neg_chars=-rows["num_chars"]).sort_values(order, kind="stable")
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
    if with_loc:
        loc = rows["loc"].to_numpy()
        edges["a_loc"], edges["b_loc"] = loc[head[member]], loc[member]
        edges = edges[edges["a_loc"] != edges["b_loc"]]
        return edges.drop_duplicates(subset=["a_loc", "b_loc"]).reset_index(drop=True)
    edges = edges[edges["a"] != edges["b"]]
    return edges.drop_duplicates(subset=["a", "b"]).reset_index(drop=True)


# --- node keys ---------------------------------------------------------------------------------------


def node_keys(rank, chars, ids, locs) -> np.ndarray:
    """One sortable string per document: ``rank | MAX_CHARS - chars | id | NUL | address`` (fixed widths).

    String order is the keep-one order (source rank, longer text, smaller id, smaller address); the
    NUL sorts below every other character, so an id that is a prefix of another still sorts first.
    """
    return np.array(
        [
            f"{int(r):0{RANK_DIGITS}d}{MAX_CHARS - int(c):0{CHARS_DIGITS}d}{i}\x00{int(loc):016x}"
            for r, c, i, loc in zip(rank, chars, ids, locs)
        ],
        dtype=object,
    )


def key_fields(keys) -> pd.DataFrame:
    """Inverse of :func:`node_keys`: ``doc_id, loc, source_rank, num_chars`` per key."""
    s = pd.Series(np.asarray(keys, dtype=object), dtype=object)
    if s.empty:
        return pd.DataFrame(
            {
                "doc_id": pd.Series(dtype=object),
                **{c: pd.Series(dtype=np.int64) for c in ("loc", "source_rank", "num_chars")},
            }
        )
    head = RANK_DIGITS + CHARS_DIGITS
    return pd.DataFrame(
        {
            "doc_id": s.str.slice(head, -_ADDR_SUFFIX).to_numpy(object),
            "loc": s.str.slice(-16).map(lambda h: int(h, 16)).to_numpy(np.int64),
            "source_rank": s.str.slice(0, RANK_DIGITS).astype(np.int64).to_numpy(),
            "num_chars": MAX_CHARS - s.str.slice(RANK_DIGITS, head).astype(np.int64).to_numpy(),
        }
    )


def edge_keys(edges: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The node keys of both ends of ``edges`` (address 0 when the edges carry none)."""
    zeros = np.zeros(len(edges), dtype=np.int64)
    ka = node_keys(edges["a_rank"], edges["a_chars"], edges["a"], edges.get("a_loc", zeros))
    kb = node_keys(edges["b_rank"], edges["b_chars"], edges["b"], edges.get("b_loc", zeros))
    return ka, kb


def both_directions(hi, lo, num_partitions: int) -> list[pd.DataFrame]:
    """Undirected edges as ``(u, v)`` rows both ways, partitioned by ``u`` (a large-star's input)."""
    u = np.concatenate([np.asarray(hi, dtype=object), np.asarray(lo, dtype=object)])
    v = np.concatenate([np.asarray(lo, dtype=object), np.asarray(hi, dtype=object)])
    rows = pd.DataFrame({"u": u, "v": v})
    return split_frame(rows, hash_part(u, num_partitions), num_partitions)


# --- connected components: one step per function ------------------------------------------------------


def large_star(pieces: list[pd.DataFrame], *, num_partitions: int) -> tuple[list, dict]:
    """Large-star on one partition of ``(u, v)`` rows (keyed by ``u``): each larger neighbour ``v > u``
    is linked to ``m(u)``, the smallest of ``u`` and its neighbours. Sends ``(hi, lo)`` by ``hi``.

    ``changes`` counts the edges it re-points (``m(u) < u``); zero means the edge set is unchanged.
    """
    rows = concat(pieces, ["u", "v"]).drop_duplicates(ignore_index=True)
    u, v = rows["u"].to_numpy(object), rows["v"].to_numpy(object)
    m = rows["u"].map(rows.groupby("u", sort=False)["v"].min()).to_numpy(object)
    m = np.where(m < u, m, u)
    up = v > u
    out = pd.DataFrame({"hi": v[up], "lo": m[up]})
    stats = {"changes": int((m[up] < u[up]).sum()), "edges": len(out)}
    return split_frame(out, hash_part(out["hi"], num_partitions), num_partitions), stats


def small_star(pieces: list[pd.DataFrame], *, num_partitions: int) -> tuple[list, dict]:
    """Small-star on one partition of ``(hi, lo)`` rows (keyed by ``hi``): ``hi`` and each of its smaller
    neighbours are linked to the smallest of them. Sends both directions, keyed by node.

    ``changes`` counts the nodes with two or more smaller neighbours (the only ones whose edges move).
    """
    rows = concat(pieces, ["hi", "lo"]).drop_duplicates(ignore_index=True)
    by_hi = rows.groupby("hi", sort=False)["lo"]
    mins = by_hi.min()
    lo, m = rows["lo"].to_numpy(object), rows["hi"].map(mins).to_numpy(object)
    moved = lo != m
    hi = np.concatenate([lo[moved], mins.index.to_numpy(object)])
    new_lo = np.concatenate([m[moved], mins.to_numpy(object)])
    stats = {"changes": int((by_hi.size() >= 2).sum()), "edges": len(hi)}
    return both_directions(hi, new_lo, num_partitions), stats


def star_members(
    pieces: list[pd.DataFrame], *, num_groups: int = 1, group_size: int = 1, out_path: str | None = None
) -> tuple[list, dict]:
    """The members of each converged star in one partition of ``(u, v)`` rows keyed by ``u``.

    A node whose neighbours are all larger is a centre (the component's minimum key: the document to
    keep); its neighbours are the removed copies. Returns the cluster rows (``CLUSTER_COLUMNS`` and
    ``loc``) split into ``num_groups`` block groups (by address), writes them to ``out_path`` (Parquet,
    without the address) when given, and counts clusters by size.
    """
    rows = concat(pieces, ["u", "v"]).drop_duplicates(ignore_index=True)
    mins = rows.groupby("u", sort=False)["v"].min()
    centre = mins.index.to_numpy(object)[mins.to_numpy(object) > mins.index.to_numpy(object)]
    leaves = rows[rows["u"].isin(set(centre))]
    size = leaves.groupby("u", sort=False).size() + 1
    centres = np.concatenate([centre, leaves["u"].to_numpy(object)])
    members = np.concatenate([centre, leaves["v"].to_numpy(object)])
    m, c = key_fields(members), key_fields(centres)
    clusters = pd.DataFrame(
        {
            "cluster_id": c["doc_id"].to_numpy(object),
            "doc_id": m["doc_id"].to_numpy(object),
            "kept": np.arange(len(members)) < len(centre),
            "source_rank": m["source_rank"].to_numpy(np.int64),
            "num_chars": m["num_chars"].to_numpy(np.int64),
            "cluster_size": pd.Series(centres, dtype=object).map(size).fillna(1).to_numpy(np.int64),
            "loc": m["loc"].to_numpy(np.int64),
        }
    )
    clusters = clusters.sort_values(["cluster_id", "doc_id", "loc"], kind="stable").reset_index(drop=True)
    if out_path is not None:
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(clusters[CLUSTER_COLUMNS], schema=CLUSTER_SCHEMA, preserve_index=False)
        fs, fs_path = storage.filesystem(out_path)  # a local path or a URI (s3://)
        pq.write_table(table, fs_path, filesystem=fs)
    sizes = Counter(int(n) for n in size.to_numpy())
    stats = {
        "clusters": len(centre),
        "removed": int(len(members) - len(centre)),
        "sizes": dict(sizes),
        "bytes": frame_bytes(clusters),
    }
    groups = group_of(clusters["loc"], group_size)
    return split_frame(clusters, groups, num_groups), stats


def connected_components(
    first: list[list[Any]], num_partitions: int, *, remote: bool, max_rounds: int = MAX_ROUNDS
) -> tuple[list[list[Any]], int]:
    """Alternate large-star and small-star waves until a round changes nothing.

    ``first``: the receiving tasks' inputs of the first large-star (``(u, v)`` pieces keyed by ``u``,
    e.g. from :func:`both_directions`). Returns the last small-star's inputs for :func:`star_members`
    (same layout) and the number of rounds. Raises if ``max_rounds`` rounds did not converge.
    """
    inputs = first
    for round_no in range(1, max_rounds + 1):
        outs, large = run_wave(
            large_star, inputs, num_partitions, remote=remote, num_partitions=num_partitions
        )
        outs, small = run_wave(
            small_star,
            transpose(outs, num_partitions),
            num_partitions,
            remote=remote,
            num_partitions=num_partitions,
        )
        inputs = transpose(outs, num_partitions)
        if sum(s["changes"] for s in large) + sum(s["changes"] for s in small) == 0:
            return inputs, round_no
    raise RuntimeError(
        f"MinHash connected components did not converge in {max_rounds} large/small-star rounds"
    )


def clusters_from_edges(edges: pd.DataFrame, *, num_partitions: int = 1) -> pd.DataFrame:
    """Connected components of ``edges`` in-process (the distributed pass's steps, without Ray).

    One row per member with ``cluster_id`` (= the kept doc id), ``kept``, ``source_rank``, ``num_chars``
    and ``cluster_size``; the kept member is the best by source rank, then length, then id. The
    number of large/small-star rounds is in ``.attrs["rounds"]``.
    """
    if edges.empty:
        return pd.DataFrame({c: [] for c in CLUSTER_COLUMNS})
    ka, kb = edge_keys(edges)
    hi, lo = np.where(ka > kb, ka, kb), np.where(ka > kb, kb, ka)
    first = transpose([both_directions(hi, lo, num_partitions)], num_partitions)
    final, rounds = connected_components(first, num_partitions, remote=False)
    parts = [star_members(p)[0][0] for p in final]
    clusters = concat(parts, CLUSTER_COLUMNS + ["loc"])[CLUSTER_COLUMNS]
    clusters = clusters.sort_values(["cluster_id", "doc_id"]).reset_index(drop=True)
    clusters.attrs["rounds"] = rounds
    return clusters
