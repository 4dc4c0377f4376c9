"""Decontamination against the world's test sets: planted contaminated documents caught, others clean."""

from __future__ import annotations

import json

import pytest

from clinray.data.decontaminate import ContaminationIndex, DecontamConfig, describe, load_questions


def _plain_docs(world_dir, manifest) -> dict[str, str]:
    """Texts of the world's plain-text and JSONL documents (the formats that need no parser)."""
    from clinray.synthetic.reading import plain_documents

    return {d["doc_id"]: d["text"] for d in plain_documents(world_dir, manifest)}


@pytest.fixture(scope="module")
def index(world_dir):
    return ContaminationIndex.build(DecontamConfig(questions_root=str(world_dir / "questions")))


def test_loads_every_benchmark_in_its_native_layout(world_dir, index):
    assert set(index.num_questions) == {"medqa", "medqa_5", "medmcqa", "mmlu", "pubmedqa"}
    assert all(n > 0 for n in index.num_questions.values())
    mmlu = load_questions(world_dir / "questions", "mmlu")
    assert mmlu[0][0].startswith("mmlu-") and mmlu[0][1].endswith("?")


def test_planted_contamination_caught_without_false_positives(world_dir, world_manifest, index):
    docs = _plain_docs(world_dir, world_manifest)
    planted = {}
    for c in world_manifest["contaminated"]:
        planted.setdefault(c["doc_id"], {}).setdefault(c["benchmark"], set()).add(c["question_id"])
    assert planted and set(planted) <= set(docs)
    found = {doc_id: hits for doc_id, text in docs.items() if (hits := index.hits(text))}
    assert set(found) == set(planted)
    for doc_id, hits in found.items():
        # every planted (benchmark, question) is found; other benchmarks may share the same vignette
        for bench, qids in planted[doc_id].items():
            assert qids <= hits.get(bench, set()), describe(hits)


def test_ngram_size_and_short_stems(tmp_path):
    (tmp_path / "medqa").mkdir()
    stems = ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen", "too short"]
    (tmp_path / "medqa" / "test.jsonl").write_text("\n".join(json.dumps({"question": s}) for s in stems))
    idx = ContaminationIndex.build(DecontamConfig(questions_root=str(tmp_path), benchmarks=["medqa"]))
    assert idx.num_too_short == {"medqa": 1}
    text = "Intro. Two three four five six seven eight nine ten eleven twelve thirteen fourteen! Outro"
    assert idx.hits(text) == {"medqa": {"medqa-test-0000"}}
    assert idx.hits("one two three four five six seven eight nine ten eleven twelve") == {}


def test_missing_benchmark_file_is_an_actionable_error(tmp_path):
    with pytest.raises(ValueError, match="native layout"):
        ContaminationIndex.build(DecontamConfig(questions_root=str(tmp_path), benchmarks=["mmlu"]))
    with pytest.raises(ValueError, match="unknown"):
        DecontamConfig(benchmarks=["gsm8k"])
    with pytest.raises(ValueError, match="questions_root"):
        ContaminationIndex.build(DecontamConfig())


def test_sft_samples_get_a_contamination_column(world_dir, index):
    import pandas as pd

    from clinray.data.decontaminate import contamination_column, load_questions

    qid, stem = load_questions(world_dir / "questions", "medqa")[0]
    batch = pd.DataFrame({"prompter": [stem, "What is a cell?"], "assistant": ["Answer.", None]})
    out = contamination_column(batch, index=index, columns=["prompter", "assistant"])
    assert qid in out["contamination"][0] and out["contamination"][1] == ""
