"""clinray.sft.sources and .mixture: every Table 3 layout read from its native files, Figure 4/5 exactly,
a corrupt row per layout recorded with its reason, the Table 3 recipe, and the seeded mixture draw.

No Ray, no model: each fixture is a few rows written here in the dataset's own layout (field names of the
public releases), with one broken row beside the good ones.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from clinray.config import ConfigError, from_dict
from clinray.models.chat_template import MCQ_SYSTEM_PROMPT, render_messages
from clinray.sft.mixture import SFTMixture, load_mixture, quotas, sample_mixture
from clinray.sft.sources import LAYOUTS, MCQ_LAYOUTS, Conversation, ConversationSet, read_source

STEM = (
    "A 34-year-old woman has palpitations and heat intolerance for 3 weeks. Her thyroid gland is diffusely "
    "enlarged and nontender. Which of the following is the most likely underlying mechanism?"
)
OPTIONS = [
    "Antibodies stimulating the TSH receptor",
    "Granulomatous inflammation of the thyroid",
    "Autonomous thyroid nodule",
    "Excess iodine intake",
]


def _jsonl(path: Path, rows: list, *, broken_at: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if broken_at is not None:
        lines.insert(broken_at, '{"question": "unterminated')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _reasons(cs: ConversationSet) -> dict[str, int]:
    return cs.counts()["skipped_by_reason"]


def _balanced(cs: ConversationSet) -> None:
    counts = cs.counts()
    assert counts["read"] == counts["kept"] + sum(counts["skipped_by_reason"].values())
    assert counts["kept"] == len(cs.conversations)


def _user(conv: Conversation) -> str:
    return next(m["content"] for m in conv.messages if m["role"] == "user")


def _assistant(conv: Conversation) -> str:
    return [m["content"] for m in conv.messages if m["role"] == "assistant"][-1]


# ----------------------------------------------------------------------------- MCQ layouts


def _medmcqa_rows() -> list[dict]:
    return [
        {
            "id": "e9ad821a-c438-4965-9f77-760819dfa155",
            "question": STEM,
            "opa": OPTIONS[0],
            "opb": OPTIONS[1],
            "opc": OPTIONS[2],
            "opd": OPTIONS[3],
            "cop": 1,
            "choice_type": "single",
            "exp": "Graves disease is caused by TSH-receptor stimulating antibodies.",
            "subject_name": "Medicine",
            "topic_name": "Endocrinology",
        },
        {
            "id": "a2",
            "question": "Drug of choice for absence seizures?",
            "opa": "Ethosuximide",
            "opb": "Phenytoin",
            "opc": "Carbamazepine",
            "opd": "Gabapentin",
            "cop": 4,
            "exp": None,
        },
        {"id": "a3", "question": "Q?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": 7},
        {"id": "a4", "question": "Unlabelled?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": -1},
    ]


def test_medmcqa_figure4_exactly_and_reasons(tmp_path):
    path = _jsonl(tmp_path / "train.json", _medmcqa_rows(), broken_at=2)
    cs = read_source("medmcqa", path, source="medmcqa", mcq_reasoning="never")
    first = cs.conversations[0]
    assert first.id == "medmcqa/e9ad821a-c438-4965-9f77-760819dfa155" and first.source == "medmcqa"
    assert render_messages(first.messages) == (
        "<|system|>: You are a biomedical expert. Select the correct option for the following question:\n"
        f"<|prompter|>: {STEM}\n"
        "Antibodies stimulating the TSH receptor\n"
        "Granulomatous inflammation of the thyroid\n"
        "Autonomous thyroid nodule\n"
        "Excess iodine intake\n"
        "<|assistant|>: The correct answer is: Antibodies stimulating the TSH receptor</s>\n"
    )
    assert first.meta["question"] == STEM and first.meta["options"] == OPTIONS
    assert first.meta["has_cot"] is False and first.meta["subject_name"] == "Medicine"
    assert _assistant(cs.conversations[1]) == "The correct answer is: Gabapentin"  # cop 4, 1-based
    assert _reasons(cs) == {"bad_json": 1, "bad_answer": 1, "no_answer": 1}
    assert cs.counts() == {
        "read": 5,
        "kept": 2,
        "skipped_by_reason": {"bad_json": 1, "bad_answer": 1, "no_answer": 1},
    }
    assert [s.locator for s in cs.skipped] == ["train.json:3", "train.json:4", "train.json:5"]


def test_medmcqa_figure5_when_present_and_parquet_zero_based(tmp_path):
    path = _jsonl(tmp_path / "train.json", _medmcqa_rows())
    cs = read_source("medmcqa", path, source="medmcqa")  # mcq_reasoning defaults to when_present
    assert _assistant(cs.conversations[0]) == (
        "Let's think step-by-step. Graves disease is caused by TSH-receptor stimulating antibodies. "
        "Therefore, the correct answer is: Antibodies stimulating the TSH receptor"
    )
    assert cs.conversations[0].meta["has_cot"] and not cs.conversations[1].meta["has_cot"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(r, cop=r["cop"] - 1) for r in _medmcqa_rows()[:2]] + [
        dict(_medmcqa_rows()[1], id="z", cop=0)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    hub = read_source("medmcqa", tmp_path / "train-00000-of-00001.parquet", source="medmcqa")
    assert [c.meta["answer"] for c in hub] == [
        "Antibodies stimulating the TSH receptor",
        "Gabapentin",
        "Ethosuximide",
    ]


def test_medqa(tmp_path):
    rows = [
        {
            "question": STEM,
            "options": dict(zip("ABCD", OPTIONS)),
            "answer_idx": "A",
            "answer": OPTIONS[0],
            "meta_info": "step1",
        },
        {"question": STEM, "options": dict(zip("ABCD", OPTIONS)), "answer_idx": "E"},
        {"question": "", "options": dict(zip("ABCD", OPTIONS)), "answer_idx": "A"},
    ]
    cs = read_source("medqa", _jsonl(tmp_path / "train.jsonl", rows), source="medqa")
    (conv,) = cs.conversations
    assert conv.id == "medqa/train:1" and conv.meta["meta_info"] == "step1"
    assert conv.messages[0]["content"] == MCQ_SYSTEM_PROMPT and _user(conv) == "\n".join([STEM, *OPTIONS])
    assert _reasons(cs) == {"bad_answer": 1, "missing_question": 1}
    _balanced(cs)


def test_pubmedqa_contexts_before_question(tmp_path):
    data = {
        "21645374": {
            "QUESTION": "Do mitochondria play a role in remodelling lace plant leaves?",
            "CONTEXTS": ["Programmed cell death is ...", "Mitochondrial dynamics were ..."],
            "LONG_ANSWER": "Results show mitochondria are involved.",
            "final_decision": "yes",
        },
        "16418930": {"QUESTION": "Is it?", "CONTEXTS": ["..."], "final_decision": "perhaps"},
    }
    (tmp_path / "train_set.json").write_text(json.dumps(data))
    cs = read_source("pubmedqa", tmp_path / "train_set.json", source="pubmedqa", mcq_reasoning="never")
    (conv,) = cs.conversations
    assert conv.id == "pubmedqa/21645374" and conv.meta["question"].startswith("Do mitochondria")
    assert _user(conv) == (
        "Programmed cell death is ...\nMitochondrial dynamics were ...\n"
        "Do mitochondria play a role in remodelling lace plant leaves?\nyes\nno\nmaybe"
    )
    assert _assistant(conv) == "The correct answer is: yes"
    assert _reasons(cs) == {"bad_answer": 1} and cs.skipped[0].locator == "train_set.json:16418930"
    cot = read_source("pubmedqa", tmp_path / "train_set.json", source="pubmedqa")
    assert _assistant(cot.conversations[0]).startswith("Let's think step-by-step. Results show")


def test_mmlu(tmp_path):
    (tmp_path / "anatomy_dev.csv").write_text(
        '"Which bone is in the forearm?",Radius,Femur,Tibia,Fibula,A\nBad row?,a,b,c,d,F\n'
    )
    cs = read_source("mmlu", tmp_path, source="mmlu")
    (conv,) = cs.conversations
    assert conv.id == "mmlu/anatomy_dev:1" and conv.meta["subject"] == "anatomy"
    assert _assistant(conv) == "The correct answer is: Radius"
    assert _reasons(cs) == {"bad_answer": 1}


def test_sciq_answer_slot_is_deterministic(tmp_path):
    rows = [
        {
            "question": f"What do plants absorb number {i}?",
            "distractor3": "Oxygen",
            "distractor1": "Helium",
            "distractor2": "Neon",
            "correct_answer": "Carbon dioxide",
            "support": "Plants take in CO2." if i else "",
        }
        for i in range(8)
    ]
    rows.append(
        {"question": "Broken?", "distractor1": "a", "distractor2": "b", "correct_answer": "c", "support": ""}
    )
    (tmp_path / "train.json").write_text(json.dumps(rows))
    cs = read_source("sciq", tmp_path / "train.json", source="sciq")
    again = read_source("sciq", tmp_path / "train.json", source="sciq")
    assert [c.meta["options"] for c in cs] == [c.meta["options"] for c in again]
    for conv in cs:
        assert conv.meta["options"][conv.meta["answer_index"]] == "Carbon dioxide"
        assert _assistant(conv).endswith("correct answer is: Carbon dioxide")
    assert len({c.meta["answer_index"] for c in cs}) > 1  # not always the same slot
    assert cs.conversations[0].meta["has_cot"] is False and cs.conversations[1].meta["has_cot"] is True
    assert _reasons(cs) == {"missing_field": 1} and cs.skipped[0].locator == "train.json:9"


def test_headqa_release_and_flat(tmp_path):
    release = {
        "version": "1.0",
        "language": "en",
        "exams": {
            "cuaderno_2013_1_B": {
                "name": "Cuaderno_2013_1_B",
                "category": "biology",
                "year": "2013",
                "data": [
                    {
                        "qid": 1,
                        "qtext": "Which organelle makes ATP?",
                        "ra": 2,
                        "image": "",
                        "answers": [
                            {"aid": 1, "atext": "Ribosome"},
                            {"aid": 2, "atext": "Mitochondrion"},
                            {"aid": 3, "atext": "Golgi"},
                            {"aid": 4, "atext": "Lysosome"},
                        ],
                    },
                    {
                        "qid": 2,
                        "qtext": "Bad answer id?",
                        "ra": 9,
                        "image": "",
                        "answers": [{"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}],
                    },
                    {
                        "qid": 3,
                        "qtext": "In the image, which?",
                        "ra": 1,
                        "image": "images/q3.jpg",
                        "answers": [{"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}],
                    },
                ],
            }
        },
    }
    (tmp_path / "HEAD_EN.json").write_text(json.dumps(release))
    cs = read_source("headqa", tmp_path / "HEAD_EN.json", source="headqa")
    (conv,) = cs.conversations
    assert conv.id == "headqa/Cuaderno_2013_1_B:1" and conv.meta["category"] == "biology"
    assert _assistant(conv) == "The correct answer is: Mitochondrion"
    assert _reasons(cs) == {"bad_answer": 1, "has_image": 1}
    flat = dict(
        release["exams"]["cuaderno_2013_1_B"]["data"][0], name="Cuaderno_2013_1_B", category="biology"
    )
    cs = read_source("headqa", _jsonl(tmp_path / "flat.jsonl", [flat], broken_at=1), source="headqa")
    assert cs.conversations[0].id == "headqa/Cuaderno_2013_1_B:1" and _reasons(cs) == {"bad_json": 1}
    import pyarrow as pa
    import pyarrow.parquet as pq

    hub = [
        dict(flat, image={"bytes": None, "path": None}),
        dict(flat, qid=3, image={"bytes": b"jpg", "path": None}),
    ]
    pq.write_table(pa.Table.from_pylist(hub), tmp_path / "train-00000-of-00001.parquet")
    cs = read_source("headqa", tmp_path / "train-00000-of-00001.parquet", source="headqa")
    assert [c.id for c in cs] == ["headqa/Cuaderno_2013_1_B:1"] and _reasons(cs) == {"has_image": 1}


# ----------------------------------------------------------------------------- free text and chat layouts


def test_medquad_csv(tmp_path):
    (tmp_path / "medquad.csv").write_text(
        "question_id,question_focus,question_type,document_source,question,answer\n"
        '0000001-1,Glaucoma,information,NIHSeniorHealth,What is (are) Glaucoma ?,"Glaucoma is a group of diseases."\n'
        "0000002-1,Acne,information,MPlusHealthTopics,What is (are) Acne ?,\n"
    )
    cs = read_source("medquad", tmp_path / "medquad.csv", source="medquad")
    (conv,) = cs.conversations
    assert conv.id == "medquad/0000001-1" and conv.messages == (
        {"role": "user", "content": "What is (are) Glaucoma ?"},
        {"role": "assistant", "content": "Glaucoma is a group of diseases."},
    )
    assert conv.meta["focus"] == "Glaucoma" and conv.meta["question"] == "What is (are) Glaucoma ?"
    assert _reasons(cs) == {"empty": 1} and cs.skipped[0].locator == "medquad.csv:2"


def test_stackexchange_accepted_best_and_pairs(tmp_path):
    rows = [
        {
            "qid": 11,
            "question": "Why do cells divide?",
            "answers": [
                {"answer_id": 1, "text": "Low answer", "pm_score": 9, "selected": False},
                {"answer_id": 2, "text": "Accepted answer", "pm_score": 2, "selected": True},
            ],
        },
        {
            "qid": 12,
            "question": "What is a gene?",
            "answers": [
                {"answer_id": 3, "text": "Meh", "pm_score": 1, "selected": False},
                {"answer_id": 4, "text": "Best scored", "pm_score": 5, "selected": False},
            ],
        },
        {"qid": 13, "question": "No answers?", "answers": []},
        {"qid": 14, "question": "Paired?", "response_j": "Preferred", "response_k": "Worse"},
        {
            "qid": 15,
            "title": "Dump title",
            "body": "Dump body",
            "answers": [{"body": "A", "score": 3, "is_accepted": True}],
        },
    ]
    cs = read_source("stackexchange", _jsonl(tmp_path / "biology.jsonl", rows), source="stackexchange")
    got = {c.id: _assistant(c) for c in cs}
    assert got == {
        "stackexchange/11": "Accepted answer",
        "stackexchange/12": "Best scored",
        "stackexchange/14": "Preferred",
        "stackexchange/15": "A",
    }
    assert _user(cs.conversations[-1]) == "Dump title\n\nDump body"
    assert _reasons(cs) == {"no_answer": 1}
    strict = read_source("stackexchange", tmp_path / "biology.jsonl", source="stackexchange", min_score=3)
    assert _reasons(strict) == {"no_answer": 1, "low_score": 1}


def test_orca_slimorca_and_openorca_subset(tmp_path):
    slim = [
        {
            "conversations": [
                {"from": "system", "value": "You are an AI assistant."},
                {"from": "human", "value": "Translate 'hello' to French."},
                {"from": "gpt", "value": "Bonjour.", "weight": 1},
            ]
        },
        {
            "conversations": [
                {"from": "system", "value": ""},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
            ]
        },
        {"conversations": [{"from": "robot", "value": "?"}, {"from": "gpt", "value": "x"}]},
    ]
    cs = read_source("orca", _jsonl(tmp_path / "slim.jsonl", slim), source="slimorca")
    assert [len(c.messages) for c in cs] == [3, 2]  # the empty system turn is dropped
    assert (
        cs.conversations[0].id == "slimorca/slim:1"
        and cs.conversations[0].system == "You are an AI assistant."
    )
    assert _reasons(cs) == {"bad_role": 1}
    import pyarrow as pa
    import pyarrow.parquet as pq

    openorca = [
        {"id": "t0.1", "system_prompt": "", "question": "Q1", "response": "R1"},
        {"id": "flan.2", "system_prompt": "Be brief.", "question": "Q2", "response": "R2"},
        {"id": "t0.3", "system_prompt": "", "question": "Q3", "response": ""},
    ]
    pq.write_table(pa.Table.from_pylist(openorca), tmp_path / "1M-GPT4-Augmented.parquet")
    t0 = read_source("orca", tmp_path / "1M-GPT4-Augmented.parquet", source="slimorca_t0", subset="t0")
    assert [c.id for c in t0] == ["slimorca_t0/t0.1"] and _reasons(t0) == {"other_subset": 1, "empty": 1}
    assert t0.conversations[0].system is None


def test_ultrachat_both_layouts(tmp_path):
    rows = [
        {
            "id": "0",
            "data": [
                "How do vaccines work?",
                "They train the immune system.",
                "And boosters?",
                "They restore immunity.",
                "Thanks",
            ],
        },
        {
            "prompt_id": "p1",
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        },
        {"id": "2", "data": ["Question", ""]},
    ]
    cs = read_source("ultrachat", _jsonl(tmp_path / "train_0.jsonl", rows), source="ultrachat")
    first, second = cs.conversations
    assert [m["role"] for m in first.messages] == ["user", "assistant", "user", "assistant"]
    assert first.meta["dropped_last_user_turn"] and first.meta["question"] == "How do vaccines work?"
    assert second.id == "ultrachat/p1" and _reasons(cs) == {"empty": 1}


def test_niv2_task_file(tmp_path):
    task = {
        "Definition": ["Answer the biology question with one word."],
        "Instances": [
            {"id": "task591-1", "input": "Which organ pumps blood?", "output": ["Heart"]},
            {"id": "task591-2", "input": "Which organ filters blood?", "output": [""]},
        ],
    }
    (tmp_path / "task591_sciq_answer_generation.json").write_text(json.dumps(task))
    cs = read_source("niv2", tmp_path, source="niv2")
    (conv,) = cs.conversations
    assert conv.id == "niv2/task591-1" and conv.meta["task"] == "task591_sciq_answer_generation"
    assert _user(conv) == "Answer the biology question with one word.\n\nWhich organ pumps blood?"
    assert _reasons(cs) == {"empty": 1}


def test_chat_rows_of_the_tiny_world(tmp_path):
    rows = [
        {
            "id": "sft-medqa/train/q1",
            "system": MCQ_SYSTEM_PROMPT,
            "prompter": "Q\nA\nB",
            "assistant": "The correct answer is: A",
            "source": "medqa",
            "has_cot": False,
            "fact_id": 3,
        },
        {
            "id": "sft-general-0000",
            "system": "You are a helpful assistant.",
            "prompter": "List two primary colours.",
            "assistant": "Red and blue.",
            "source": "general",
            "has_cot": False,
            "fact_id": None,
        },
        {"id": "sft-x", "system": "s", "prompter": "p", "source": "general"},
    ]
    path = _jsonl(tmp_path / "train.jsonl", rows, broken_at=1)
    cs = read_source("chat", path, source="tiny")
    assert [c.id for c in cs] == ["tiny/sft-medqa/train/q1", "tiny/sft-general-0000"]
    assert cs.conversations[0].meta["fact_id"] == 3 and cs.conversations[0].meta["row_source"] == "medqa"
    assert _reasons(cs) == {"bad_json": 1, "missing_field": 1}
    by_row = read_source("chat", path, source="tiny", source_from_row=True)
    assert [c.source for c in by_row] == ["medqa", "general"]


def test_generic_jsonl_field_map(tmp_path):
    rows = [
        {
            "instruction": "Answer this question truthfully",
            "input": "What causes scurvy?",
            "output": "Vitamin C deficiency.",
            "sys": "You are a doctor.",
        },
        {"instruction": "Answer this question truthfully", "input": "What is BMI?"},
    ]
    path = _jsonl(tmp_path / "flashcards.jsonl", rows)
    fmap = {"prompt": ["instruction", "input"], "response": "output", "system": "sys"}
    cs = read_source("jsonl", path, source="medical_flashcards", field_map=fmap)
    (conv,) = cs.conversations
    assert conv.messages == (
        {"role": "system", "content": "You are a doctor."},
        {"role": "user", "content": "Answer this question truthfully\n\nWhat causes scurvy?"},
        {"role": "assistant", "content": "Vitamin C deficiency."},
    )
    assert conv.id == "medical_flashcards/flashcards:1"
    assert _reasons(cs) == {"missing_field": 1}
    with pytest.raises(ValueError, match="field_map maps 'response' to 'answer', which no row"):
        read_source("jsonl", path, source="x", field_map={"prompt": "input", "response": "answer"})
    with pytest.raises(ValueError, match="not a field of the jsonl layout"):
        read_source("jsonl", path, source="x", field_map={"question": "input"})


def test_every_layout_is_covered_and_errors_are_one_line(tmp_path):
    covered = {
        "medmcqa",
        "medqa",
        "pubmedqa",
        "mmlu",
        "sciq",
        "headqa",
        "medquad",
        "stackexchange",
        "orca",
        "ultrachat",
        "niv2",
        "chat",
        "jsonl",
    }
    assert set(LAYOUTS) == covered and MCQ_LAYOUTS.issubset(covered)
    with pytest.raises(ValueError, match="does not exist"):
        read_source("medqa", tmp_path / "nope.jsonl", source="medqa")
    _jsonl(tmp_path / "bad.jsonl", [{"question": "only"}])
    with pytest.raises(
        ValueError, match=r"no usable medqa rows .* missing_field|no usable medqa rows .* bad_options"
    ):
        read_source("medqa", tmp_path / "bad.jsonl", source="medqa")
    with pytest.raises(ValueError, match="has no option 'subset'"):
        read_source("medqa", tmp_path / "bad.jsonl", source="medqa", subset="t0")
    with pytest.raises(ValueError, match="unknown SFT layout"):
        read_source("alpaca", tmp_path, source="x")


def test_folder_reads_every_file_sorted_and_flags_duplicates(tmp_path):
    (tmp_path / "b").mkdir()
    _jsonl(tmp_path / "b" / "part.jsonl", [{"prompt": "p2", "response": "r2", "id": "dup"}])
    _jsonl(
        tmp_path / "a.jsonl",
        [{"prompt": "p1", "response": "r1", "id": "dup"}, {"prompt": "p3", "response": "r3"}],
    )
    (tmp_path / "notes.txt").write_text("ignored")
    cs = read_source("jsonl", tmp_path, source="mix")
    assert [c.id for c in cs] == ["mix/dup", "mix/a:2"]
    assert cs.skipped[0].locator == "b/part.jsonl:1" and _reasons(cs) == {"duplicate_id": 1}


# ----------------------------------------------------------------------------- the mixture


def _mixture(**ratios: float) -> SFTMixture:
    return from_dict(
        SFTMixture, {"sources": {n: {"layout": "jsonl", "path": n, "ratio": r} for n, r in ratios.items()}}
    )


def _set(name: str, n: int) -> ConversationSet:
    convs = [
        Conversation(
            id=f"{name}/{i}",
            source=name,
            messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}),
        )
        for i in range(n)
    ]
    return ConversationSet(conversations=convs, skipped=[])


def test_table3_recipe_loads_and_sums_to_100():
    mix = load_mixture("paper/sft_mix", ["data_root=/tmp/sft"])
    assert len(mix.sources) == 19
    assert abs(sum(s.ratio for s in mix.sources.values()) - 100.0) <= 0.01
    medical = [n for n in mix.sources if not n.startswith(("slimorca", "ultrachat"))]
    assert round(sum(mix.sources[n].ratio for n in medical), 2) == 55.29
    assert mix.sources["medmcqa"].ratio == 23.49 and mix.sources["slimorca_t0"].options == {"subset": "t0"}
    assert mix.path_of("medmcqa") == Path("/tmp/sft/medmcqa/train.json")
    from clinray.recipes import recipe_summary

    assert "Table 3" in recipe_summary("paper/sft_mix")


def test_mixture_validation():
    with pytest.raises(ConfigError, match="sum to 100"):
        _mixture(a=50, b=49)
    with pytest.raises(ConfigError, match="ratio must be > 0"):
        _mixture(a=100, b=0)
    with pytest.raises(ConfigError, match="unknown SFT layout"):
        from_dict(SFTMixture, {"sources": {"a": {"layout": "alpaca", "path": "a", "ratio": 100}}})
    with pytest.raises(ConfigError, match="has no option 'subset'"):
        from_dict(
            SFTMixture,
            {"sources": {"a": {"layout": "medqa", "path": "a", "ratio": 100, "options": {"subset": 1}}}},
        )


def test_sample_mixture_deterministic_and_within_one_sample():
    mix = _mixture(big=55.29, mid=30.0, small=14.71)
    sets = {"big": _set("big", 900), "mid": _set("mid", 500), "small": _set("small", 400)}
    a, acc = sample_mixture(sets, mix, total=1000, seed=7)
    b, _ = sample_mixture(sets, mix, total=1000, seed=7)
    c, _ = sample_mixture(sets, mix, total=1000, seed=8)
    assert [x.id for x in a] == [x.id for x in b] and [x.id for x in a] != [x.id for x in c]
    assert len(a) == 1000 and sum(v["taken"] for v in acc.values()) == 1000
    got = Counter(x.source for x in a)
    for name, ratio in (("big", 55.29), ("mid", 30.0), ("small", 14.71)):
        assert abs(got[name] - 1000 * ratio / 100) < 1 and acc[name]["taken"] == got[name]
        assert acc[name]["repeated"] == 0 and len({x.id for x in a if x.source == name}) == got[name]
    assert quotas(mix, 1) == {"big": 1, "mid": 0, "small": 0}


def test_sample_mixture_upsampling_accounting_and_largest_total():
    mix = _mixture(big=90, small=10)
    sets = {"big": _set("big", 900), "small": _set("small", 3)}
    drawn, acc = sample_mixture(sets, mix, total=100, seed=0)
    small = Counter(x.id for x in drawn if x.source == "small")
    assert acc["small"] == {
        "ratio": 10.0,
        "read": 3,
        "available": 3,
        "quota": 10,
        "taken": 10,
        "unique": 3,
        "repeated": 7,
        "passes": 3.3333,
    }
    assert sorted(small.values()) == [3, 3, 4]  # three whole passes, then one seeded extra
    # total=None: the largest mixture with no repeat (small's 3 samples allow 30 in all)
    drawn, acc = sample_mixture(sets, mix, total=None, seed=0)
    assert len(drawn) == 30 and acc["small"]["taken"] == 3 and all(v["repeated"] == 0 for v in acc.values())
    capped = from_dict(
        SFTMixture,
        {
            "sources": {
                "big": {"layout": "jsonl", "path": "b", "ratio": 90, "max_samples": 45},
                "small": {"layout": "jsonl", "path": "s", "ratio": 10},
            }
        },
    )
    drawn, acc = sample_mixture(sets, capped, total=None, seed=0)
    assert acc["big"]["available"] == 45 and acc["big"]["read"] == 900 and len(drawn) == 30
    with pytest.raises(ValueError, match="missing"):
        sample_mixture({"big": sets["big"]}, mix, total=10, seed=0)


def test_read_mixture_from_files(tmp_path):
    from clinray.sft.mixture import read_mixture

    _jsonl(
        tmp_path / "medqa.jsonl",
        [{"question": STEM, "options": dict(zip("ABCD", OPTIONS)), "answer_idx": "B"}],
    )
    _jsonl(tmp_path / "chat.jsonl", [{"id": f"g{i}", "prompter": "p", "assistant": "a"} for i in range(9)])
    spec = {
        "data_root": str(tmp_path),
        "sources": {
            "medqa": {"layout": "medqa", "path": "medqa.jsonl", "ratio": 10, "mcq_reasoning": "never"},
            "general": {"layout": "chat", "path": "chat.jsonl", "ratio": 90},
        },
    }
    sets = read_mixture(from_dict(SFTMixture, spec))
    assert _assistant(sets["medqa"].conversations[0]) == f"The correct answer is: {OPTIONS[1]}"
    drawn, acc = sample_mixture(sets, from_dict(SFTMixture, spec), total=None, seed=0)
    assert len(drawn) == 10 and acc["medqa"]["taken"] == 1 and acc["general"]["taken"] == 9
