"""MinHash LSH near-dup, in-process (no Ray): parameters, partition sizing, star edges, connected
components (the distributed pass's steps, run here without Ray), and the world's planted pairs."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from clinray.data.dedup_minhash import (
    BAND_ROW_BYTES,
    MinHashConfig,
    Signer,
    clusters_from_edges,
    edges_from_partition,
    effective_threshold,
    filter_edges,
    graph_partitions,
    plan_partitions,
    shingle_hashes,
)
from clinray.data.dedup_minhash_graph import key_fields, node_keys
from clinray.data.sizing import MIN_SHUFFLE_PIECE, GiB


def test_default_parameters_follow_datasketch_for_085():
    cfg = MinHashConfig()
    assert cfg.bands * cfg.rows <= cfg.num_perm
    assert 0.75 < cfg.effective_threshold < 0.85  # recall-weighted: verification removes the false positives
    s = 0.88  # lowest planted "must remove" Jaccard: candidate probability stays high
    assert 1 - (1 - s**cfg.rows) ** cfg.bands > 0.95


def test_paper_preset_uses_literal_numbers_and_warns():
    cfg = MinHashConfig(preset="paper")
    assert (cfg.num_perm, cfg.bands, cfg.rows) == (9000, 15, 400)
    assert cfg.effective_threshold > 0.99
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("clinray.data.dedup_minhash")
    log.addHandler(handler)
    try:
        cfg.warn_if_off_threshold()
        MinHashConfig().warn_if_off_threshold()  # the default is near 0.85: silent
    finally:
        log.removeHandler(handler)
    assert len(records) == 1 and "effective Jaccard threshold of 0.993" in records[0].getMessage()


def test_bad_configs_are_actionable():
    with pytest.raises(ValueError, match="fit in num_perm"):
        MinHashConfig(num_perm=64, bands=10, rows=10)
    with pytest.raises(ValueError, match="both"):
        MinHashConfig(bands=4)
    with pytest.raises(ValueError, match="threshold"):
        MinHashConfig(threshold=1.5)
    assert effective_threshold(20, 20) == pytest.approx((1 / 20) ** (1 / 20))


def test_bucket_gives_star_edges_from_best_ranked_member():
    rows = pd.DataFrame(
        {
            "band_key": [7, 7, 7, 7, 9, 9, 11],
            "doc_id": ["d", "c", "b", "a", "x", "y", "z"],
            "source_rank": [5, 0, 0, 1, 2, 2, 0],
            "num_chars": [10, 50, 80, 90, 5, 5, 1],
        }
    )
    edges = edges_from_partition(rows)
    pairs = set(zip(edges["a"], edges["b"]))
    assert pairs == {("b", "c"), ("b", "a"), ("b", "d"), ("x", "y")}  # k-1 edges per bucket, no singleton


def test_clusters_keep_one_by_priority_then_length_then_id():
    edges = pd.DataFrame(
        {
            "a": ["p", "q", "s"],
            "b": ["q", "r", "t"],
            "a_rank": [2, 0, 1],
            "a_chars": [10, 5, 7],
            "b_rank": [0, 0, 1],
            "b_chars": [5, 9, 7],
        }
    )
    clusters = clusters_from_edges(edges)
    kept = dict(zip(clusters["doc_id"], clusters["cluster_id"]))
    assert kept == {"p": "r", "q": "r", "r": "r", "s": "s", "t": "s"}
    assert sorted(clusters.drop_duplicates("cluster_id")["cluster_size"]) == [2, 3]


def _plain_docs(world_dir, manifest) -> pd.DataFrame:
    from clinray.synthetic.reading import plain_documents

    rows = [
        {"id": d["doc_id"], "text": d["text"], "source": d["source"]}
        for d in plain_documents(world_dir, manifest)
    ]
    return pd.DataFrame(rows)


def test_world_near_duplicates_precision_recall(world_dir, world_manifest):
    docs = _plain_docs(world_dir, world_manifest)
    cfg = MinHashConfig()
    edges = edges_from_partition(Signer(cfg).band_rows(docs))
    table = {i: shingle_hashes(t, cfg.ngram) for i, t in zip(docs["id"], docs["text"])}
    clusters = clusters_from_edges(filter_edges(edges, table, threshold=cfg.threshold))
    cluster_of = dict(zip(clusters["doc_id"], clusters["cluster_id"]))
    present = set(docs["id"])
    high = [(n["doc_id"], n["original"]) for n in world_manifest["near_duplicates"] if n["jaccard"] >= 0.85]
    low = [(n["doc_id"], n["original"]) for n in world_manifest["near_duplicates"] if n["jaccard"] < 0.85]
    exact = [(e["doc_id"], e["duplicate_of"]) for e in world_manifest["exact_duplicates"]]
    high, low, exact = ([p for p in ps if set(p) <= present] for ps in (high, low, exact))
    assert len(high) >= 5 and len(low) >= 5

    def same(p):
        return p[0] in cluster_of and cluster_of[p[0]] == cluster_of.get(p[1])

    recall = sum(map(same, high)) / len(high)
    true_pairs = {frozenset(p) for p in high + exact}
    predicted = [
        frozenset((d, c))
        for d, c, k in zip(clusters["doc_id"], clusters["cluster_id"], clusters["kept"])
        if not k
    ]
    precision = sum(p in true_pairs for p in predicted) / max(1, len(predicted))
    print(f"near-dup precision={precision:.3f} recall={recall:.3f} on {len(high)} planted pairs >= 0.85")
    assert recall == 1.0 and precision == 1.0
    assert not any(map(same, low))  # planted pairs in [0.40, 0.78] are kept apart


def test_band_partitions_follow_the_input_and_the_cluster():
    """The count the stage computes from the materialized input's rows: 1 MB and 50 MB of the tiny
    world's 2.8 KB documents differ on one CPU; more CPUs raise it; a config value overrides it."""
    cfg, doc_bytes = MinHashConfig(), 2800
    small = plan_partitions(1_000_000 // doc_bytes, 1_000_000, cfg, cpus=1)
    large = plan_partitions(50_000_000 // doc_bytes, 50_000_000, cfg, cpus=1)
    assert large.band_bytes == (50_000_000 // doc_bytes) * cfg.bands * BAND_ROW_BYTES
    assert small.band_partitions == 1 < large.band_partitions
    assert plan_partitions(357, 1_000_000, cfg, cpus=8).band_partitions == 8  # every core gets a reducer
    assert plan_partitions(17_857, 50_000_000, MinHashConfig(num_partitions=3), cpus=8).band_partitions == 3
    assert plan_partitions(357, 1_000_000, MinHashConfig(num_partitions=0), cpus=2).band_partitions == 2
    paper = plan_partitions(50_000_000, 200 * 10**9, cfg, cpus=600)  # the paper's corpus on ~600 cores
    assert 2_000 < paper.band_partitions < 5_000, paper
    with pytest.raises(ValueError, match="num_partitions must be >= 0"):
        MinHashConfig(num_partitions=-1)


def test_graph_shuffles_never_cut_pieces_small_enough_to_land_on_the_driver():
    assert graph_partitions(100_000, 100_000, cpus=64) == 1
    for edge_bytes, work_bytes in ((50 * 2**20, 80 * 2**20), (2 * GiB, 30 * GiB)):
        n = graph_partitions(edge_bytes, work_bytes, cpus=600)
        assert n > 1 and n * n * MIN_SHUFFLE_PIECE <= edge_bytes, n


def test_node_keys_sort_in_keep_one_order_and_decode():
    ranks, chars = [1, 0, 0, 0, 0, 0], [900, 10, 50, 50, 50, 50]
    ids, locs = ["z", "y", "ab", "a!", "a", "a"], [0, 1, 2, 3, (5 << 32) | 7, 4]
    keys = node_keys(ranks, chars, ids, locs)
    order = [int(i) for i in np.argsort(keys, kind="stable")]
    expected = sorted(range(6), key=lambda i: (ranks[i], -chars[i], ids[i], locs[i]))
    assert order == expected  # the id "a" sorts before "a!" although "!" < the address digits
    fields = key_fields(keys)
    assert fields["doc_id"].tolist() == ids and fields["loc"].tolist() == locs
    assert fields["source_rank"].tolist() == ranks and fields["num_chars"].tolist() == chars


def _union_find_clusters(edges: pd.DataFrame) -> pd.DataFrame:
    """The reference: the former driver-side union-find with the same keep-one rule."""
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
        rows += [(keep, d, d == keep, *info[d], len(group)) for d in group]
    cols = ["cluster_id", "doc_id", "kept", "source_rank", "num_chars", "cluster_size"]
    return pd.DataFrame(rows, columns=cols).sort_values(["cluster_id", "doc_id"]).reset_index(drop=True)


def _graph(seed: int) -> pd.DataFrame:
    """Random sparse edges, a 300-node path in shuffled key order (many rounds), and a 40-leaf star."""
    rng = np.random.default_rng(seed)
    n = 900
    rank, chars = rng.integers(0, 3, n), rng.integers(100, 120, n)  # many ties: the id decides
    pairs = [tuple(rng.choice(300, 2, replace=False)) for _ in range(150)]
    path = rng.permutation(np.arange(300, 600))
    pairs += list(zip(path[:-1], path[1:]))
    pairs += [(600, 601 + i) for i in range(40)]
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    ids = np.array([f"n{i:04d}" for i in range(n)], dtype=object)
    return pd.DataFrame(
        {
            "a": ids[a],
            "b": ids[b],
            "a_rank": rank[a],
            "a_chars": chars[a],
            "b_rank": rank[b],
            "b_chars": chars[b],
        }
    )


def test_components_match_union_find_whatever_the_partitions():
    edges = _graph(0)
    expected = _union_find_clusters(edges)
    for num_partitions in (1, 3):
        got = clusters_from_edges(edges, num_partitions=num_partitions)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        rounds = got.attrs["rounds"]
        assert 2 < rounds <= 2 * np.log2(len(edges)), rounds  # the path needs several rounds, about log2 n
