"""MinHash near-duplicate detection: clinray (Ray Data + datasketch) vs datatrove 0.10.1, same run.

A scaled tiny world (``clinray.synthetic.generate_world``) supplies documents with planted exact and
near duplicates (Jaccard in [0.88, 0.99] must go, in [0.40, 0.78] must stay). Its plain-text and JSONL
documents are written to JSONL shards that both pipelines read; both use 5-gram shingles and the same
LSH bands x rows (datasketch's choice for 0.85, recall-weighted). Reported per system: precision,
recall and F1 of the removed documents against the planted groups (a group of k copies should lose
k - 1; which copy stays does not matter), and documents/s of the whole pipeline (read, dedup, write the
kept documents; Ray's cluster start is outside the timing, datatrove's process pool start inside).
clinray is timed after a warm-up run on 400 documents in the same Ray session (a long-lived cluster;
``ours.warmup_wall_s``, and ``ratio_incl_warmup`` counts it against clinray). ``ratio`` = our
documents/s over datatrove's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def write_inputs(world: Path, out: Path, *, num_shards: int = 4) -> list[dict]:
    from clinray.data.text import normalize_text
    from clinray.synthetic.reading import plain_documents

    # normalized: what the curation pipeline's normalize stage hands to near-dup
    docs = [
        {"id": d["doc_id"], "text": normalize_text(d["text"]), "source": d["source"], "domain": d["domain"]}
        for d in plain_documents(world)
    ]
    out.mkdir(parents=True, exist_ok=True)
    for k in range(num_shards):
        with (out / f"part_{k:03d}.jsonl").open("w") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs[k::num_shards])
    return docs


def truth_groups(world: Path, present: set[str], threshold: float = 0.85) -> list[set[str]]:
    """Connected groups of planted duplicates (exact, and near at or above ``threshold``)."""
    manifest = json.loads((world / "manifest.json").read_text())
    pairs = [(e["doc_id"], e["duplicate_of"]) for e in manifest["exact_duplicates"]]
    pairs += [(n["doc_id"], n["original"]) for n in manifest["near_duplicates"] if n["jaccard"] >= threshold]
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        if a in present and b in present:
            parent[find(a)] = find(b)
    groups: dict[str, set[str]] = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return [g for g in groups.values() if len(g) > 1]


def score(removed: set[str], groups: list[set[str]]) -> dict:
    tp = sum(min(len(g & removed), len(g) - 1) for g in groups)
    expected = sum(len(g) - 1 for g in groups)
    precision = tp / len(removed) if removed else 1.0
    recall = tp / expected if expected else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "num_removed": len(removed),
        "num_should_remove": expected,
    }


def _working(batch):
    import pyarrow as pa

    n = batch.num_rows
    nulls = pa.nulls(n, pa.string())
    cols = {
        "id": batch["id"],
        "text": batch["text"],
        "source": batch["source"],
        "domain": batch["domain"],
        "format": pa.array(["jsonl"] * n),
        "metadata": nulls,
        "input_file": pa.array(["bench"] * n),
        "locator": nulls,
        "_reason": nulls,
        "_detail": nulls,
    }
    return pa.table(cols)


def _dedup(files: list[str], work: Path, *, limit: int | None = None) -> float:
    """Read the shards, near-dup them, write the kept documents; the wall time.

    One read task per shard (Ray's default cuts each 11 MB shard into a dozen blocks, which made the
    read alone take 1.3 s instead of 0.15 s), and Ray Data's per-operator reservation off, as
    ``run_curation`` runs its stages (``clinray.data.stage.shared_operator_resources``).
    """
    import ray

    from clinray.data.dedup_minhash import MinHashConfig, minhash_dedup
    from clinray.data.stage import shared_operator_resources

    cfg = MinHashConfig(num_partitions=4)
    start = time.perf_counter()
    with shared_operator_resources():
        ds = ray.data.read_json(files, override_num_blocks=len(files))
        if limit is not None:
            ds = ds.limit(limit)
        ds = ds.map_batches(_working, batch_format="pyarrow")
        kept = minhash_dedup(ds, cfg, sink_root=str(work / "accounting"))
        kept.drop_columns(["_reason", "_detail"]).write_parquet(str(work / "kept"))
    return time.perf_counter() - start


def run_ours(inputs: Path, work: Path) -> tuple[set[str], float, float, dict]:
    """``(removed ids, wall, cold wall, summary)``. A first run on 400 documents starts the Ray workers
    and imports datasketch in them (``cold wall``: that run's time); the timed run is the second, as on
    a long-lived cluster. datatrove forks its workers inside its own timing, by design."""
    import ray

    from clinray.data.stage import read_rejects

    files = sorted(str(p) for p in inputs.glob("*.jsonl"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        cold = _dedup(files[:1], work / "warmup", limit=400)
        wall = _dedup(files, work)
    finally:
        ray.shutdown()
    removed = {r for r in read_rejects(work / "accounting").column("id").to_pylist()}
    summary = json.loads((work / "accounting/details/minhash_summary.json").read_text())
    return removed, wall, cold, summary


def run_peer(inputs: Path, work: Path, *, bands: int, rows: int) -> tuple[set[str], float]:
    script = Path(__file__).resolve().parent / "peer_datatrove_minhash.py"
    cmd = [
        str(common.peer_python()),
        str(script),
        "--input",
        str(inputs),
        "--work",
        str(work),
        "--bands",
        str(bands),
        "--rows",
        str(rows),
        "--tasks",
        "2",
        "--workers",
        "2",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    data = json.loads(out)
    return set(data["removed"]), data["wall_s"]


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    from clinray.data.dedup_minhash import MinHashConfig
    from clinray.synthetic import generate_world

    scale = 10.0 if args.quick else 40.0
    cfg = MinHashConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_world(tmp / "world", seed=0, scale=scale)
        docs = write_inputs(tmp / "world", tmp / "inputs")
        groups = truth_groups(tmp / "world", {d["id"] for d in docs})
        ours_removed, ours_wall, ours_cold, summary = run_ours(tmp / "inputs", tmp / "ours")
        peer_removed, peer_wall = run_peer(tmp / "inputs", tmp / "peer", bands=cfg.bands, rows=cfg.rows)
    n = len(docs)
    ours = {
        **score(ours_removed, groups),
        "wall_s": round(ours_wall, 2),
        "docs_per_s": round(n / ours_wall, 1),
        "warmup_wall_s": round(ours_cold, 2),
    }
    peer = {
        **score(peer_removed, groups),
        "wall_s": round(peer_wall, 2),
        "docs_per_s": round(n / peer_wall, 1),
    }
    common.write_result(
        "dedup_minhash",
        {
            "quick": args.quick,
            "world_scale": scale,
            "num_documents": n,
            "num_words_mean": round(sum(len(d["text"].split()) for d in docs) / n, 1),
            "threshold": cfg.threshold,
            "num_perm": cfg.num_perm,
            "bands": cfg.bands,
            "rows": cfg.rows,
            "ours_f1": ours["f1"],
            "peer_f1": peer["f1"],
            "ours_docs_per_s": ours["docs_per_s"],
            "peer_docs_per_s": peer["docs_per_s"],
            "ratio": round(ours["docs_per_s"] / peer["docs_per_s"], 2),
            "ratio_incl_warmup": round(peer_wall / (ours_wall + ours_cold), 2),
            "ours": ours,
            "peer": {"name": "datatrove 0.10.1 MinHash (4 stages, 2 workers)", **peer},
            "ours_candidate_pairs": summary["num_candidate_pairs"],
            "ours_verified_pairs": summary["num_verified_pairs"],
        },
    )


if __name__ == "__main__":
    main()
