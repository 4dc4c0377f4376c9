"""Near-dup, substring dedup, decontamination and packing on local Ray, checked against the world's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clinray.config import load
from clinray.data.blocks import block_files, read_block_manifest
from clinray.data.decontaminate import parse_hits
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
    for s in passes:  # the counter is the true difference: seams and normalization included
        assert not s.dropped and s.num_bytes_in - s.num_bytes_out == s.extra.get("num_bytes_removed", 0), (
            s.stage
        )


def test_contaminated_documents_caught_and_counted(curated, world_dir, world_manifest):
    result, docs, rejects = curated
    planted = {c["doc_id"] for c in world_manifest["contaminated"]}
    caught = {r["id"] for r in rejects if r["stage"] == "decontaminate"}
    assert planted == caught and not planted & set(docs)
    extra = result.stages["decontaminate"].extra
    for bench in {c["benchmark"] for c in world_manifest["contaminated"]}:
        expected = len({c["doc_id"] for c in world_manifest["contaminated"] if c["benchmark"] == bench})
        assert extra[f"hits_{bench}"] == expected
    assert "decontaminate" in result.report_md.read_text()
    # each removed document names, per benchmark, question ids that load_questions (and evaluation) use
    questions = {}
    for c in world_manifest["contaminated"]:
        questions.setdefault(c["doc_id"], set()).add(c["benchmark"])
    for r in rejects:
        if r["stage"] == "decontaminate":
            named = parse_hits(r["detail"])
            assert questions[r["id"]] <= set(named), r["detail"]
            for bench, qids in named.items():
                assert set(qids) <= set(_question_ids(world_dir, bench)), r["detail"]
    report = json.loads(result.report_json.read_text())["contamination"]
    assert {b: e["num_docs"] for b, e in report.items()} == {
        k[len("hits_") :]: v for k, v in extra.items() if k.startswith("hits_")
    }
    assert "## Contamination" in result.report_md.read_text()
    # the index's own counts (zeros are left out of the stage details): no tiny-world 13-gram is template
    assert extra["index_questions_medqa"] == 100 and "index_num_templates" not in extra
    summary = json.loads((result.out_dir / "accounting/details/decontaminate_summary.json").read_text())
    assert summary["rule"] == {"common_ngram_min_questions": 3, "min_distinct_ngrams": 2, "min_share": 0.25}


def _question_ids(world_dir, bench: str) -> list[str]:
    from clinray.data.decontaminate import load_questions

    return [qid for qid, _ in load_questions(world_dir / "questions", bench)]


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


def test_real_pmc_articles_curated_without_seam_fragments(ray_local, shared_data, tmp_path):
    """The three real PMC articles through the full curation: every word of the output is a whole word of
    the article the readers parsed (a 40-byte pass besides the paper's two, to cut many more seams)."""
    from clinray.config import from_dict
    from clinray.data.normalize import normalize_document_text
    from clinray.data.readers import InputSpec, ReadersConfig, parse_file
    from clinray.data.text import word_tokens

    spec = {"glob": "pmc/*.nxml", "source": "pmc", "domain": "clinical", "format": "jats"}
    cfg = from_dict(
        CurateConfig,
        {
            "input_root": str(shared_data),
            "inputs": [spec],
            "substring": {"thresholds": [400, 100, 40]},
            "decontaminate": {"enabled": False},
            "output": {"dir": str(tmp_path / "out"), "partition_cols": []},
        },
    )
    result = run_curation(cfg)
    assert result.problems == []
    parsed = {
        r["id"]: normalize_document_text(r["text"])
        for p in sorted((shared_data / "pmc").glob("*.nxml"))
        for r in parse_file(str(p), spec=InputSpec(**spec), cfg=ReadersConfig())
    }
    docs = {d["id"]: d["text"] for d in pq.read_table(result.docs_dir).to_pylist()}
    assert set(docs) == set(parsed) and len(docs) == 3
    removed = [result.stages[f"substring_{t}"].extra.get("num_bytes_removed", 0) for t in (400, 100, 40)]
    assert removed[1] > 0 and removed[2] > 1000, removed
    for doc_id, text in docs.items():
        words = set(word_tokens(parsed[doc_id]))
        assert set(word_tokens(text)) <= words, sorted(set(word_tokens(text)) - words)


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
