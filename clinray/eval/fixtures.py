"""Small question files in every native layout the tasks read, for tests and a world-less benchmark.

The tiny world (``clinray.synthetic``) writes the real demo questions; this module writes a handful of
invented ones in exactly the same layouts (MedQA JSONL with 4 and 5 options, USMLE JSONL, MedMCQA
release JSON with 1-based ``cop`` and hub-style Parquet with 0-based ``cop``, MMLU header-less CSV for
the 13 subjects, PubMedQA ``ori_pqal.json``), so the loaders and lm-eval's CLI can be tested without
depending on the world generator. The files are written by :mod:`clinray.qa`'s writers. The content is
deliberately meaningless.
"""

from __future__ import annotations

import random
from pathlib import Path

from clinray.eval.tasks.utils import MMLU_MEDICAL_SUBJECTS
from clinray.qa import PUBMEDQA_CHOICES, Question, write_questions

_SYLLABLES = ["ka", "lo", "mi", "ter", "zan", "vo", "rex", "dal", "pin", "sul", "mor", "ni", "qua", "bel"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def _question(rng: random.Random, num_options: int) -> tuple[str, list[str], int]:
    drug = _word(rng).capitalize()
    stem = f"A patient with {_word(rng)} syndrome is given {drug}. Which condition does {drug} treat?"
    options = [f"{_word(rng)} {_word(rng)} disease" for _ in range(num_options)]
    return stem, options, rng.randrange(num_options)


def _medqa(rng: random.Random, benchmark: str, split: str, i: int, num_options: int) -> Question:
    stem, options, answer = _question(rng, num_options)
    return Question.create(
        benchmark=benchmark,
        split=split,
        native=f"q{i}",
        stem=stem,
        options=options,
        answer_index=answer,
        meta={"meta_info": "step1"},
    )


def write_sample_questions(root: str | Path, *, num_questions: int = 8, seed: int = 0) -> Path:
    """Write invented questions in every supported layout under ``root``; return ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    for split in ("train", "test"):
        for bench, k in (("medqa", 4), ("medqa_5", 5)):
            questions = [_medqa(rng, bench, split, i, k) for i in range(num_questions)]
            write_questions(root / bench / f"{split}.jsonl", questions, layout="medqa")
    for name in ("sample_exam", "self_assessment"):
        questions = [_medqa(rng, "usmle", name, i, 5) for i in range(num_questions)]
        write_questions(root / "usmle" / f"{name}.jsonl", questions, layout="medqa")
    medmcqa = []
    for i in range(num_questions):
        stem, options, answer = _question(rng, 4)
        medmcqa.append(
            Question.create(
                benchmark="medmcqa",
                split="dev",
                native=f"m{i}",
                stem=stem,
                options=options,
                answer_index=answer,
                meta={"subject_name": "Pharmacology", "topic_name": None, "choice_type": "single"},
            )
        )
    for split in ("train", "dev"):
        write_questions(root / "medmcqa" / f"{split}.json", medmcqa, layout="medmcqa")  # cop 1-based
    write_questions(root / "medmcqa" / "validation.parquet", medmcqa, layout="medmcqa")  # cop 0-based
    for subject in MMLU_MEDICAL_SUBJECTS:
        questions = []
        for n in range(max(2, num_questions // 4)):
            stem, options, answer = _question(rng, 4)
            questions.append(
                Question.create(
                    benchmark="mmlu",
                    split="test",
                    native=f"{subject}:{n + 1}",
                    stem=stem,
                    options=options,
                    answer_index=answer,
                    meta={"subject": subject},
                    own_id=False,
                )
            )
        write_questions(root / "mmlu" / "test" / f"{subject}_test.csv", questions, layout="mmlu")
    pqal = []
    for i in range(num_questions):
        question = f"Does {_word(rng)} improve {_word(rng)} outcomes?"
        contexts = [f"We studied {_word(rng)} in {rng.randint(20, 200)} patients.", "Results varied."]
        pqal.append(
            Question.create(
                benchmark="pubmedqa",
                split="ori_pqal",
                native=str(10_000 + i),
                stem=question,
                options=PUBMEDQA_CHOICES,
                answer_index=PUBMEDQA_CHOICES.index(rng.choice(PUBMEDQA_CHOICES)),
                explanation="Unclear.",
                meta={"contexts": contexts, "LABELS": ["BACKGROUND", "RESULTS"]},
            )
        )
    write_questions(root / "pubmedqa" / "ori_pqal.json", pqal, layout="pubmedqa")
    return root
