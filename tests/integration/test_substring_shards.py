"""Exact-substring dedup across shards on local Ray: the tiny world's planted passages at 1, 4 and 14
shards. What is removed must not depend on the shard count (a repeat in two shards is found like one
inside a shard), shards are cut by bytes, and every shard task asks Ray for memory."""

from __future__ import annotations

import time

import pytest

from clinray.data import dedup_substring_shards as shards_module
from clinray.data.dedup_substring import SubstringConfig, substring_dedup
from clinray.data.dedup_substring_shards import node_memory, suffix_array_memory
from clinray.data.stage import collect_stats, rows_to_table
from clinray.data.timings import read_passes

SHARD_COUNTS = (1, 4, 14)


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def world_rows(world_dir, world_manifest):
    """The world's text and JSONL documents as the readers and normalization leave them (403 at scale 1,
    1.1 MB; each planted passage in 10 or 11 of them)."""
    from clinray.data.text import normalize_text
    from clinray.synthetic.reading import plain_documents

    return [
        {
            "id": d["doc_id"],
            "text": normalize_text(d["text"]),
            "source": d["source"],
            "domain": d["domain"],
            "format": d["format"],
            "input_file": d["path"],
            "locator": None if d["locator"] is None else str(d["locator"]),
        }
        for d in plain_documents(world_dir, world_manifest)
    ]


@pytest.fixture(scope="module")
def runs(ray_local, world_rows, tmp_path_factory):
    """The substring stage alone at each shard count: kept texts, stage stats and pass timings."""
    import ray

    table = rows_to_table(world_rows)
    out = {}
    for num in SHARD_COUNTS:
        start = time.perf_counter()
        sink = tmp_path_factory.mktemp(f"substring_{num}")
        ds = ray.data.from_arrow(table).repartition(3)  # several input blocks, as after MinHash
        cfg = SubstringConfig(num_shards=num, min_shard_bytes=1024)
        with pytest.MonkeyPatch.context() as mp:
            if num == SHARD_COUNTS[-1]:  # several hash partitions (fewer than shards), as at scale
                mp.setattr(shards_module, "PIECE_BYTES", 4096)
            kept = {r["id"]: r["text"] for r in substring_dedup(ds, cfg, sink_root=str(sink)).take_all()}
        passes = {(p["stage"], p["pass"]): p for p in read_passes(sink)}
        out[num] = kept, collect_stats(sink), passes
        print(f"substring stage, {num} shards: {time.perf_counter() - start:.1f} s")
    return out


def test_planted_passages_removed_everywhere_but_their_first_occurrence_at_any_shard_count(
    runs, world_rows, world_manifest
):
    before = {r["id"]: _squash(r["text"]) for r in world_rows}
    for num in SHARD_COUNTS:
        kept, _, passes = runs[num]
        assert passes[("substring_400", "shard")]["shards"] == num
        final = {d: _squash(t) for d, t in kept.items()}
        for p in world_manifest["repeated_passages"]:
            passage = _squash(p["text"])
            holders = sorted(d for d in p["doc_ids"] if d in before and passage in before[d])
            assert len(holders) >= 5, p["passage_id"]
            survivors = sorted(d for d in holders if d in final and passage in final[d])
            assert survivors == holders[:1], (num, p["passage_id"], survivors)


def test_the_same_bytes_are_removed_whatever_the_shard_count(runs):
    kept_1, stats_1, _ = runs[1]
    removed_1 = {s: stats_1[s].extra.get("num_bytes_removed", 0) for s in ("substring_400", "substring_100")}
    assert removed_1["substring_100"] > 10_000  # passages and repeated templated sentences
    for num in SHARD_COUNTS[1:]:
        kept, stats, passes = runs[num]
        assert kept == kept_1, num  # the very same texts, not only the same totals
        assert {s: stats[s].extra.get("num_bytes_removed", 0) for s in removed_1} == removed_1
        for s in removed_1:
            assert stats[s].num_rows_in == stats_1[s].num_rows_in and stats[s].balanced()
        # the repeats of other shards were there to find: cross marks did part of the work
        assert passes[("substring_100", "suffix_array")]["cross_mark_runs"] > 0
        assert passes[("substring_100", "contexts")]["context_bytes_shuffled"] > 0
    passes = runs[SHARD_COUNTS[-1]][2]  # the run with smaller pieces, so several hash partitions
    partitions = [passes[(s, p)]["partitions"] for s in removed_1 for p in ("fingerprints", "contexts")]
    assert any(1 < p < SHARD_COUNTS[-1] for p in partitions), partitions  # neither one nor one per shard


def test_shards_are_balanced_by_bytes_and_their_tasks_request_memory(runs):
    for num in SHARD_COUNTS:
        _, _, passes = runs[num]
        shard = passes[("substring_400", "shard")]
        assert shard["max_shard_bytes"] <= 1.3 * shard["text_bytes"] / num, shard
        for stage in ("substring_400", "substring_100"):
            timed = passes[(stage, "suffix_array")]
            assert timed["shards"] == num and timed["seconds"] >= 0
            # Ray reserved for the largest shard's task what the planner computes for its bytes
            expected = suffix_array_memory(timed["max_shard_bytes"], limit=node_memory())
            assert timed["memory_request_bytes"] == expected > 0
            if num > 1:
                for name in ("fingerprints", "contexts"):
                    assert passes[(stage, name)]["memory_request_bytes"] > 0
