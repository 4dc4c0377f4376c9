"""Curation end to end on the tiny world, on local Ray: planted corrupt inputs, duplicates, junk and the
accounting identities, checked against the world's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clinray.config import load
from clinray.data.pipeline import CurateConfig, run_curation
from clinray.data.stage import read_rejects

ROOT = Path(__file__).resolve().parents[2]
#: The world's corrupt-input kinds and the reject reason the readers must give each.
REASON_OF_KIND = {
    "truncated_xml": "xml_syntax_error",
    "truncated_gzip": "truncated_gzip",
    "binary": "binary",
    "non_utf8": "not_utf8",
    "empty": "empty_file",
    "bad_json_line": "bad_json",
}

#: This file checks the first half of the pipeline alone; the global stages after exact dedup (near-dup,
#: substring dedup, decontamination) have their own tests (test_dedup_pack.py).
GLOBAL_STAGE_KEYS = ("minhash", "substring", "decontaminate")
GLOBAL_STAGES_OFF = [f"{name}.enabled=false" for name in GLOBAL_STAGE_KEYS]


@pytest.fixture(scope="module")
def curated(ray_local, world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("curate")
    cfg = load(
        CurateConfig,
        "tiny/curate",
        [
            f"input_root={world_dir / 'corpus'}",
            f"output.dir={out}",
            "output.overwrite=true",
            *GLOBAL_STAGES_OFF,
        ],
    )
    result = run_curation(cfg)
    print(f"curation of the tiny world: {result.wall_s:.1f} s")
    docs = pq.read_table(result.docs_dir).to_pylist()
    rejects = read_rejects(result.out_dir / "accounting").to_pylist()
    return result, docs, rejects


def test_every_planted_corrupt_input_is_rejected_with_its_reason(curated, world_dir, world_manifest):
    _, _, rejects = curated
    assert world_manifest["corrupt"], "the world plants corrupt inputs"
    for corrupt in world_manifest["corrupt"]:
        path = str((world_dir / corrupt["path"]).resolve())
        found = [r for r in rejects if r["input_file"] == path and r["stage"] == "parse"]
        assert found, f"{corrupt} is not in the rejects"
        assert found[0]["reason"] == REASON_OF_KIND[corrupt["kind"]], (corrupt, found)
        if corrupt["locator"] is not None:
            assert found[0]["locator"] == str(corrupt["locator"])
    assert sum(r["stage"] == "parse" for r in rejects) == len(world_manifest["corrupt"])


def test_kept_documents_are_the_manifest_minus_duplicates_and_junk(curated, world_manifest):
    _, docs, rejects = curated
    kept = {d["id"] for d in docs}
    assert len(kept) == len(docs), "an id is kept twice"
    dups = {d["doc_id"]: d["duplicate_of"] for d in world_manifest["exact_duplicates"]}
    junk = set(world_manifest["junk"])
    expected = {d["doc_id"] for d in world_manifest["documents"]} - set(dups) - junk
    assert kept == expected
    by_id = {r["id"]: r for r in rejects}
    for doc_id, original in dups.items():  # the keep-one rule keeps exactly the manifest's original
        assert by_id[doc_id]["reason"] == "exact_duplicate" and original in kept
        assert by_id[doc_id]["detail"].startswith(f"duplicate of {original} ")
    assert all(by_id[j]["reason"] == "too_few_words" for j in junk)
    sample = next(d for d in docs if d["source"] == "pmc")
    assert (
        sample["domain"] == "clinical"
        and sample["format"] == "jats"
        and sample["input_file"].endswith(".nxml")
    )


def test_accounting_identities_hold_for_every_stage(curated, world_dir):
    result, docs, rejects = curated
    assert result.problems == []
    names = list(result.stages)
    assert names == ["parse", "normalize", "length_filter", "pii_filter", "exact_dedup"]
    previous_out = None
    for name in names:
        s = result.stages[name]
        assert s.num_rows_in == s.num_rows_out + sum(s.dropped.values()), name
        assert sum(r["stage"] == name for r in rejects) == s.num_dropped, name
        if previous_out is not None:
            assert s.num_rows_in == previous_out, name
        previous_out = s.num_rows_out
        assert s.num_batches >= 1 and s.busy_s >= 0
    assert result.num_docs == len(docs)
    files = [p for p in (world_dir / "corpus").rglob("*") if p.is_file()]
    num_files = len(files)
    extra = result.stages["parse"].extra
    assert extra["num_files_in"] == num_files
    assert extra["num_files_with_docs"] + extra["num_files_without_docs"] == num_files
    assert result.stages["parse"].num_bytes_in == sum(p.stat().st_size for p in files)


def test_reports_and_partitioned_output(curated):
    result, docs, _ = curated
    report = json.loads(result.report_json.read_text())
    assert report["identities_hold"] and report["num_docs_out"] == len(docs)
    assert report["stages"]["exact_dedup"]["dropped"]["exact_duplicate"] >= 1
    md = result.report_md.read_text()
    assert "| parse |" in md and "Every stage balances" in md and "xml_syntax_error" in md
    assert result.funnel_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in result.docs_dir.iterdir() if p.is_dir()} == {"domain=clinical", "domain=general"}
    assert (result.out_dir / "config.yaml").is_file()


def test_actor_pool_parsers_and_pii_redaction(ray_local, tmp_path):
    """The actor-pool parsing mode and PII redaction, on a few hand-made files (one of them corrupt)."""
    from clinray.config import from_dict

    src = tmp_path / "in"
    src.mkdir()
    words = " ".join(f"word{i}" for i in range(30))
    (src / "a.jsonl").write_text(
        json.dumps({"id": "n1", "text": f"Call 555-123-4567 or mail x@y.org. {words}"}) + "\n{broken\n"
    )
    (src / "b.txt").write_text(f"Patient MRN: 12345678 seen today. {words}")
    (src / "c.txt").write_bytes(b"\x00\x01binary")
    cfg = from_dict(
        CurateConfig,
        {
            "input_root": str(src),
            "inputs": [{"glob": "*", "source": "notes"}],
            "readers": {"compute": "actors", "concurrency": 1},
            "pii": {"mode": "redact"},
            "output": {"dir": str(tmp_path / "out"), "partition_cols": []},
            **{name: {"enabled": False} for name in GLOBAL_STAGE_KEYS},
        },
    )
    result = run_curation(cfg)
    texts = {d["id"]: d["text"] for d in pq.read_table(result.docs_dir).to_pylist()}
    assert texts["n1"].startswith("Call [PHONE] or mail [EMAIL].") and texts["b"].startswith(
        "Patient [MRN] seen"
    )
    assert result.stages["parse"].dropped == {"bad_json": 1, "binary": 1} and result.problems == []
    assert result.stages["pii_filter"].extra == {
        "num_redacted_phone": 1,
        "num_redacted_email": 1,
        "num_redacted_mrn": 1,
        "num_docs_redacted": 2,
    }


def test_row_stages_and_write_fuse_into_balanced_parse_calls(ray_local, world_dir, tmp_path):
    """Without a global stage, each parse call runs the row stages and writes its own Parquet file: the
    calls stay separate tasks (none bundled into one) and every call gets a mix of formats."""
    cfg = load(
        CurateConfig,
        "tiny/curate",
        [
            f"input_root={world_dir / 'corpus'}",
            f"output.dir={tmp_path / 'out'}",
            "output.partition_cols=[]",
            "exact_dedup.enabled=false",
            *GLOBAL_STAGES_OFF,
        ],
    )
    result = run_curation(cfg)
    assert result.problems == []
    parse = result.stages["parse"]
    assert parse.num_batches >= 4 * cfg.readers.concurrency
    assert result.stages["normalize"].num_batches == parse.num_batches  # run inside each parse call
    files = sorted(result.docs_dir.glob("*.parquet"))
    assert len(files) == parse.num_batches  # one file per call: no call was bundled with another
    assert sum(pq.read_metadata(f).num_rows for f in files) == result.num_docs
    formats = [set(pq.read_table(f, columns=["format"]).column("format").to_pylist()) for f in files]
    assert all(len(kinds) >= 3 for kinds in formats), formats


def test_stages_declare_their_columns_and_the_plan_checks_them_when_built(tmp_path):
    """No Ray: build_stages checks every stage's columns against what parse provides, before any run."""
    from clinray.config import from_dict
    from clinray.data.pipeline import build_stages, stage_names

    cfg = from_dict(
        CurateConfig,
        {
            "inputs": [{"glob": "*", "source": "notes"}],
            "decontaminate": {"questions_root": str(tmp_path), "action": "flag"},
            "output": {"dir": str(tmp_path / "out")},
        },
    )
    stages = build_stages(cfg)
    assert stage_names(stages) == [
        "normalize",
        "length_filter",
        "pii_filter",
        "exact_dedup",
        "minhash",
        "substring_400",
        "substring_100",
        "decontaminate",
    ]
    assert {s.names[0]: s.requires for s in stages}["decontaminate"] == ("text", "metadata")
    with pytest.raises(ValueError, match=r"stage 'exact_dedup' needs the column\(s\) \['source'\]"):
        build_stages(cfg, columns=["id", "text", "metadata"])
    with pytest.raises(ValueError, match=r"stage 'decontaminate' needs the column\(s\) \['metadata'\]"):
        build_stages(cfg, columns=["id", "text", "source"])


def test_a_parse_worker_killed_mid_call_loses_and_duplicates_nothing(curated, ray_local, world_dir, tmp_path):
    """One parser call's worker dies after its first file (``readers.fail_once_marker``); Ray retries the
    call, and the run keeps exactly the undisturbed run's documents with every accounting identity."""
    clean, clean_docs, clean_rejects = curated
    marker = tmp_path / "died"
    cfg = load(
        CurateConfig,
        "tiny/curate",
        [
            f"input_root={world_dir / 'corpus'}",
            f"output.dir={tmp_path / 'out'}",
            f"readers.fail_once_marker={marker}",
            *GLOBAL_STAGES_OFF,
        ],
    )
    result = run_curation(cfg)
    assert marker.is_file(), "no parse worker was killed"
    assert result.problems == []
    docs = pq.read_table(result.docs_dir).to_pylist()
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)), "a retried call duplicated documents"
    assert sorted(ids) == sorted(d["id"] for d in clean_docs), "documents lost or added"
    rejects = read_rejects(result.out_dir / "accounting").to_pylist()
    assert sorted((r["stage"], r["reason"]) for r in rejects) == sorted(
        (r["stage"], r["reason"]) for r in clean_rejects
    )
    for name, s in result.stages.items():
        assert s.num_rows_in == s.num_rows_out + sum(s.dropped.values()), name
        assert (s.num_rows_in, s.num_rows_out, s.dropped) == (
            clean.stages[name].num_rows_in,
            clean.stages[name].num_rows_out,
            clean.stages[name].dropped,
        ), name
