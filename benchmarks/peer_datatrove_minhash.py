"""Peer side of benchmarks/dedup_minhash.py: datatrove 0.10.1's four-stage MinHash dedup (run in .venv-peer).

Reads the same JSONL shards, uses the same 5-gram shingles and the same LSH bands x rows, runs the
signature, bucket, cluster and filter stages with datatrove's LocalPipelineExecutor, and prints one JSON
line: the removed document ids and the wall time of the whole pipeline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--bands", type=int, required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    work = Path(a.work)
    cfg = MinhashConfig(n_grams=5, num_buckets=a.bands, hashes_per_bucket=a.rows, seed=1)

    def reader():
        return JsonlReader(a.input, glob_pattern="*.jsonl", text_key="text", id_key="id")

    common = {"workers": a.workers, "skip_completed": False}
    start = time.perf_counter()
    stage1 = LocalPipelineExecutor(
        pipeline=[reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
        tasks=a.tasks,
        logging_dir=str(work / "logs/sigs"),
        **common,
    )
    stage2 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupBuckets(
                input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg
            )
        ],
        tasks=a.bands,
        logging_dir=str(work / "logs/buckets"),
        depends=stage1,
        **common,
    )
    stage3 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupCluster(
                input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=cfg
            )
        ],
        tasks=1,
        logging_dir=str(work / "logs/clusters"),
        depends=stage2,
        **common,
    )
    stage4 = LocalPipelineExecutor(
        pipeline=[
            reader(),
            MinhashDedupFilter(
                input_folder=str(work / "remove"), exclusion_writer=JsonlWriter(str(work / "removed"))
            ),
            JsonlWriter(str(work / "kept")),
        ],
        tasks=a.tasks,
        logging_dir=str(work / "logs/filter"),
        depends=stage3,
        **common,
    )
    stage4.run()
    wall = time.perf_counter() - start
    removed = []
    import gzip

    for path in sorted((work / "removed").glob("*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            removed += [json.loads(line)["id"] for line in f if line.strip()]
    print(json.dumps({"wall_s": wall, "removed": removed}))


if __name__ == "__main__":
    main()
