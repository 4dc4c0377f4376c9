"""Knowledge probe of the tiny world: does a model know which drug treats which held-out condition?

For each fact of a split, the corpus's condition-first relation sentences are cut before the drug
("Patients with {condition} are usually treated with") and the four drugs of that fact's MedQA question
are ranked by the summed log-probability of `` {drug}``: accuracy over all cloze items (chance 0.25)
and the mean margin, log p(true drug) minus the mean over the distractors. It needs no answer format,
so it reads pretraining directly: measured on the tiny world (``../shared/notes/fidelity.md``), a
probe of 0.65 or more after pretraining gave P+F 0.64-0.91 on the held-out questions, 0.54 gave chance.
The trade-off: it knows the tiny world's templates, so it is a demo and test instrument, not a
benchmark for real models.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["cloze_probe", "CLOZE_TEMPLATES"]

#: The relation templates of :mod:`clinray.synthetic.kb` that name the condition before the drug.
CLOZE_TEMPLATES = (
    "Patients with {condition} are usually treated with",
    "The first-line therapy for {condition} is",
    "In {condition}, clinicians prescribe",
    "{condition} responds well to treatment with",
)


def _options_by_answer(world: Path) -> dict[str, list[str]]:
    """Drug -> the four options of its MedQA question (train and test)."""
    out = {}
    for split in ("train", "test"):
        path = world / "questions" / "medqa" / f"{split}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out[row["answer"]] = list(row["options"].values())
    return out


def cloze_probe(
    model_dir: str | Path, world: str | Path, *, split: str = "test", device: str = "cpu"
) -> dict:
    """``{"accuracy", "margin", "items", "chance"}`` of the cloze probe on a split's facts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinray.models.scoring import score_continuations

    world = Path(world)
    facts = [json.loads(line) for line in (world / "kb" / "facts.jsonl").read_text().splitlines()]
    options = _options_by_answer(world)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    contexts, continuations, answers = [], [], []
    for fact in facts:
        if fact["split"] != split or fact["drug"] not in options:
            continue
        drugs = options[fact["drug"]]
        for template in CLOZE_TEMPLATES:
            contexts.append(
                tokenizer(template.format(condition=fact["condition"]), add_special_tokens=False)["input_ids"]
            )
            continuations.append([tokenizer(f" {d}", add_special_tokens=False)["input_ids"] for d in drugs])
            answers.append(drugs.index(fact["drug"]))
    if not contexts:
        raise ValueError(f"no {split} facts with a MedQA question under {world}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        scores = score_continuations(model, contexts, continuations, pad_id=pad, device=device)
    right, margin = 0, 0.0
    for row, answer in zip(scores, answers, strict=True):
        ll = [s for s, _ in row]
        right += int(max(range(len(ll)), key=ll.__getitem__) == answer)
        others = [v for i, v in enumerate(ll) if i != answer]
        margin += ll[answer] - sum(others) / len(others)
    return {
        "accuracy": right / len(answers),
        "margin": margin / len(answers),
        "items": len(answers),
        "chance": 0.25,
    }
