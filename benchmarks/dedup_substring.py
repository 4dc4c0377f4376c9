"""Exact-substring dedup (suffix array, 400 then 100 bytes): MB/s, peak memory per input byte, planted repeats.

A scaled tiny world supplies documents with planted repeated passages (100 to 500 bytes, inserted in
many documents; the manifest names each passage's first document). Its plain-text and JSONL documents,
normalized and sorted by id, form one shard; the two passes of :func:`remove_repeats` run in this
process, timed, with peak memory from ``tracemalloc`` (numpy and pydivsufsort's arrays are traced).
After the timed passes, the changed documents are checked for seam fragments (output words that are no
word of the input: removal cuts on word boundaries, so the count should be 0).
No peer: Lee et al.'s Rust tool (which datatrove's ES stages also need) is not installable offline;
the figures are absolute, with the memory model of ``clinray/data/dedup_substring.py`` to check.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def load_docs(world: Path) -> dict[str, str]:
    from clinray.data.text import normalize_text
    from clinray.synthetic.reading import plain_documents

    return {d["doc_id"]: normalize_text(d["text"]) for d in plain_documents(world)}


def planted_share(manifest: dict, before: dict[str, str], after: dict[str, str]) -> dict:
    """Share of planted repeat occurrences removed, and of first occurrences kept."""
    repeats = removed = firsts = firsts_kept = 0
    for p in manifest["repeated_passages"]:
        passage = " ".join(p["text"].split())
        holders = sorted(d for d in p["doc_ids"] if d in before and passage in " ".join(before[d].split()))
        if not holders:
            continue
        firsts += 1
        firsts_kept += passage in " ".join(after[holders[0]].split())
        for d in holders[1:]:
            repeats += 1
            removed += passage not in " ".join(after[d].split())
    return {
        "num_planted_repeats": repeats,
        "share_planted_repeats_removed": round(removed / max(1, repeats), 4),
        "num_first_occurrences": firsts,
        "share_first_occurrences_kept": round(firsts_kept / max(1, firsts), 4),
    }


def seam_fragments(before: dict[str, str], after: dict[str, str]) -> dict:
    """Words of the changed documents that are no word of their input (a cut inside a word): want 0."""
    from clinray.data.text import word_tokens

    changed = [d for d in before if after[d] != before[d]]
    fragments = sum(len(set(word_tokens(after[d])) - set(word_tokens(before[d]))) for d in changed)
    return {"num_docs_changed": len(changed), "num_seam_fragments": fragments}


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    from clinray.data.dedup_substring import remove_repeats
    from clinray.synthetic import generate_world

    scale = 10.0 if args.quick else 100.0
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_world(Path(tmp) / "world", seed=0, scale=scale)
        docs = load_docs(Path(tmp) / "world")
    ids = sorted(docs)
    texts = [docs[i] for i in ids]
    passes = {}
    for min_len in (400, 100):
        num_bytes = sum(len(t.encode()) for t in texts)
        # Peak memory from a traced run, speed from an untraced one: tracemalloc slows every Python
        # allocation, so a traced timing would charge code by its object count, not its work.
        tracemalloc.start()
        remove_repeats(texts, min_len=min_len)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        start = time.perf_counter()
        texts, removed = remove_repeats(texts, min_len=min_len)
        wall = time.perf_counter() - start
        passes[min_len] = {
            "input_mb": round(num_bytes / 1e6, 2),
            "wall_s": round(wall, 2),
            "mb_per_s": round(num_bytes / 1e6 / wall, 2),
            "peak_mb": round(peak / 1e6, 1),
            "peak_bytes_per_input_byte": round(peak / num_bytes, 1),
            "bytes_removed": int(sum(removed)),
            "docs_modified": int(sum(1 for r in removed if r)),
        }
    share = planted_share(manifest, docs, dict(zip(ids, texts)))
    share.update(seam_fragments(docs, dict(zip(ids, texts))))
    common.write_result(
        "dedup_substring",
        {
            "quick": args.quick,
            "world_scale": scale,
            "num_documents": len(ids),
            "pass_400_mb_per_s": passes[400]["mb_per_s"],
            "pass_100_mb_per_s": passes[100]["mb_per_s"],
            "peak_bytes_per_input_byte": max(p["peak_bytes_per_input_byte"] for p in passes.values()),
            **share,
            "passes": passes,
        },
    )


if __name__ == "__main__":
    main()
