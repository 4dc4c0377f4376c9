"""MinHash at a larger scale on local Ray: no per-document state on the driver.

The documents are generated inside Ray tasks (the driver never holds them), half of them planted
near-duplicates of the other half; the driver's RSS is sampled while the stage runs.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NUM_WORDS, VOCAB = 60, 20_000
#: 8 bands of 4 of 32 hashes: a pair at Jaccard 55/57 is missed with probability ~1e-7 (datasketch's
#: choice for 32 hashes, 5 x 6, misses ~3e-4 of them: a few of 25k pairs).
BANDS, ROWS = 8, 4


def _run(ray, tmp_path, num_pairs: int) -> tuple[int, dict, object]:
    from clinray.data.dedup_minhash import MinHashConfig, MinHashStage
    from clinray.data.stage import collect_stats, shared_operator_resources
    from clinray.data.tasks import PeakRSS

    def planted_pairs(batch: pd.DataFrame) -> pd.DataFrame:
        """Pair ``i`` -> an original of 60 random words and its copy with the last word replaced
        (Jaccard 55/57 of 5-gram shingles); random texts share no shingle with each other. A closure,
        so that Ray ships it by value (workers cannot import test modules)."""
        ids, texts = [], []
        for i in batch["id"]:
            words = [f"w{j}" for j in np.random.default_rng(int(i)).integers(0, VOCAB, NUM_WORDS)]
            ids += [f"d{i:07d}a", f"d{i:07d}b"]
            texts += [" ".join(words), " ".join([*words[:-1], f"changed{i}"])]
        return pd.DataFrame({"id": ids, "text": texts, "source": ["pmc"] * len(ids)})

    sink = tmp_path / f"pairs_{num_pairs}"
    ds = ray.data.range(num_pairs, override_num_blocks=8).map_batches(planted_pairs, batch_format="pandas")
    with shared_operator_resources(), PeakRSS() as rss:
        out = MinHashStage(MinHashConfig(num_perm=32, bands=BANDS, rows=ROWS), sink_root=str(sink)).apply(ds)
        assert out.count() == num_pairs
    summary = json.loads((sink / "details/minhash_summary.json").read_text())
    return rss.max, summary, collect_stats(sink)["minhash"]


def test_driver_memory_does_not_grow_with_the_near_duplicates(ray_local, tmp_path):
    """5k -> 50k planted near-duplicate documents: every copy is removed, and the driver's peak RSS
    grows by under 50 MB (it holds object references and counts, never edges, hashes or clusters)."""
    _run(ray_local, tmp_path, 250)  # warm-up: first-use allocations of Ray Data and the stage
    peaks = {}
    for num_pairs in (2_500, 25_000):
        peaks[num_pairs], summary, stats = _run(ray_local, tmp_path, num_pairs)
        assert summary["num_clusters"] == summary["num_removed"] == num_pairs, summary
        assert stats.num_rows_in == 2 * num_pairs and stats.dropped == {"near_duplicate": num_pairs}
        assert stats.extra == {"num_clusters": num_pairs, "cluster_size_2": num_pairs}
    growth = peaks[25_000] - peaks[2_500]
    print(
        f"driver peak RSS: {peaks[2_500] / 2**20:.0f} MB at 5k near-dup docs, "
        f"{peaks[25_000] / 2**20:.0f} MB at 50k (growth {growth / 2**20:+.1f} MB)"
    )
    assert growth < 50 * 2**20
