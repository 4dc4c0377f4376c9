"""MinHash LSH near-dup, in-process (no Ray): parameters, star edges, clusters, and the world's planted pairs."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from clinray.data.dedup_minhash import (
    MinHashConfig,
    Signer,
    clusters_from_edges,
    edges_from_partition,
    effective_threshold,
    filter_edges,
    shingle_hashes,
)


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
