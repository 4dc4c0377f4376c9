"""Benchmark questions and SFT samples about the knowledge base, in the real benchmarks' file layouts.

Each question asks about exactly one fact; distractors are entities of the same kind (drugs,
conditions, mechanisms, findings, tests) of other facts of the same half (train or test), so option
frequency cannot give the answer away. Train facts get the training questions (MedQA train,
MedMCQA train, MMLU dev) and the SFT samples; test facts get the evaluation questions (MedQA test,
MedMCQA dev, MMLU test, PubMedQA). Writing the native layouts (rather than one clinray format) lets the
evaluation code be tested on exactly the parsing it will do on the real files; the files are written
by :mod:`clinray.qa`'s writers and the manifest's question ids are its stable ids, so the world cannot
drift from what evaluation, decontamination and the index read.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from clinray.models.chat_template import MCQ_SYSTEM_PROMPT, format_mcq, mcq_answer
from clinray.qa import PUBMEDQA_CHOICES, Question, format_medmcqa, format_medqa, format_mmlu, format_pubmedqa
from clinray.synthetic.kb import Fact, _cap, explanation

MMLU_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)
_GENERAL_INSTRUCTIONS = (
    ("Give one tip for keeping basil fresh.", "Keep the stems in a glass of water at room temperature."),
    (
        "Name a simple way to speed up a slow database query.",
        "Add an index on the columns used in the filter.",
    ),
    ("What should a beginner runner do before a race?", "Warm up for ten minutes with easy jogging."),
    ("Suggest a name for a small garden café.", "The Green Teacup."),
    ("How do I convert 2 kilometres to metres?", "Multiply by 1000: 2 kilometres are 2000 metres."),
    ("Write a one-line greeting for a new colleague.", "Welcome aboard, we are glad to have you with us."),
    ("Which planet is known as the red planet?", "Mars."),
    ("Give an antonym of 'generous'.", "Stingy."),
    (
        "Summarize: the meeting moved from Monday to Tuesday at noon.",
        "The meeting is now on Tuesday at noon.",
    ),
    ("List two primary colours.", "Red and blue."),
)


def _options(rng: random.Random, answer: str, pool: list[str], num_options: int) -> tuple[list[str], int]:
    distractors = sorted({p for p in pool if p != answer})
    options = rng.sample(distractors, num_options - 1)
    index = rng.randrange(num_options)
    options.insert(index, answer)
    return options, index


def _vignette(fact: Fact, rng: random.Random) -> str:
    age, sex = rng.randint(18, 80), rng.choice(["man", "woman"])
    return (
        f"A {age}-year-old {sex} presents with {fact.finding}. {_cap(fact.test)} confirms {fact.condition}. "
        f"Which drug is the most appropriate treatment?"
    )


def _mmlu_item(fact: Fact, subject: str, rng: random.Random) -> tuple[str, str, str]:
    """(question, answer, entity kind) for one MMLU subject."""
    if subject == "anatomy":
        return f"Which finding is characteristic of {fact.condition}?", fact.finding, "finding"
    if subject == "college_medicine":
        return f"What is the mechanism of action of {fact.drug}?", fact.mechanism, "mechanism"
    if subject == "medical_genetics":
        return f"Which test confirms the diagnosis of {fact.condition}?", fact.test, "test"
    if subject == "professional_medicine":
        return _vignette(fact, rng), fact.drug, "drug"
    return f"Which condition is {fact.drug} used to treat?", fact.condition, "condition"


class QuestionWriter:
    """Builds every benchmark file of the world and the manifest's question entries."""

    def __init__(self, facts: list[Fact], *, seed: int) -> None:
        self.facts = facts
        self.rng = random.Random(f"questions:{seed}")
        # Distractors come from facts of the same half: otherwise every test question would pair one
        # never-seen answer with drugs the SFT taught as answers, and a model fine-tuned without
        # pretraining would learn to avoid the right one (measured: 0.03 accuracy, far below chance).
        self.pools = {
            split: {
                k: [getattr(f, k) for f in facts if f.split == split]
                for k in ("drug", "condition", "mechanism", "finding", "test")
            }
            for split in ("train", "test")
        }
        self.entries: list[dict] = []
        self.sft: list[dict] = []
        self.stems: dict[str, str] = {}
        self.files: dict[str, str] = {}

    def _entry(self, q: Question, fact: Fact) -> None:
        # ``id`` is the question's clinray.qa id (what evaluation and decontamination report); ``split``
        # is the fact's half (train/test), whatever the file's own split name (dev, ori_pqal, ...)
        self.entries.append(
            {
                "id": q.id,
                "benchmark": q.benchmark,
                "split": fact.split,
                "fact_id": fact.fact_id,
                "answer": q.answer,
                "question": q.stem,
            }
        )
        self.stems[q.id] = q.stem

    def _medqa(self, split: str, facts: list[Fact]) -> tuple[list[Question], list[Question]]:
        four, five = [], []
        for n, fact in enumerate(facts):
            stem = _vignette(fact, self.rng)
            for bench, k, out in (("medqa", 4, four), ("medqa_5", 5, five)):
                options, idx = _options(self.rng, fact.drug, self.pools[fact.split]["drug"], k)
                native = f"{bench}-{split}-{n:04d}"
                q = Question.create(
                    benchmark=bench,
                    split=split,
                    native=native,
                    stem=stem,
                    options=options,
                    answer_index=idx,
                    meta={"meta_info": "step1"},
                )
                out.append(q)
                self._entry(q, fact)
                if bench == "medqa" and split == "train":
                    self._sft(native, "medqa", fact, stem, options, cot=n % 3 == 0)
        return four, five

    def _medmcqa(self, split: str, facts: list[Fact]) -> list[Question]:
        questions = []
        for n, fact in enumerate(facts):
            stem = f"{fact.drug} is used in the treatment of:"
            options, idx = _options(self.rng, fact.condition, self.pools[fact.split]["condition"], 4)
            native = f"medmcqa-{split}-{n:04d}"
            q = Question.create(
                benchmark="medmcqa",
                split=split,
                native=native,
                stem=stem,
                options=options,
                answer_index=idx,
                explanation=explanation(fact),
                meta={
                    "subject_name": "Pharmacology",
                    "topic_name": "Invented drugs",
                    "choice_type": "single",
                },
            )
            questions.append(q)
            self._entry(q, fact)
            if split == "train":
                self._sft(native, "medmcqa", fact, stem, options, cot=n % 3 == 1)
        return questions

    def _mmlu(self, split: str, facts: list[Fact]) -> dict[str, list[Question]]:
        rows: dict[str, list[Question]] = {s: [] for s in MMLU_SUBJECTS}
        for n, fact in enumerate(facts):
            subject = MMLU_SUBJECTS[n % len(MMLU_SUBJECTS)]
            stem, answer, kind = _mmlu_item(fact, subject, self.rng)
            options, idx = _options(self.rng, answer, self.pools[fact.split][kind], 4)
            # MMLU rows have no id: clinray.qa numbers them by row, from 1
            q = Question.create(
                benchmark="mmlu",
                split=split,
                native=f"{subject}:{len(rows[subject]) + 1}",
                stem=stem,
                options=options,
                answer_index=idx,
                meta={"subject": subject},
                own_id=False,
            )
            rows[subject].append(q)
            self._entry(q, fact)
        return rows

    def _pubmedqa(self, facts: list[Fact]) -> list[Question]:
        questions = []
        for n, fact in enumerate(facts):
            pmid = str(41_000_000 + n)
            yes = n % 2 == 0
            condition = (
                fact.condition
                if yes
                else self.rng.choice([c for c in self.pools[fact.split]["condition"] if c != fact.condition])
            )
            decision = "yes" if yes else "no"
            q = Question.create(
                benchmark="pubmedqa",
                split="ori_pqal",
                native=pmid,
                stem=f"Is {fact.drug} an effective treatment for {condition}?",
                options=PUBMEDQA_CHOICES,
                answer_index=PUBMEDQA_CHOICES.index(decision),
                explanation=f"{fact.drug} is used to treat {fact.condition}.",
                meta={
                    "contexts": [
                        f"{fact.drug} {fact.mechanism}.",
                        f"We reviewed patients with {condition} seen in a tertiary clinic.",
                    ],
                    "LABELS": ["BACKGROUND", "METHODS"],
                    "MESHES": ["Invented drugs"],
                    "YEAR": "2021",
                    "reasoning_required_pred": decision,
                    "reasoning_free_pred": decision,
                },
            )
            questions.append(q)
            self._entry(q, fact)
        return questions

    def _sft(self, qid: str, source: str, fact: Fact, stem: str, options: list[str], *, cot: bool) -> None:
        answer = fact.drug if source == "medqa" else fact.condition
        self.sft.append(
            {
                "id": f"sft-{qid}",
                "system": MCQ_SYSTEM_PROMPT,
                "prompter": format_mcq(stem, options),
                "assistant": mcq_answer(answer, reasoning=explanation(fact) if cot else None),
                "source": source,
                "has_cot": cot,
                "fact_id": fact.fact_id,
            }
        )

    def build(self) -> None:
        """Build every question file and the SFT samples in memory (``self.files``, ``self.entries``)."""
        train = [f for f in self.facts if f.split == "train"]
        test = [f for f in self.facts if f.split == "test"]
        files: dict[str, str] = {}
        for split, facts in (("train", train), ("test", test)):
            four, five = self._medqa(split, facts)
            files[f"questions/medqa/{split}.jsonl"] = format_medqa(four)
            files[f"questions/medqa_5/{split}.jsonl"] = format_medqa(five)
        for split, facts in (("train", train), ("dev", test)):
            files[f"questions/medmcqa/{split}.json"] = format_medmcqa(self._medmcqa(split, facts))
        for subject, qs in self._mmlu("dev", train[: 5 * len(MMLU_SUBJECTS)]).items():
            files[f"questions/mmlu/dev/{subject}_dev.csv"] = format_mmlu(qs)
        for subject, qs in self._mmlu("test", test).items():
            files[f"questions/mmlu/test/{subject}_test.csv"] = format_mmlu(qs)
        files["questions/pubmedqa/ori_pqal.json"] = format_pubmedqa(self._pubmedqa(test))
        for n, (prompt, reply) in enumerate(_GENERAL_INSTRUCTIONS):
            self.sft.append(
                {
                    "id": f"sft-general-{n:04d}",
                    "system": "You are a helpful assistant.",
                    "prompter": prompt,
                    "assistant": reply,
                    "source": "general",
                    "has_cot": False,
                    "fact_id": None,
                }
            )
        files["sft/train.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.sft)
        self.files = files

    def write(self, root: Path) -> None:
        """Write ``questions/`` and ``sft/train.jsonl`` under ``root`` (after :meth:`build`)."""
        for rel, text in sorted(self.files.items()):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
