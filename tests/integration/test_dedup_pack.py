"""Near-dup, substring dedup, decontamination and packing on local Ray, checked against the world's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clinray.config import load
from clinray.data.blocks import block_files, read_block_manifest
from clinray.data.pipeline import CurateConfig, run_curation
from clinray.data.stage import read_rejects

ROOT = Path(__file__).resolve().parents[2]


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def curated(ray_local, world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("curate_c")
    cfg = load(
        CurateConfig,
        "tiny/curate",
        [
            f"input_root={world_dir / 'corpus'}",
            f"output.dir={out}",
            "output.overwrite=true",
            f"decontaminate.questions_root={world_dir / 'questions'}",
            "minhash.num_partitions=2",
        ],
    )
    result = run_curation(cfg)
    print(f"curation with near-dup, substring and decontamination: {result.wall_s:.1f} s")
    docs = {r["id"]: r for r in pq.read_table(result.docs_dir).to_pylist()}
    rejects = read_rejects(result.out_dir / "accounting").to_pylist()
    return result, docs, rejects


def test_near_duplicates_above_threshold_removed_below_kept(curated, world_manifest):
    result, docs, rejects = curated
    by_stage = {}
    for r in rejects:
        by_stage.setdefault(r["id"], r["stage"])
    earlier = {
        d
        for d, s in by_stage.items()
        if s not in ("minhash", "substring_400", "substring_100", "decontaminate")
    }
    removed = {r["id"] for r in rejects if r["stage"] == "minhash"}
    pairs = [n for n in world_manifest["near_duplicates"] if not {n["doc_id"], n["original"]} & earlier]
    high = [n for n in pairs if n["jaccard"] >= 0.85]
    low = [n for n in pairs if n["jaccard"] < 0.85]
    assert len(high) >= 5 and len(low) >= 5
    caught = [n for n in high if len({n["doc_id"], n["original"]} & removed) == 1]
    recall = len(caught) / len(high)
    planted = {n["doc_id"] for n in high} | {n["original"] for n in high}
    precision = len(removed & planted) / max(1, len(removed))
    print(
        f"near-dup on the world: precision {precision:.3f}, recall {recall:.3f} ({len(high)} pairs >= 0.85)"
    )
    assert recall == 1.0 and precision == 1.0
    for n in low:
        assert n["doc_id"] in docs and n["original"] in docs, n
    clusters = pq.read_table(result.out_dir / "accounting/details/minhash_clusters.parquet").to_pandas()
    assert set(clusters.loc[~clusters["kept"], "doc_id"]) == removed
    assert result.stages["minhash"].extra.get("cluster_size_2", 0) >= len(high)


def test_repeated_passages_removed_first_occurrence_kept(curated, world_manifest):
    result, docs, _ = curated
    final = {d: _squash(r["text"]) for d, r in docs.items()}
    num_kept = 0
    for p in world_manifest["repeated_passages"]:
        passage = _squash(p["text"])
        holders = sorted(d for d in p["doc_ids"] if d in final and passage in final[d])
        assert len(holders) <= 1, f"{p['passage_id']} survives in {holders}"
        survivors = sorted(d for d in p["doc_ids"] if d in final)
        if holders:
            assert holders == survivors[:1], f"{p['passage_id']}: kept in {holders}, first is {survivors[0]}"
            num_kept += 1
    assert num_kept >= len(world_manifest["repeated_passages"]) - 1
    passes = [result.stages[f"substring_{t}"] for t in (400, 100)]
    assert (
        sum(s.extra.get("num_bytes_removed", 0) for s in passes)
        >= sum(p["num_bytes"] * (len(p["doc_ids"]) - 1) for p in world_manifest["repeated_passages"]) * 0.8
    )


def test_contaminated_documents_caught_and_counted(curated, world_manifest):
    result, docs, rejects = curated
    planted = {c["doc_id"] for c in world_manifest["contaminated"]}
    caught = {r["id"] for r in rejects if r["stage"] == "decontaminate"}
    assert planted == caught and not planted & set(docs)
    extra = result.stages["decontaminate"].extra
    for bench in {c["benchmark"] for c in world_manifest["contaminated"]}:
        expected = len({c["doc_id"] for c in world_manifest["contaminated"] if c["benchmark"] == bench})
        assert extra[f"hits_{bench}"] == expected
    assert "decontaminate" in result.report_md.read_text()


def test_packed_blocks_have_context_length_and_manifest_counts(curated, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from clinray.data.pack import PackConfig, run_pack

    result, docs, _ = curated
    cfg = load(
        PackConfig,
        "tiny/pack",
        [
            f"input_dir={result.docs_dir}",
            f"output_dir={tmp_path / 'blocks'}",
            f"tokenizer={tiny_model_dir}",
            "seq_len=64",
        ],
    )
    manifest = run_pack(cfg).manifest
    assert read_block_manifest(tmp_path / "blocks") == manifest
    counted: dict[str, int] = {}
    for path in block_files(tmp_path / "blocks"):
        table = pq.read_table(path)
        assert table.schema.field("input_ids").type.value_type == "int32"
        lengths = np.array([len(x) for x in table["input_ids"].to_pylist()])
        assert (lengths == 64).all()
        for s in table["source"].to_pylist():
            counted[s] = counted.get(s, 0) + 64
    assert counted == manifest["tokens_per_source"]
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    clinical = sum(
        len(tok(d["text"], add_special_tokens=False)["input_ids"]) + 1
        for d in docs.values()
        if d["domain"] == "clinical"
    )
    plan = manifest["mixture"]["components"]
    assert plan["clinical"]["available_tokens"] == clinical == plan["clinical"]["selected_tokens"]
    for name, entry in plan.items():
        assert manifest["tokens_per_source"][name] + entry["tokens_dropped"] == entry["selected_tokens"]
        assert entry["tokens_dropped"] < 64
    ratio = plan["general"]["selected_tokens"] / plan["clinical"]["selected_tokens"]
    assert abs(ratio - 15 / 50) < 0.02
    assert json.loads((tmp_path / "blocks" / "manifest.json").read_text())["epochs"] == 4


def test_global_stages_run_the_upstream_once(ray_local, tmp_path):
    """MinHash and substring dedup each read one execution of what came before them: a stage that looks
    at the lazy dataset first (even ``ds.columns()``) would run parsing and its accounting twice."""
    import ray

    from clinray.data.dedup_minhash import MinHashConfig, minhash_dedup
    from clinray.data.dedup_substring import SubstringConfig, substring_dedup

    calls = tmp_path / "calls"
    calls.mkdir()

    def upstream(batch):
        import uuid

        (calls / uuid.uuid4().hex).touch()  # one file per execution of this block
        return batch

    rows = [
        {"id": f"d{i}", "text": f"document {i} " + " ".join(f"w{i}x{j}" for j in range(40)), "source": "s"}
        for i in range(40)
    ]
    for name, stage in (
        ("minhash", lambda ds: minhash_dedup(ds, MinHashConfig(), sink_root=str(tmp_path / "mh"))),
        ("substring", lambda ds: substring_dedup(ds, SubstringConfig(), sink_root=str(tmp_path / "ss"))),
    ):
        for f in calls.iterdir():
            f.unlink()
        ds = ray.data.from_items(rows, override_num_blocks=4).map_batches(upstream, batch_format="pyarrow")
        assert stage(ds).count() == len(rows), name
        assert len(list(calls.iterdir())) == 4, name  # each of the 4 blocks ran once


def test_batch_key_ignores_row_order():
    from clinray.data.stage import batch_key

    rows = [{"input_file": f"f{i}", "locator": None, "id": str(i)} for i in range(5)]
    assert batch_key(rows) == batch_key(list(reversed(rows))) != batch_key(rows[:4])
