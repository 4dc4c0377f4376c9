"""Verified chain-of-thought, without Ray: the judge and its shuffle, the rows, the ledger, the inputs."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinray.config import ConfigError, load
from clinray.cot.config import CoTConfig
from clinray.cot.output import read_cot_questions
from clinray.cot.report import Tally, ledger_problems, render_markdown
from clinray.cot.run import read_inputs
from clinray.cot.verify import UNPARSEABLE_REASONS, cot_row, judge, plan_samples, teacher_prompt
from clinray.models.chat_template import COT_ANSWER_PREFIX, COT_PREFIX
from clinray.qa import Question
from clinray.retrieval.build_index import IndexConfig, load_examples
from clinray.sft.sources import read_source

LETTERS = "ABCDEFGHIJ"
WORDS = ["narmycin", "zoprazole", "kinmycin", "drexlukast", "semfou", "pouxmaemia", "tousdae", "rimsoul"]


def _question(n: int, gold: int, *, qid: str = "medqa/train/q-0", words=WORDS) -> Question:
    return Question(
        id=qid, benchmark="medqa", split="train", stem="Which drug treats Filpros fever?",
        options=tuple(words[:n]), answer_index=gold,
    )  # fmt: skip


def _completion(reasoning: str, shown: list[str], pick: int, form: str) -> str:
    answer = {
        "letter": f"{LETTERS[pick]}.",
        "letter_text": f"{LETTERS[pick]}. {shown[pick]}",
        "text": shown[pick],
        "paren": f"({LETTERS[pick]})",
    }[form]
    return (
        f" {reasoning} {COT_ANSWER_PREFIX} {answer}\nThe next question is about {shown[0]} and {shown[-1]}."
    )


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    n=st.integers(min_value=2, max_value=6),
    k=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=10_000),
    form=st.sampled_from(["letter", "letter_text", "text", "paren"]),
    reasoning=st.lists(
        st.sampled_from(["the", "drug", "blocks", "a", "kinase", "so", "it", "treats"]), min_size=1
    ),
)
def test_the_filter_keeps_exactly_the_chains_whose_mapped_back_answer_is_gold(
    data, n, k, seed, form, reasoning
):
    """Over random shuffles, golds and teacher picks: kept <=> perm[pick] == gold, and a kept row names
    the gold option in the order its prompt shows."""
    gold = data.draw(st.integers(min_value=0, max_value=n - 1))
    question = _question(n, gold)
    plan = plan_samples(question, k=k, seed=seed)
    assert [s.number for s in plan] == list(range(k))
    if k <= math.factorial(n):
        assert len({s.perm for s in plan}) == k  # pairwise distinct option orders while n! allows
    for sample in plan:
        shown = sample.shown
        assert shown == [question.options[i] for i in sample.perm]
        pick = data.draw(st.integers(min_value=0, max_value=n - 1))  # the teacher's choice, as shown
        got = judge(_completion(" ".join(reasoning), shown, pick, form), shown, sample.perm, gold)
        assert got.answer_index == sample.perm[pick] and got.shown_index == pick
        assert (got.verdict == "accepted") == (sample.perm[pick] == gold)
        assert got.verdict in ("accepted", "wrong_answer")
        if got.verdict == "accepted":
            for labels in (False, True):
                row = cot_row(sample, got, source="medqa", use_labels=labels, teacher="t")
                assert row["options"] == shown and row["options"][row["answer_index"]] == question.answer
                assert row["prompter"].splitlines()[1:] == (
                    [f"{LETTERS[j]}. {o}" for j, o in enumerate(shown)] if labels else shown
                )
                shown_answer = (
                    f"{LETTERS[sample.gold_shown]}. {question.answer}" if labels else question.answer
                )
                assert (
                    row["assistant"]
                    == f"{COT_PREFIX} {' '.join(reasoning)} {COT_ANSWER_PREFIX} {shown_answer}"
                )


def test_plans_are_seeded_per_question():
    a, b = _question(4, 1, qid="medqa/train/a"), _question(4, 1, qid="medqa/train/b")
    assert plan_samples(a, k=5, seed=3) == plan_samples(a, k=5, seed=3)
    assert [s.perm for s in plan_samples(a, k=5, seed=3)] != [s.perm for s in plan_samples(a, k=5, seed=4)]
    assert plan_samples(a, k=5, seed=3)[0].seed != plan_samples(b, k=5, seed=3)[0].seed
    two = _question(2, 0)
    assert sorted({s.perm for s in plan_samples(two, k=5, seed=0)}) == [(0, 1), (1, 0)]  # 2! < 5: repeats
    with pytest.raises(ValueError, match="no answer"):
        plan_samples(
            Question(id="x/y/z", benchmark="medqa", split="train", stem="s", options=("a", "b")), k=1, seed=0
        )


def test_mapping_back_goes_through_the_samples_own_shuffle():
    question = _question(4, gold=2)  # kinmycin
    perm = (2, 0, 3, 1)  # shown: kinmycin, narmycin, drexlukast, zoprazole
    shown = [question.options[i] for i in perm]
    text = f" Kinmycin inhibits the kinase. {COT_ANSWER_PREFIX} A. kinmycin"
    got = judge(text, shown, perm, 2)
    assert (got.verdict, got.shown_index, got.answer_index, got.form) == ("accepted", 0, 2, "marker_letter")
    assert got.reasoning == "Kinmycin inhibits the kinase."
    # "C" is the third option *as shown* (drexlukast = original 3), not the original C (kinmycin)
    assert judge(f" It fits. {COT_ANSWER_PREFIX} C", shown, perm, 2).answer_index == 3
    assert judge(f" It fits. {COT_ANSWER_PREFIX} C", shown, perm, 2).verdict == "wrong_answer"


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("", "empty_completion"),
        ("   </s>", "empty_completion"),
        ("It blocks the kinase, so narmycin.", "no_final_answer"),
        ("It blocks the kinase.</s>Therefore, the correct answer is: narmycin", "no_final_answer"),
        (
            f"So narmycin. {COT_ANSWER_PREFIX} narmycin. No: {COT_ANSWER_PREFIX} zoprazole",
            "several_final_answers",
        ),
        (f"{COT_ANSWER_PREFIX} narmycin", "no_reasoning"),
        (f" {COT_PREFIX} {COT_ANSWER_PREFIX} narmycin", "no_reasoning"),
        (f"It blocks the kinase. {COT_ANSWER_PREFIX} Filpros fever", "unreadable_answer"),
        (f"It blocks the kinase. {COT_ANSWER_PREFIX}", "unreadable_answer"),
        (f"It blocks the kinase. {COT_ANSWER_PREFIX} E.", "unreadable_answer"),
    ],
)
def test_unparseable_chains_are_counted_with_their_reason(completion, reason):
    question = _question(4, 0)
    got = judge(completion, list(question.options), (0, 1, 2, 3), 0)
    assert (got.verdict, got.reason) == ("unparseable", reason) and reason in UNPARSEABLE_REASONS
    assert got.answer_index is None


def test_only_the_final_answer_line_is_read():
    text = f" It blocks. {COT_ANSWER_PREFIX} B. zoprazole\nNext question. Answer: A"
    assert judge(text, list(WORDS[:4]), (0, 1, 2, 3), 1).answer_index == 1


def test_a_repeated_prefill_is_not_part_of_the_reasoning():
    got = judge(f"{COT_PREFIX} It blocks. {COT_ANSWER_PREFIX} narmycin", list(WORDS[:4]), (0, 1, 2, 3), 0)
    assert got.reasoning == "It blocks." and got.verdict == "accepted"


def test_the_prompt_prefills_figure_5_and_shows_the_shuffle():
    question = _question(4, 0)
    sample = plan_samples(question, k=2, seed=0)[1]
    prompt = teacher_prompt(question.stem, sample.shown)
    assert prompt.endswith(f"<|assistant|>: {COT_PREFIX}")
    assert "\n".join([question.stem, *sample.shown]) in prompt


def _report(**over) -> dict:
    report = {
        "questions": {"read": 10, "skipped_by_reason": {"over_limit": 5, "no_answer": 1}, "contaminated": 1,
                      "generated": 3},
        "samples": {"planned": 6, "judged": 6, "accepted": 3, "wrong_answer": 1, "unparseable": 2,
                    "unparseable_by_reason": {"no_final_answer": 2}},
        "rows": {"written": 2, "duplicate": 1, "over_keep": 0},
    }  # fmt: skip
    for key, value in over.items():
        part, name = key.split("__")
        report[part][name] = value
    return report


def test_the_ledger_balances_or_says_what_does_not():
    assert ledger_problems(_report()) == []
    assert "questions do not balance" in ledger_problems(_report(questions__read=11))[0]
    assert "samples do not balance" in ledger_problems(_report(samples__judged=5))[0]  # a lost batch
    assert "samples do not balance" in ledger_problems(_report(samples__accepted=4))[0]
    assert "over their reasons" in " ".join(ledger_problems(_report(samples__unparseable_by_reason={})))
    assert "rows do not balance" in ledger_problems(_report(rows__written=3))[0]


def test_tally_per_group():
    t = Tally()
    t.add_question(["accepted", "wrong_answer", "accepted"])
    t.add_question(["unparseable", "unparseable", "unparseable"])
    assert t.to_dict() == {
        "questions": 2, "samples": 6, "accepted": 2, "wrong_answer": 1, "unparseable": 3,
        "questions_with_accepted": 1, "acceptance_rate": 0.3333,
    }  # fmt: skip


def test_markdown_report_shows_the_ledger_and_the_rates():
    report = _report()
    t = {"questions": 3, "samples": 6, "accepted": 3, "wrong_answer": 1, "unparseable": 2,
         "questions_with_accepted": 2, "acceptance_rate": 0.5}  # fmt: skip
    report.update(
        teacher={"kind": "transformers", "model": "m"}, k=2, seed=0, temperature=0.2, max_new_tokens=8,
        num_examples=0, balanced=True, total=t, by_source={"medqa": t}, by_benchmark={"medqa": t},
        chains_per_question={"0": 1, "2": 2},
    )  # fmt: skip
    text = render_markdown(report)
    assert "10 read = 6 skipped (over_limit 5, no_answer 1) + 1 contaminated + 3 generated" in text
    assert "**50.0%**" in text and "| medqa | 3 | 6 | 3 | 1 | 2 | 50.0% | 2 |" in text


def _medqa_file(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mcq(i: int, *, answer: str | None = "A", qid: str | None = None) -> dict:
    row = {"question": f"Question number {i}?", "options": {"A": f"yes{i}", "B": f"no{i}"}}
    if answer:
        row["answer_idx"] = answer
    row["id"] = qid or f"q{i}"
    return row


def test_inputs_are_selected_and_every_other_row_counted(tmp_path):
    a = _medqa_file(
        tmp_path / "medqa" / "train.jsonl", [_mcq(1), _mcq(2, answer=None), _mcq(3), _mcq(4), _mcq(5)]
    )
    (tmp_path / "medqa" / "train.jsonl").open("a").write("{broken\n")
    b = _medqa_file(tmp_path / "other" / "train.jsonl", [_mcq(9, qid="q1"), _mcq(6)])
    cfg = load(CoTConfig, None, [f"inputs=[{{path: {a}, benchmark: medqa}}, {{path: {b}, benchmark: medqa}}]",
                                 "limit=2", "decontaminate.enabled=false", "teacher.model=m"])  # fmt: skip
    selected, rejects, skipped, read, _ = read_inputs(cfg)
    assert [q.id for _, q in selected] == ["medqa/train/q1", "medqa/train/q3", "medqa/train/q6"]
    assert dict(skipped) == {"bad_json": 1, "no_answer": 1, "over_limit": 2, "duplicate_id": 1}
    assert read == 8 == sum(skipped.values()) + len(selected)
    assert {r["reason"] for r in rejects} == {
        "bad_json",
        "no_answer",
        "duplicate_id",
    }  # over_limit: counted only
    assert [spec.label for spec, _ in selected] == ["medqa", "medqa", "other"]


def test_config_mistakes_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="no questions"):
        load(CoTConfig, None, [])
    with pytest.raises(ConfigError, match="k must be >= 1"):
        load(CoTConfig, None, ["world=w", "k=0"])
    with pytest.raises(ConfigError, match="num_gpus is 0"):
        load(CoTConfig, None, ["world=w", "teacher.device=cuda"])
    cfg = load(
        CoTConfig, None, [f"inputs=[{{path: {tmp_path / 'nope.jsonl'}}}]", "teacher.model=" + str(tmp_path)]
    )
    problems = cfg.check_inputs()
    assert len(problems) == 3 and "nope.jsonl" in problems[0] and "no config.json" in problems[1]
    assert "decontaminate.questions_root is not set" in problems[2]
    served = load(CoTConfig, None, ["world=w", "teacher.kind=openai"])
    assert "not a tiny world" in served.check_inputs()[0]


def test_rows_feed_the_sft_reader_and_the_index(tmp_path):
    question = _question(4, 2, qid="medqa/train/q-7")
    rows = []
    for sample in plan_samples(question, k=3, seed=1):
        pick = sample.gold_shown
        got = judge(
            f" Kinmycin blocks it. {COT_ANSWER_PREFIX} {sample.shown[pick]}", sample.shown, sample.perm, 2
        )
        rows.append(cot_row(sample, got, source="medqa", use_labels=False, teacher="t"))
    path = tmp_path / "cot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "broken"}\n')
    sft = read_source("chat", path, source="cot")
    assert len(sft) == 3 and sft.counts()["skipped_by_reason"] == {"missing_field": 1}
    assert all(c.messages[-1]["content"].endswith(f"{COT_ANSWER_PREFIX} kinmycin") for c in sft)
    assert sft.conversations[0].id == "cot/medqa/train/q-7#0" and sft.conversations[0].meta["has_cot"]
    questions, bad = read_cot_questions(path)
    assert [q.options for q in questions] == [tuple(r["options"]) for r in rows]
    assert all(q.answer == "kinmycin" and q.explanation == "Kinmycin blocks it." for q in questions)
    assert [s.reason for s in bad] == ["bad_cot_row"]
    examples, rejects = load_examples(IndexConfig(cot=[str(path)]))
    assert [e["id"] for e in examples] == ["medqa/train/q-7"]
    assert json.loads(examples[0]["options"]) == rows[0]["options"]  # the order the first chain saw
    assert examples[0]["answer_index"] == rows[0]["answer_index"]
    assert sorted(r["reason"] for r in rejects) == ["bad_cot_row", "duplicate_id", "duplicate_id"]
