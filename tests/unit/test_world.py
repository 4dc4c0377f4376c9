"""The tiny world keeps its promises: determinism, a truthful manifest, learnable facts, sane questions."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from lxml import etree

from clinray.data.text import jaccard, normalize_text, shingles, word_tokens
from clinray.models.chat_template import ANSWER_PREFIX, COT_PREFIX, MCQ_SYSTEM_PROMPT
from clinray.synthetic import WorldConfig, generate_world
from clinray.synthetic.kb import RELATION_TEMPLATES

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _raw(world: Path, entry: dict) -> str:
    """The record's raw text: whole file for one-document files, the JSON ``text`` for JSONL, the citation for MEDLINE."""
    path = world / entry["path"]
    if entry["format"] == "jsonl":
        return json.loads(path.read_text(encoding="utf-8").split("\n")[entry["locator"] - 1])["text"]
    if entry["format"] == "medline":
        root = etree.fromstring(gzip.decompress(path.read_bytes()))
        (cit,) = root.xpath(f"MedlineCitation[PMID='{entry['locator']}']")
        return " ".join(cit.itertext())
    if entry["format"] == "jats":
        return " ".join(etree.parse(str(path)).getroot().itertext())
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def texts(world_dir, world_manifest) -> dict[str, str]:
    return {d["doc_id"]: _raw(world_dir, d) for d in world_manifest["documents"]}


def test_same_seed_same_bytes(world_dir, tmp_path):
    generate_world(tmp_path / "again", seed=0, scale=1.0)
    assert _tree(tmp_path / "again") == _tree(world_dir)


def test_layout_and_documents(world_dir, world_manifest):
    m = world_manifest
    for rel in (
        "kb/facts.jsonl",
        "sft/train.jsonl",
        "questions/medqa/test.jsonl",
        "questions/medqa_5/train.jsonl",
        "questions/medmcqa/dev.json",
        "questions/pubmedqa/ori_pqal.json",
        "questions/mmlu/test/anatomy_test.csv",
    ):
        assert (world_dir / rel).is_file(), rel
    ids = [d["doc_id"] for d in m["documents"]]
    assert len(ids) == len(set(ids))
    assert {d["format"] for d in m["documents"]} == {"html", "jats", "medline", "text", "jsonl"}
    for d in m["documents"]:
        assert (world_dir / d["path"]).is_file()
        assert d["domain"] == d["path"].split("/")[1]
    assert m["counts"]["num_documents"] == len(ids)
    assert 0.8e6 < m["counts"]["num_corpus_bytes"] < 4e6


def test_num_words_match_text(world_manifest, texts):
    for d in world_manifest["documents"]:
        if d["format"] in ("text", "jsonl"):
            assert d["num_words"] == len(word_tokens(texts[d["doc_id"]])), d


def test_near_duplicates_measured_and_banded(world_manifest, texts):
    near = world_manifest["near_duplicates"]
    bands = Counter()
    for n in near:
        j = jaccard(shingles(texts[n["original"]], 5), shingles(texts[n["doc_id"]], 5))
        assert j == pytest.approx(n["jaccard"], abs=1e-6)
        assert 0.88 <= j <= 0.99 or 0.40 <= j <= 0.78, n
        bands["high" if j >= 0.88 else "low"] += 1
        assert len(texts[n["original"]].split()) >= 300
    assert bands["high"] >= 4 and bands["low"] >= 4


def test_exact_duplicates_equal_after_normalization(world_manifest, texts):
    dups = world_manifest["exact_duplicates"]
    assert dups
    for d in dups:
        assert texts[d["doc_id"]] != texts[d["duplicate_of"]]
        assert normalize_text(texts[d["doc_id"]]) == normalize_text(texts[d["duplicate_of"]])


def test_repeated_passages_where_listed_and_nowhere_else(world_manifest, texts):
    for p in world_manifest["repeated_passages"]:
        assert 100 <= p["num_bytes"] <= 500 and p["num_bytes"] == len(p["text"].encode())
        holders = sorted(doc_id for doc_id, text in texts.items() if p["text"] in text)
        assert holders == p["doc_ids"] and len(holders) >= 5
        assert p["first_doc_id"] == min(p["doc_ids"])


def test_junk_and_contamination(world_manifest, texts):
    assert world_manifest["junk"]
    by_id = {d["doc_id"]: d for d in world_manifest["documents"]}
    for doc_id in world_manifest["junk"]:
        assert by_id[doc_id]["num_words"] < 20
    questions = {q["id"]: q for q in world_manifest["questions"]}
    assert world_manifest["contaminated"]
    for c in world_manifest["contaminated"]:
        assert questions[c["question_id"]]["split"] == "test"
        assert questions[c["question_id"]]["question"] in texts[c["doc_id"]]


def test_corrupt_inputs_really_fail(world_dir, world_manifest):
    kinds = Counter()
    for c in world_manifest["corrupt"]:
        data = (world_dir / c["path"]).read_bytes()
        kinds[c["kind"]] += 1
        if c["kind"] == "truncated_xml":
            with pytest.raises(etree.XMLSyntaxError):
                etree.fromstring(data)
        elif c["kind"] == "truncated_gzip":
            with pytest.raises((EOFError, gzip.BadGzipFile)):
                gzip.decompress(data)
        elif c["kind"] in ("binary", "non_utf8"):
            with pytest.raises(UnicodeDecodeError):
                data.decode("utf-8")
        elif c["kind"] == "empty":
            assert data == b""
        else:
            assert c["kind"] == "bad_json_line"
            with pytest.raises(json.JSONDecodeError):
                json.loads(data.decode().split("\n")[c["locator"] - 1])
    assert set(kinds) == {"truncated_xml", "truncated_gzip", "binary", "non_utf8", "empty", "bad_json_line"}
    paths = {d["path"] for d in world_manifest["documents"]}
    assert not {c["path"] for c in world_manifest["corrupt"] if c["kind"] != "bad_json_line"} & paths


def test_well_formed_files_parse_with_ids(world_dir, world_manifest):
    for d in world_manifest["documents"]:
        if d["format"] == "jats":
            meta = etree.parse(str(world_dir / d["path"])).getroot()
            assert "PMC" + meta.findtext(".//article-id[@pub-id-type='pmc']") == d["doc_id"]
        elif d["format"] == "jsonl":
            line = (world_dir / d["path"]).read_text().split("\n")[d["locator"] - 1]
            assert json.loads(line)["id"] == d["doc_id"]
        elif d["format"] in ("html", "text"):
            assert Path(d["path"]).stem == d["doc_id"]
    assert "&#x003bb;" in next((world_dir / "corpus/clinical/jats").glob("*.nxml")).read_text()


def test_every_fact_stated_six_times_in_five_paraphrases(world_dir, world_manifest, texts):
    facts = [json.loads(line) for line in (world_dir / "kb/facts.jsonl").read_text().splitlines()]
    assert len(facts) >= 200
    by_format: dict[str, list[str]] = {}
    for d in world_manifest["documents"]:
        by_format.setdefault(d["format"], []).append(texts[d["doc_id"]])
    corpora = {f: "\n".join(t) for f, t in by_format.items()}
    for f in facts:
        sentences = [t.format(drug=f["drug"], condition=f["condition"]) for t in RELATION_TEMPLATES]
        per_template = [sum(c.count(s) for c in corpora.values()) for s in sentences]
        assert sum(per_template) >= 6 and sum(c > 0 for c in per_template) >= 5, f
        formats = {name for name, c in corpora.items() if any(s in c for s in sentences)}
        assert len(formats) == 5  # a fact's format rotates by round
    stated = Counter(fid for d in world_manifest["documents"] for fid in d["fact_ids"])
    assert min(stated[f["fact_id"]] for f in facts) >= 6


def test_questions_consistent_and_splits_disjoint(world_dir, world_manifest, texts):
    facts = {json.loads(line)["fact_id"]: json.loads(line) for line in (world_dir / "kb/facts.jsonl").open()}
    qs = world_manifest["questions"]
    assert len({q["id"] for q in qs}) == len(qs)
    train = {q["fact_id"] for q in qs if q["split"] == "train"}
    test = {q["fact_id"] for q in qs if q["split"] == "test"}
    assert train and test and not train & test
    assert all(facts[q["fact_id"]]["split"] == q["split"] for q in qs)
    corpus = "\n".join(texts.values())
    for fid in train | test:
        assert f"{facts[fid]['drug']} is used to treat" in corpus or facts[fid]["condition"] in corpus
    drugs = {s: {f["drug"] for f in facts.values() if f["split"] == s} for s in ("train", "test")}
    for split in ("train", "test"):
        for name, num in (("medqa", 4), ("medqa_5", 5)):
            for line in (world_dir / f"questions/{name}/{split}.jsonl").read_text().splitlines():
                q = json.loads(line)
                assert len(q["options"]) == num and q["options"][q["answer_idx"]] == q["answer"]
                # distractors from the same half: option frequency in SFT cannot reveal test answers
                assert set(q["options"].values()) <= drugs[split]
    for line in (world_dir / "questions/medmcqa/dev.json").read_text().splitlines():
        q = json.loads(line)
        assert 1 <= q["cop"] <= 4 and q["question"].split(" is used")[0] in q["exp"]
    rows = list(csv.reader((world_dir / "questions/mmlu/test/clinical_knowledge_test.csv").open()))
    assert rows and all(len(r) == 6 and r[5] in "ABCD" for r in rows)
    pqa = json.loads((world_dir / "questions/pubmedqa/ori_pqal.json").read_text())
    assert {v["final_decision"] for v in pqa.values()} == {"yes", "no"}


def test_sft_samples_use_the_paper_format(world_dir, world_manifest):
    facts = {json.loads(line)["fact_id"]: json.loads(line) for line in (world_dir / "kb/facts.jsonl").open()}
    rows = [json.loads(line) for line in (world_dir / "sft/train.jsonl").read_text().splitlines()]
    mcq = [r for r in rows if r["fact_id"] is not None]
    assert len(mcq) >= 100 and any(r["has_cot"] for r in mcq) and any(not r["has_cot"] for r in mcq)
    for r in mcq:
        assert r["system"] == MCQ_SYSTEM_PROMPT and facts[r["fact_id"]]["split"] == "train"
        assert r["assistant"].startswith(COT_PREFIX if r["has_cot"] else ANSWER_PREFIX)
        assert r["assistant"].rsplit(": ", 1)[1] in r["prompter"].split("\n")[1:]
    assert any(r["source"] == "general" for r in rows)


def test_config_validation_and_scale(tmp_path, world_manifest):
    with pytest.raises(ValueError, match="scale"):
        WorldConfig(scale=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_world(tmp_path / "busy")
    full = world_manifest["counts"]
    half = generate_world(tmp_path / "half", scale=0.5)["counts"]
    assert half["num_general_documents"] < 0.6 * full["num_general_documents"]
    assert half["num_exact_duplicates"] == full["num_exact_duplicates"] // 2
    assert half["num_questions"] == full["num_questions"]  # same knowledge base, same questions


def test_cli_deterministic_replaces_previous_world_and_seed_matters(world_dir, tmp_path, capsys):
    from clinray.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["world", "--help"])
    assert exc.value.code == 0 and "--scale" in capsys.readouterr().out
    exe = [sys.executable, "-m", "clinray.cli"]
    if (REPO / ".venv/bin/clinray").exists():
        exe = [str(REPO / ".venv/bin/clinray")]
    shutil.copytree(world_dir, tmp_path / "b")  # b starts as the seed-0 world: regenerating must replace it
    for name in ("a", "b"):
        res = subprocess.run(
            [*exe, "world", "--out", str(tmp_path / name), "--seed", "1"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert re.search(r"num_documents\s+\d+", res.stdout)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert _tree(tmp_path / "a")["kb/facts.jsonl"] != _tree(world_dir)["kb/facts.jsonl"]


def test_demo_stage_writes_world_and_reports_counts(tmp_path):
    from clinray.demo import DemoContext
    from clinray.demo_stages import world as stage

    result = stage.run(DemoContext(run_dir=tmp_path))
    assert stage.ORDER == 10 and stage.BUDGET_S == 30
    assert Path(result.outputs["world"], "manifest.json").is_file()
    assert result.metrics["num_facts"] == 200 and result.metrics["num_documents"] > 300
