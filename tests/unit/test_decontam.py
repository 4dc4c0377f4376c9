"""Decontamination: the world's planted contaminated documents caught and others clean; on realistic
USMLE-style vignettes, shared template phrasing is no evidence while a copied stem is removed."""

from __future__ import annotations

import json
from collections import Counter

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
    assert mmlu[0][0].startswith("mmlu/test/") and mmlu[0][1].endswith("?")  # clinray.qa ids


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
    rows = [{"question": s, "options": {"A": "yes", "B": "no"}, "answer_idx": "A"} for s in stems]
    (tmp_path / "medqa" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    idx = ContaminationIndex.build(DecontamConfig(questions_root=str(tmp_path), benchmarks=["medqa"]))
    assert idx.num_too_short == {"medqa": 1}
    text = "Intro. One two three four five six seven eight nine ten eleven twelve thirteen fourteen! Outro"
    assert idx.hits(text) == {"medqa": {"medqa/test/test:1"}}  # no id in the row: file stem and line
    # the stem has two 13-grams and a hit needs both (min_distinct_ngrams 2); 12 words hold none
    assert idx.hits("two three four five six seven eight nine ten eleven twelve thirteen fourteen") == {}
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


# --- template-aware rule on realistic vignettes -------------------------------------------------------

#: Twelve invented USMLE-style vignettes (MedQA layout). Like real exam items they share boilerplate
#: longer than 13 words: the vitals sentence ("..., respirations are 17/min, and oxygen saturation is 98%
#: on room air") and the lead-ins ("Which of the following is the most likely diagnosis?").
VIGNETTES = [
    "A 34-year-old woman comes to the physician because of a 3-week history of fatigue, low-grade fever, "
    "and pain in the small joints of both hands. She takes no medications. Her temperature is 37.9°C "
    "(100.2°F), pulse is 92/min, respirations are 17/min, and oxygen saturation is 98% on room air. "
    "Examination shows an erythematous rash over the cheeks and the bridge of the nose that spares the "
    "nasolabial folds. Laboratory studies show a leukocyte count of 3,100/mm3 and a platelet count of "
    "96,000/mm3. Which of the following is the most likely diagnosis?",
    "A 58-year-old man comes to the emergency department because of a 2-day history of productive cough "
    "with rust-colored sputum and right-sided pleuritic chest pain. He has smoked one pack of cigarettes "
    "daily for 35 years. His temperature is 39.1°C (102.4°F), pulse is 108/min, respirations are 17/min, "
    "and oxygen saturation is 98% on room air. Crackles are heard over the right lower lung field, and an "
    "x-ray of the chest shows consolidation of the right lower lobe. Which of the following is the most "
    "likely causal organism?",
    "A 23-year-old woman comes to the emergency department because of fever, chills, and left flank pain "
    "for 2 days. She has had burning with urination for 1 week. Her temperature is 39.4°C (102.9°F), pulse "
    "is 114/min, respirations are 17/min, and oxygen saturation is 98% on room air. There is left "
    "costovertebral angle tenderness. Urinalysis shows numerous leukocytes and white blood cell casts. "
    "Which of the following is the most appropriate next step in management?",
    "A 72-year-old woman is brought to the emergency department 1 hour after the sudden onset of weakness "
    "of her right arm and difficulty speaking. She has hypertension and atrial fibrillation and stopped "
    "taking warfarin 1 month ago. Her pulse is 96/min and irregularly irregular, respirations are 17/min, "
    "and oxygen saturation is 98% on room air. She has a right facial droop and a nonfluent aphasia. A CT "
    "scan of the head without contrast shows no hemorrhage. Which of the following is the most appropriate "
    "next step in management?",
    "A 45-year-old man comes to the physician because of burning epigastric pain that improves with meals "
    "for 4 months. He takes ibuprofen daily for chronic back pain. His temperature is 37°C (98.6°F), pulse "
    "is 76/min, respirations are 17/min, and blood pressure is 128/82 mm Hg. Abdominal examination shows "
    "mild epigastric tenderness without guarding. A urea breath test is positive. Which of the following "
    "is the most likely cause of this patient's symptoms?",
    "A 29-year-old woman comes to the physician because of palpitations, heat intolerance, and a 5-kg "
    "weight loss over 2 months despite an increased appetite. Her temperature is 37.4°C (99.3°F), pulse is "
    "112/min, respirations are 17/min, and blood pressure is 138/64 mm Hg. Examination shows a diffusely "
    "enlarged, nontender thyroid gland, proptosis, and a fine tremor of the outstretched hands. Which of "
    "the following is the most likely cause of this patient's symptoms?",
    "A 64-year-old man comes to the emergency department because of shortness of breath and swelling of "
    "both legs that have worsened over 2 weeks. He had a myocardial infarction 3 years ago. His temperature "
    "is 37°C (98.6°F), pulse is 104/min, respirations are 24/min, and blood pressure is 146/92 mm Hg. "
    "Examination shows jugular venous distention, bibasilar crackles, and 2+ pitting edema of the lower "
    "extremities. An S3 gallop is heard at the apex. Which of the following is the most appropriate "
    "pharmacotherapy?",
    "A 6-year-old boy is brought to the physician because of a 2-day history of dark urine and puffiness "
    "around his eyes. Three weeks ago, he had a sore throat that resolved without treatment. His "
    "temperature is 37°C (98.6°F), pulse is 94/min, respirations are 17/min, and blood pressure is 134/88 "
    "mm Hg. There is periorbital edema. Urinalysis shows red blood cell casts and 2+ protein. Which of the "
    "following is the most likely diagnosis?",
    "A 31-year-old woman comes to the emergency department 20 minutes after the onset of shortness of "
    "breath and sharp left-sided chest pain that worsens with inspiration. She returned from a 14-hour "
    "flight 2 days ago and takes an oral contraceptive. Her temperature is 37.6°C (99.7°F), pulse is "
    "118/min, respirations are 26/min, and blood pressure is 112/70 mm Hg. Oxygen saturation is 89% on "
    "room air. Her left calf is swollen and tender. Which of the following is the most appropriate next "
    "step in management?",
    "A 52-year-old man comes to the physician because of fatigue and increased thirst and urination for 3 "
    "months. He is 175 cm (5 ft 9 in) tall and weighs 104 kg (229 lb); BMI is 34 kg/m2. His temperature is "
    "37°C (98.6°F), pulse is 80/min, respirations are 17/min, and blood pressure is 142/90 mm Hg. "
    "Examination shows velvety hyperpigmented plaques on the neck. His fasting serum glucose concentration "
    "is 168 mg/dL, and his hemoglobin A1c is 8.1%. Which of the following is the most appropriate "
    "pharmacotherapy?",
    "A 19-year-old college student is brought to the emergency department because of fever, severe "
    "headache, and neck stiffness for 12 hours. He lives in a dormitory. His temperature is 39.8°C "
    "(103.6°F), pulse is 124/min, respirations are 22/min, and blood pressure is 92/56 mm Hg. Examination "
    "shows a nonblanching petechial rash on the trunk and legs. Flexion of the neck causes flexion of the "
    "hips and knees. Which of the following is the most likely causal organism?",
    "A 40-year-old woman comes to the physician because of episodes of colicky right upper quadrant pain "
    "after fatty meals for 2 months. Her temperature is 37°C (98.6°F), pulse is 84/min, respirations are "
    "17/min, and blood pressure is 124/78 mm Hg. Physical examination shows no abnormalities. "
    "Ultrasonography of the abdomen shows multiple gallstones in a thin-walled gallbladder. Which of the "
    "following is the most likely cause of this patient's symptoms?",
]

#: Textbook prose written from no question: its only overlap with the vignettes is their boilerplate
#: (a vitals sentence, a lead-in), with a pulse that happens to equal one vignette's.
TEXTBOOK = (
    "Community-acquired pneumonia in a previously healthy adult usually begins with fever, chills and a "
    "cough productive of purulent sputum. In a typical presentation the temperature is 38.5°C (101.3°F), "
    "pulse is 108/min, respirations are 17/min, and oxygen saturation is 98% on room air. Examination "
    "shows dullness to percussion and bronchial breath sounds over the affected lobe. Which of the "
    "following is the most likely cause of this patient's symptoms? Streptococcus pneumoniae remains the "
    "most common answer. Similarly, in uncomplicated "
    "peptic ulcer disease the temperature is 37°C (98.6°F), pulse is 76/min, respirations are 17/min, and "
    "blood pressure is normal."
)

#: Prose whose only overlap with the vignettes is template n-grams (each in 3 vignettes or more).
TEMPLATE_ONLY = (
    "Lobar pneumonia can be mild: in one series the pulse is 101/min, respirations are 17/min, and "
    "oxygen saturation is 98% on room air. Which of the following is the most likely cause of this "
    "patient's symptoms? Exam questions often end this way."
)
OLD_RULE = {"common_ngram_min_questions": 0, "min_distinct_ngrams": 1, "min_share": 0.0}
"""The rule before templates were recognized: any shared 13-gram is a hit."""


@pytest.fixture(scope="module")
def vignettes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vignettes")
    (root / "medqa").mkdir()
    options = {"A": "first", "B": "second", "C": "third", "D": "fourth"}
    rows = [{"question": v, "options": options, "answer_idx": "A", "answer": "first"} for v in VIGNETTES]
    (root / "medqa" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _index(root, **rule) -> ContaminationIndex:
    return ContaminationIndex.build(DecontamConfig(questions_root=str(root), benchmarks=["medqa"], **rule))


def _ids(root) -> dict[str, str]:
    """Stem -> the id ``load_questions`` gives it (the id evaluation logs)."""
    return {stem: qid for qid, stem in load_questions(root, "medqa")}


def test_shared_boilerplate_is_template_not_evidence(vignettes_root):
    index = _index(vignettes_root)
    templates = dict(index.templates)
    assert templates["min respirations are 17 min and oxygen saturation is 98 on room air"] == 3
    assert templates["which of the following is the most likely cause of this patient s"] == 3
    assert index.num_templates == 3 and index.num_template_ngrams == {"medqa": 9}
    assert index.num_all_template == {"medqa": 0}  # every vignette keeps distinctive n-grams
    assert all(16 <= r <= 25 for r in index.required)  # a quarter of 70-100 distinctive n-grams


def test_textbook_paragraph_sharing_only_template_phrasing_is_kept(vignettes_root):
    index = _index(vignettes_root)
    assert index.hits(TEMPLATE_ONLY) == {}
    assert len(_index(vignettes_root, **OLD_RULE).hits(TEMPLATE_ONLY)["medqa"]) == 6
    # Boilerplate whose numbers happen to equal one vignette's (pulse 76/min, 108/min) is distinctive,
    # but it is a few n-grams of a long stem: under the share, kept; by count alone, flagged.
    assert index.hits(TEXTBOOK) == {}
    assert len(_index(vignettes_root, min_share=0.0).hits(TEXTBOOK)["medqa"]) == 3
    assert len(_index(vignettes_root, **OLD_RULE).hits(TEXTBOOK)["medqa"]) == 6


def test_paragraph_copying_one_stem_is_removed_with_that_question_id(vignettes_root, tmp_path):
    from clinray.data.decontaminate import DecontaminateStage

    ids = _ids(vignettes_root)
    copied = "Study guide, item 9. " + VIGNETTES[8] + " Answer: CT pulmonary angiography."
    quoted = "From a forum: " + ". ".join(VIGNETTES[1].split(". ")[:2]) + ". What would you do?"
    rows = [
        {"id": "copy", "text": copied, "metadata": None},
        {"id": "quote", "text": quoted, "metadata": None},
        {"id": "textbook", "text": TEXTBOOK, "metadata": None},
    ]
    cfg = DecontamConfig(questions_root=str(vignettes_root), benchmarks=["medqa"])
    stage = DecontaminateStage(cfg, sink_root=str(tmp_path))
    counters = Counter()
    marked = stage.mark(rows, stage.analyze(None), step=0, counters=counters)
    assert [(r["id"], r.get("_reason"), r.get("_detail")) for r in marked] == [
        ("copy", "contaminated", f"medqa:{ids[VIGNETTES[8]]}"),
        ("quote", "contaminated", f"medqa:{ids[VIGNETTES[1]]}"),  # two sentences of the case: a quarter
        ("textbook", None, None),
    ]
    assert counters == {"num_docs_contaminated": 2, "hits_medqa": 2, "questions_medqa": 2}
    summary = json.loads((tmp_path / "details" / "decontaminate_summary.json").read_text())
    assert summary["rule"]["min_share"] == 0.25 and summary["benchmarks"]["medqa"]["num_template_ngrams"] == 9
    flag = DecontaminateStage(
        DecontamConfig(questions_root=str(vignettes_root), benchmarks=["medqa"], action="flag"),
        sink_root=str(tmp_path),
    )
    assert flag.requires == ("text", "metadata")
    (row,) = flag.mark(
        [{"id": "copy", "text": copied, "metadata": '{"a": 1}'}],
        stage.analyze(None),
        step=0,
        counters=counters,
    )
    assert json.loads(row["metadata"]) == {"a": 1, "contamination": {"medqa": [ids[VIGNETTES[8]]]}}


def test_twin_benchmarks_count_a_stem_once(vignettes_root, tmp_path):
    """MedQA's 5-option twin repeats the 4-option stems: one stem for the template count, a hit for both."""
    import shutil

    shutil.copytree(vignettes_root / "medqa", tmp_path / "medqa")
    shutil.copytree(vignettes_root / "medqa", tmp_path / "medqa_5")
    index = ContaminationIndex.build(
        DecontamConfig(questions_root=str(tmp_path), benchmarks=["medqa", "medqa_5"])
    )
    assert index.num_templates == 3
    hits = index.hits(VIGNETTES[0])
    assert set(hits) == {"medqa", "medqa_5"} and all(len(q) == 1 for q in hits.values())


def test_required_count_and_rule_settings():
    cfg = DecontamConfig()
    assert [cfg.required(d) for d in (0, 1, 2, 3, 8, 9, 40, 100)] == [0, 1, 2, 2, 2, 3, 10, 25]
    assert DecontamConfig(min_share=0.0).required(100) == 2
    for bad, match in (
        ({"common_ngram_min_questions": 1}, "common_ngram_min_questions"),
        ({"min_distinct_ngrams": 0}, "min_distinct_ngrams"),
        ({"min_share": 1.5}, "min_share"),
    ):
        with pytest.raises(ValueError, match=match):
            DecontamConfig(**bad)


def test_contamination_summary_reads_the_rejects_details():
    from clinray.data.decontaminate import contamination_summary, parse_hits

    hits = {"medqa": {"medqa/test/a", "medqa/test/b"}, "mmlu": {"mmlu/test/anatomy:3"}}
    assert {b: set(q) for b, q in parse_hits(describe(hits)).items()} == hits
    rows = [
        {"stage": "decontaminate", "reason": "contaminated", "detail": describe(hits)},
        {"stage": "decontaminate", "reason": "contaminated", "detail": "medqa:medqa/test/a"},
        {"stage": "minhash", "reason": "near_duplicate", "detail": "cluster kept x"},
    ]
    assert contamination_summary(rows) == {
        "medqa": {"num_docs": 2, "question_ids": ["medqa/test/a", "medqa/test/b"]},
        "mmlu": {"num_docs": 1, "question_ids": ["mmlu/test/anatomy:3"]},
    }
