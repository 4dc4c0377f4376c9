"""clinray.qa: every native layout round-trips, ids are stable and shared, skipped rows are counted.

No Ray. The questions are realistic USMLE-style vignettes (the boilerplate real banks share), written
here in each layout; the eval loaders and decontamination are checked to report the same ids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from clinray.qa import (
    EVAL_FILES,
    PUBMEDQA_CHOICES,
    Question,
    read_benchmark,
    read_medmcqa,
    read_medqa,
    read_mmlu,
    read_pubmedqa,
    read_questions,
    write_questions,
)

VIGNETTES = [
    (
        "A 34-year-old woman comes to the emergency department because of palpitations and heat intolerance "
        "for 3 weeks. Her pulse is 118/min, respirations are 17/min, and blood pressure is 138/70 mm Hg. "
        "Examination shows a diffusely enlarged, nontender thyroid gland. Which of the following is the "
        "most likely underlying mechanism of this patient's condition?",
        [
            "Antibodies stimulating the TSH receptor",
            "Granulomatous inflammation of the thyroid",
            "Autonomous thyroid nodule",
            "Excess iodine intake",
        ],
        0,
    ),
    (
        "A 67-year-old man with a 40-pack-year smoking history comes to the physician because of a 2-month "
        "history of cough and a 6-kg weight loss. His serum calcium concentration is 12.8 mg/dL. A chest "
        "x-ray shows a central hilar mass. Which of the following is the most likely diagnosis?",
        ["Small cell carcinoma", "Squamous cell carcinoma", "Adenocarcinoma", "Carcinoid tumor"],
        1,
    ),
    (
        "A 5-year-old boy is brought to the physician because of facial swelling for 4 days. His blood "
        "pressure is 100/60 mm Hg. Urinalysis shows 4+ protein and no blood. Which of the following is the "
        "most appropriate next step in management?",
        ["Oral prednisone", "Renal biopsy", "Intravenous cyclophosphamide", "Oral furosemide"],
        0,
    ),
    (
        "A 28-year-old woman at 32 weeks' gestation has a blood pressure of 162/110 mm Hg and a headache. "
        "Her platelet count is 85,000/mm3. Which of the following is the most appropriate pharmacotherapy "
        "to prevent seizures?",
        ["Magnesium sulfate", "Phenytoin", "Diazepam", "Levetiracetam"],
        0,
    ),
]


def _questions(benchmark: str, split: str, *, num_options: int = 4, labelled: bool = True) -> list[Question]:
    out = []
    for i, (stem, options, answer) in enumerate(VIGNETTES):
        opts = [*options, "Vitamin B12 deficiency"][:num_options]
        out.append(
            Question.create(
                benchmark=benchmark,
                split=split,
                native=f"{benchmark}-{split}-{i:04d}",
                stem=stem,
                options=opts,
                answer_index=answer if labelled else None,
                explanation="Because of the vital signs." if benchmark == "medmcqa" else None,
                meta={"meta_info": "step1"} if benchmark.startswith("medqa") else {},
            )
        )
    return out


def _same(read: list[Question], written: list[Question]) -> None:
    assert [q.id for q in read] == [q.id for q in written]
    for r, w in zip(read, written, strict=True):
        assert (r.stem, r.options, r.answer_index, r.explanation) == (
            w.stem,
            w.options,
            w.answer_index,
            w.explanation,
        )
        assert {k: v for k, v in r.meta.items() if k != "locator"} == w.meta


@pytest.mark.parametrize(("benchmark", "num_options"), [("medqa", 4), ("medqa_5", 5), ("usmle", 5)])
def test_medqa_layouts_round_trip(tmp_path, benchmark, num_options):
    written = _questions(benchmark, "test", num_options=num_options)
    path = write_questions(tmp_path / benchmark / "test.jsonl", written, layout="medqa")
    got = read_questions(path, benchmark=benchmark)
    _same(got.questions, written)
    assert got.questions[0].id == f"{benchmark}/test/{benchmark}-test-0000" and not got.skipped
    assert json.loads(path.read_text().splitlines()[0])["answer_idx"] == "A"
    assert read_questions(path).questions[0].benchmark == benchmark  # from the folder name


def test_medmcqa_json_and_parquet_round_trip_with_the_same_ids(tmp_path):
    written = _questions("medmcqa", "dev")
    as_json = write_questions(tmp_path / "dev.json", written, layout="medmcqa")
    as_parquet = write_questions(tmp_path / "validation-00000-of-00001.parquet", written, layout="medmcqa")
    assert [json.loads(line)["cop"] for line in as_json.read_text().splitlines()] == [1, 2, 1, 1]
    from_json, from_parquet = read_medmcqa(as_json), read_medmcqa(as_parquet)
    _same(from_json.questions, written)
    _same(from_parquet.questions, written)  # hub split "validation" is the release's "dev"


def test_mmlu_and_pubmedqa_round_trip(tmp_path):
    mmlu = [
        Question.create(
            benchmark="mmlu",
            split="test",
            native=f"professional_medicine:{n}",
            stem=stem,
            options=options,
            answer_index=answer,
            meta={"subject": "professional_medicine"},
            own_id=False,
        )
        for n, (stem, options, answer) in enumerate(VIGNETTES, 1)
    ]
    path = write_questions(tmp_path / "professional_medicine_test.csv", mmlu, layout="mmlu")
    got = read_mmlu(path)
    _same(got.questions, mmlu)
    assert got.questions[1].id == "mmlu/test/professional_medicine:2"
    pqa = [
        Question.create(
            benchmark="pubmedqa",
            split="ori_pqal",
            native=str(21_645_000 + i),
            stem=f"Does early {drug} reduce mortality in septic shock?",
            options=PUBMEDQA_CHOICES,
            answer_index=i % 3,
            explanation="Early treatment was associated with lower 28-day mortality.",
            meta={
                "contexts": ["We enrolled 412 adults with septic shock.", "Mortality was 31%."],
                "YEAR": "2011",
            },
        )
        for i, drug in enumerate(["norepinephrine", "hydrocortisone", "vasopressin"])
    ]
    path = write_questions(tmp_path / "ori_pqal.json", pqa, layout="pubmedqa")
    got = read_pubmedqa(path)
    _same(got.questions, pqa)
    assert got.questions[0].id == "pubmedqa/ori_pqal/21645000"
    assert got.questions[0].text.startswith("We enrolled 412 adults") and got.questions[0].text.endswith(
        "shock?"
    )
    assert [q.id for q in read_pubmedqa(path, ids=["21645001"])] == ["pubmedqa/ori_pqal/21645001"]


def test_unlabelled_questions_round_trip_and_are_allowed_where_no_score_is_needed(tmp_path):
    written = _questions("medqa", "test", labelled=False)
    path = write_questions(tmp_path / "medqa" / "test.jsonl", written, layout="medqa")
    assert "answer_idx" not in path.read_text()
    got = read_questions(path)
    _same(got.questions, written)
    # clinray medprompt answers them (gold None) instead of KeyError: 'answer_idx'
    from clinray.commands.medprompt import _items

    args = argparse.Namespace(
        questions=str(path), benchmark=None, cop_base="auto", limit=2, question=None, option=[]
    )
    items = _items(args)
    assert [i["gold"] for i in items] == [None, None] and items[0]["id"] == "medqa/test/medqa-test-0000"
    # evaluation refuses them in one line that says why
    with pytest.raises(ValueError, match="has an answer") as err:
        got.require_answers(purpose="evaluation")
    assert "\n" not in str(err.value)
    mixed = [*written[:1], *_questions("medqa", "test")[1:]]
    partial = read_questions(
        write_questions(tmp_path / "mixed.jsonl", mixed, layout="medqa"), benchmark="medqa"
    )
    labelled = partial.require_answers(purpose="evaluation")
    assert len(labelled) == 3 and labelled.num_skipped_by_reason == {"no_answer": 1}


def test_fallback_ids_are_file_stem_and_line_and_stable(tmp_path):
    lines = [
        json.dumps(
            {"question": VIGNETTES[0][0], "options": dict(zip("ABCD", VIGNETTES[0][1])), "answer_idx": "A"}
        ),
        "",
        json.dumps(
            {"question": VIGNETTES[1][0], "options": VIGNETTES[1][1], "answer_index": 1}
        ),  # clinray example
    ]
    path = tmp_path / "phrases_no_exclude_test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ids = [q.id for q in read_medqa(path)]
    assert ids == [
        "medqa/phrases_no_exclude_test/phrases_no_exclude_test:1",
        "medqa/phrases_no_exclude_test/phrases_no_exclude_test:3",
    ]
    assert ids == [q.id for q in read_medqa(path)]
    # numbered ids are not the record's own: writing the questions back adds no "id" field
    again = write_questions(tmp_path / "again.jsonl", read_medqa(path).questions, layout="medqa")
    assert all("id" not in json.loads(line) for line in again.read_text().splitlines())


def test_skipped_rows_are_counted_by_reason_and_never_raise(tmp_path):
    good = {
        "question": VIGNETTES[0][0],
        "options": dict(zip("ABCD", VIGNETTES[0][1])),
        "answer_idx": "A",
        "id": "q1",
    }
    lines = [
        json.dumps(good).encode(),
        b"{not json",
        json.dumps({**good, "id": "q2", "answer_idx": "F"}).encode(),
        json.dumps({**good, "id": "q3", "answer": "Excess iodine intake"}).encode(),  # answer_idx says A
        json.dumps({**good, "id": "q4", "question": "  "}).encode(),
        json.dumps({**good, "id": "q5", "options": {"A": "Graves disease", "B": ""}}).encode(),
        json.dumps(good).encode(),  # the same id again
        json.dumps([1, 2]).encode(),
        b'{"question": "caf\xe9"}',
    ]
    path = tmp_path / "test.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = read_medqa(path)
    assert [q.id for q in got] == ["medqa/test/q1"]
    assert got.num_skipped_by_reason == {
        "bad_answer": 2,
        "bad_json": 1,
        "missing_question": 1,
        "bad_options": 1,
        "duplicate_id": 1,
        "not_an_object": 1,
        "not_utf8": 1,
    }
    assert got.skipped[0] == ("test.jsonl:2", "bad_json", got.skipped[0].detail)
    report = got.report()
    assert report["num_skipped"] == 8 and report["skipped"][1]["locator"] == "test.jsonl:3"
    assert "2 x bad_answer (first at test.jsonl:3: answer_idx 'F'" in got.describe_skipped()
    path.write_bytes(b"\n".join(lines[1:3]) + b"\n")
    with pytest.raises(ValueError, match=r"no valid question rows .*1 x bad_json") as err:
        read_medqa(path)
    assert "\n" not in str(err.value)


def test_missing_file_names_the_expected_layout_in_one_line(tmp_path):
    for call, layout_word in [
        (lambda: read_medqa(tmp_path / "medqa/test.jsonl"), "answer_idx"),
        (lambda: read_medmcqa(tmp_path / "dev.json"), "opa..opd"),
        (lambda: read_benchmark(tmp_path, "mmlu"), "MMLU CSV"),
        (lambda: read_benchmark(tmp_path, "pubmedqa"), "final_decision"),
    ]:
        with pytest.raises(ValueError, match="native layout") as err:
            call()
        assert layout_word in str(err.value) and "\n" not in str(err.value)


def _medmcqa_file(path: Path, cops: list[int | None]) -> Path:
    rows = []
    for i, cop in enumerate(cops):
        stem, options, _ = VIGNETTES[i % len(VIGNETTES)]
        row = {"id": f"mm{i}", "question": stem, **dict(zip(("opa", "opb", "opc", "opd"), options))}
        if cop is not None:
            row["cop"] = cop
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_medmcqa_cop_base_detected_0_and_1_based_give_the_same_targets(tmp_path):
    answers = [0, 3, 1, 2, 0, 3]
    zero = read_medmcqa(_medmcqa_file(tmp_path / "zero.json", answers))
    one = read_medmcqa(_medmcqa_file(tmp_path / "one.json", [a + 1 for a in answers]))
    assert [q.answer_index for q in zero] == [q.answer_index for q in one] == answers
    assert not zero.warnings and not one.warnings and not zero.skipped
    # through the eval loader too (the same rows lm-eval scores)
    from clinray.eval.tasks.utils import load_medmcqa

    rows = [
        list(load_medmcqa(test_file=str(tmp_path / f), data_dir=str(tmp_path))["test"])
        for f in ("zero.json", "one.json")
    ]
    assert [r["answer_index"] for r in rows[0]] == [r["answer_index"] for r in rows[1]] == answers


def test_medmcqa_ambiguous_cop_warns_with_the_setting_and_the_setting_overrides(tmp_path):
    path = _medmcqa_file(tmp_path / "dev.json", [1, 2, 3, 2])  # no 0 and no 4: either base fits
    got = read_medmcqa(path)
    assert [q.answer_index for q in got] == [0, 1, 2, 1]  # release JSON: 1-based by default
    (warning,) = got.warnings
    assert "ambiguous" in warning and "cop_base" in warning
    forced = read_medmcqa(path, cop_base=0)
    assert [q.answer_index for q in forced] == [1, 2, 3, 2] and not forced.warnings
    # a 0 anywhere means 0-based: the 4 is then out of range, a counted skip, not a silent mis-score
    mixed = read_medmcqa(_medmcqa_file(tmp_path / "mixed.json", [0, 1, 4, None]))
    assert [q.answer_index for q in mixed] == [0, 1, None] and mixed.num_skipped_by_reason == {
        "bad_answer": 1
    }
    from clinray.eval.tasks.utils import load_medmcqa

    rows = list(load_medmcqa(test_file=str(path), medmcqa_cop_base="0")["test"])  # clinray eval's cop_base
    assert [r["answer_index"] for r in rows] == [1, 2, 3, 2]
    with pytest.raises(ValueError, match="cop_base"):
        read_medmcqa(path, cop_base=2)


def test_five_option_file_in_the_four_option_task_is_an_error_naming_medqa_5(tmp_path):
    from clinray.eval.tasks import utils

    write_questions(tmp_path / "medqa/test.jsonl", _questions("medqa", "test", num_options=5), layout="medqa")
    from clinray.eval.harness import TASKS_DIR

    source = str(TASKS_DIR / "clinray_medqa_4.yaml")
    with pytest.raises(ValueError, match="clinray_medqa_5") as err:
        utils.load_medqa(
            test_file="medqa/test.jsonl", num_options=4, data_dir=str(tmp_path), config_source=source
        )
    assert "5-option" in str(err.value) and "\n" not in str(err.value)


def test_task_yaml_files_are_the_benchmarks_eval_files():
    import yaml

    from clinray.eval.harness import TASKS_DIR
    from clinray.eval.tasks import task_files

    for task, benchmark in [
        ("clinray_medqa_4", "medqa"),
        ("clinray_medqa_5", "medqa_5"),
        ("clinray_usmle", "usmle"),
        ("clinray_medmcqa", "medmcqa"),
        ("clinray_pubmedqa", "pubmedqa"),
    ]:
        assert tuple(task_files(task)) == EVAL_FILES[benchmark], task
    assert task_files("clinray_mmlu_anatomy") == ["mmlu/test/anatomy_test.csv"]
    text = (TASKS_DIR / "clinray_medqa_5_letter.yaml").read_text()
    kwargs = yaml.safe_load(text.replace("!function ", ""))["dataset_kwargs"]
    assert kwargs["benchmark"] == "medqa_5" and kwargs["num_options"] == 5


def test_decontamination_reports_the_ids_evaluation_logs(tmp_path):
    """The id a contamination hit names is the ``id`` of the eval sample log's row for that question."""
    from clinray.data.decontaminate import load_questions
    from clinray.eval.fixtures import write_sample_questions
    from clinray.eval.tasks import take_load_reports, utils

    root = write_sample_questions(tmp_path, num_questions=6, seed=3)
    d = str(root)
    eval_rows = {
        "medqa": utils.load_medqa(test_file="medqa/test.jsonl", data_dir=d),
        "medqa_5": utils.load_medqa(test_file="medqa_5/test.jsonl", benchmark="medqa_5", data_dir=d),
        "medmcqa": utils.load_medmcqa(test_file="medmcqa/dev.json", data_dir=d),
        "pubmedqa": utils.load_pubmedqa(test_file="pubmedqa/ori_pqal.json", data_dir=d),
    }
    for benchmark, dataset in eval_rows.items():
        decontam = load_questions(root, benchmark)
        rows = list(dataset["test"])
        assert [qid for qid, _ in decontam] == [r["id"] for r in rows], benchmark
        assert all(r["question"].endswith(stem) for (_, stem), r in zip(decontam, rows, strict=True))
    mmlu_eval = [
        r["id"]
        for subject in utils.MMLU_MEDICAL_SUBJECTS
        for r in utils.load_mmlu(subject=subject, data_dir=d)["test"]
    ]
    assert sorted(qid for qid, _ in load_questions(root, "mmlu")) == sorted(mmlu_eval)
    assert "mmlu/test/anatomy:1" in mmlu_eval
    take_load_reports()


def test_world_manifest_ids_are_what_clinray_qa_reads(world_dir, world_manifest):
    manifest = {q["id"] for q in world_manifest["questions"]}
    root = world_dir / "questions"
    for benchmark in ("medqa", "medqa_5", "medmcqa", "mmlu", "pubmedqa"):
        got = read_benchmark(root, benchmark)
        assert not got.skipped and not got.warnings, benchmark
        assert {q.id for q in got} <= manifest, benchmark
    train = read_questions(root / "medmcqa/train.json")
    assert {q.id for q in train} <= manifest and train.questions[0].explanation
    assert all(c["question_id"] in manifest for c in world_manifest["contaminated"])


def test_eval_notes_show_skipped_rows_once_per_task(tmp_path):
    from clinray.eval.tables import build_table, data_notes, write_tables

    report = {
        "source": "/data/medmcqa/dev.json",
        "num_questions": 3,
        "num_skipped": 1,
        "skipped_by_reason": {"bad_answer": 1},
        "skipped": [{"locator": "dev.json:2", "reason": "bad_answer", "detail": "cop 7 is not 1..4"}],
        "warnings": ["/data/medmcqa/dev.json: MedMCQA cop base is ambiguous; set cop_base"],
    }
    results = [
        {"model": m, "results": {"t": {"acc": 0.5}}, "num_questions": {"t": 3}, "data": {"t": report}}
        for m in ("a", "b")
    ]
    notes = data_notes(results)
    assert notes == [
        "t: skipped 1 of 4 question rows in /data/medmcqa/dev.json: 1 x bad_answer (first at dev.json:2: "
        "cop 7 is not 1..4)",
        "t: /data/medmcqa/dev.json: MedMCQA cop base is ambiguous; set cop_base",
    ]
    paths = write_tables(build_table(results, ["t"]), tmp_path, notes=notes)
    assert "- t: skipped 1 of 4" in paths["table_md"].read_text()
