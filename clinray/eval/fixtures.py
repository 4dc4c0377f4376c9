"""Small question files in every native layout the tasks read, for tests and a world-less benchmark.

The tiny world (``clinray.synthetic``) writes the real demo questions; this module writes a handful of
invented ones in exactly the same layouts (MedQA JSONL with 4 and 5 options, USMLE JSONL, MedMCQA
release JSON with 1-based ``cop`` and hub-style Parquet with 0-based ``cop``, MMLU header-less CSV for
the 13 subjects, PubMedQA ``ori_pqal.json``), so the loaders and lm-eval's CLI can be tested without
depending on the world generator. The content is deliberately meaningless.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from clinray.eval.tasks.utils import LETTERS, MMLU_MEDICAL_SUBJECTS

_SYLLABLES = ["ka", "lo", "mi", "ter", "zan", "vo", "rex", "dal", "pin", "sul", "mor", "ni", "qua", "bel"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def _question(rng: random.Random, num_options: int) -> tuple[str, list[str], int]:
    drug = _word(rng).capitalize()
    stem = f"A patient with {_word(rng)} syndrome is given {drug}. Which condition does {drug} treat?"
    options = [f"{_word(rng)} {_word(rng)} disease" for _ in range(num_options)]
    return stem, options, rng.randrange(num_options)


def _medqa_line(rng: random.Random, i: int, num_options: int) -> dict:
    stem, options, answer = _question(rng, num_options)
    letters = LETTERS[:num_options]
    return {
        "id": f"q{i}",
        "question": stem,
        "options": dict(zip(letters, options, strict=True)),
        "answer_idx": letters[answer],
        "answer": options[answer],
        "meta_info": "step1",
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_sample_questions(root: str | Path, *, num_questions: int = 8, seed: int = 0) -> Path:
    """Write invented questions in every supported layout under ``root``; return ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    for split in ("train", "test"):
        _write_jsonl(
            root / "medqa" / f"{split}.jsonl", [_medqa_line(rng, i, 4) for i in range(num_questions)]
        )
        _write_jsonl(
            root / "medqa_5" / f"{split}.jsonl", [_medqa_line(rng, i, 5) for i in range(num_questions)]
        )
    for name in ("sample_exam", "self_assessment"):
        _write_jsonl(root / "usmle" / f"{name}.jsonl", [_medqa_line(rng, i, 5) for i in range(num_questions)])
    medmcqa = []
    for i in range(num_questions):
        stem, options, answer = _question(rng, 4)
        medmcqa.append(
            {
                "id": f"m{i}",
                "question": stem,
                "opa": options[0],
                "opb": options[1],
                "opc": options[2],
                "opd": options[3],
                "cop": answer + 1,
                "exp": "",
                "subject_name": "Pharmacology",
                "topic_name": None,
                "choice_type": "single",
            }
        )
    for split in ("train", "dev"):
        _write_jsonl(root / "medmcqa" / f"{split}.json", medmcqa)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{**r, "cop": r["cop"] - 1} for r in medmcqa]),
        root / "medmcqa" / "validation.parquet",
    )
    (root / "mmlu" / "test").mkdir(parents=True, exist_ok=True)
    for subject in MMLU_MEDICAL_SUBJECTS:
        with (root / "mmlu" / "test" / f"{subject}_test.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            for _ in range(max(2, num_questions // 4)):
                stem, options, answer = _question(rng, 4)
                writer.writerow([stem, *options, LETTERS[answer]])
    pqal = {}
    for i in range(num_questions):
        pqal[str(10_000 + i)] = {
            "QUESTION": f"Does {_word(rng)} improve {_word(rng)} outcomes?",
            "CONTEXTS": [f"We studied {_word(rng)} in {rng.randint(20, 200)} patients.", "Results varied."],
            "LABELS": ["BACKGROUND", "RESULTS"],
            "final_decision": rng.choice(["yes", "no", "maybe"]),
            "LONG_ANSWER": "Unclear.",
        }
    (root / "pubmedqa").mkdir(parents=True, exist_ok=True)
    (root / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(pqal, indent=1))
    return root
