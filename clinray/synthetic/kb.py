"""The tiny world's knowledge base: invented drugs, conditions, mechanisms, findings and tests.

Every name is built from syllables by a seeded ``random.Random``, so a model can only learn the facts
from the world's corpus (nothing here exists in real medicine). The trade-off: names are pronounceable
but meaningless, which is exactly what makes "pretraining on the corpus helps" measurable at toy scale.
Names are unique and no name is a substring of another, so a plain substring search counts statements.

Facts are stated through several paraphrase templates (:data:`RELATION_TEMPLATES`); learnability at toy
scale depends on that variety (see docs/tiny_world.md).
"""

from __future__ import annotations

import dataclasses
import random

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "pr",
    "tr",
    "st",
    "pl",
    "gl",
    "sk",
    "th",
    "ch",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ou"]
_CODAS = ["", "", "", "n", "r", "l", "s", "x", "m"]
_DRUG_SUFFIXES = [
    "tinib",
    "zumab",
    "pril",
    "olol",
    "vastin",
    "dronate",
    "tacept",
    "parin",
    "floxin",
    "prazole",
    "semide",
    "cyclin",
    "azepam",
    "mycin",
    "lukast",
    "gliptin",
]
_CONDITION_FORMS = [
    "{} syndrome",
    "{} disease",
    "{}itis",
    "{}osis",
    "{} fever",
    "{}emia",
    "{} palsy",
    "{} dystrophy",
]
_RECEPTOR_KINDS = ["receptor", "kinase", "channel", "transporter", "protease", "synthase"]
_MECHANISM_VERBS = {
    "receptor": ["blocks the {} receptor", "activates the {} receptor"],
    "kinase": ["inhibits {} kinase"],
    "channel": ["opens the {} channel", "blocks the {} channel"],
    "transporter": ["inhibits the {} transporter"],
    "protease": ["inhibits {} protease"],
    "synthase": ["suppresses {} synthase"],
}
_FINDING_ADJ = [
    "violet",
    "amber",
    "migrating",
    "painless",
    "symmetric",
    "nocturnal",
    "granular",
    "speckled",
    "recurrent",
    "bilateral",
    "crescent",
    "ring-shaped",
    "pale",
    "bronze",
]
_FINDING_SITE = [
    "palmar",
    "periorbital",
    "retinal",
    "scalp",
    "tongue",
    "nail-bed",
    "shin",
    "earlobe",
    "abdominal",
    "forearm",
    "lumbar",
    "plantar",
    "gingival",
    "axillary",
]
_FINDING_SIGN = [
    "patches",
    "nodules",
    "tremor",
    "plaques",
    "streaks",
    "papules",
    "flushing",
    "blisters",
    "spasms",
    "ulcers",
    "crusts",
    "tenderness",
]
_TEST_FORMS = [
    "the serum {} assay",
    "the {} skin test",
    "the urinary {} index",
    "a {} antibody panel",
    "the {} stain",
    "the {} breath test",
    "the plasma {} ratio",
]

#: Paraphrases of "drug treats condition"; a fact's statements cycle through all of them.
RELATION_TEMPLATES = (
    "{drug} is used to treat {condition}.",
    "Patients with {condition} are usually treated with {drug}.",
    "The first-line therapy for {condition} is {drug}.",
    "{drug} is indicated for the treatment of {condition}.",
    "In {condition}, clinicians prescribe {drug}.",
    "{condition} responds well to treatment with {drug}.",
)
MECHANISM_TEMPLATES = (
    "{drug} {mechanism}.",
    "The drug {drug} acts because it {mechanism}.",
    "Pharmacologically, {drug} {mechanism}.",
)
FINDING_TEMPLATES = (
    "{condition_cap} typically presents with {finding}.",
    "A characteristic finding in {condition} is {finding}.",
)
TEST_TEMPLATES = (
    "The diagnosis of {condition} is confirmed by {test}.",
    "{test_cap} is used to confirm {condition}.",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Fact:
    """One invented fact: a drug, the condition it treats, how it works, and how the condition shows."""

    fact_id: str
    drug: str
    condition: str
    mechanism: str
    finding: str
    test: str
    split: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _stem(rng: random.Random, num_syllables: int) -> str:
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(num_syllables)
    )


class _UniqueNames:
    """Rejects names equal to, containing, or contained in an earlier name (case-insensitive)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def accept(self, name: str) -> bool:
        low = name.lower()
        if any(low in other or other in low for other in self.names):
            return False
        self.names.append(low)
        return True


def _draw(rng: random.Random, used: _UniqueNames, make) -> str:
    for _ in range(10_000):
        name = make()
        if used.accept(name):
            return name
    raise ValueError("could not draw a unique invented name; reduce num_facts")


def build_kb(num_facts: int, *, seed: int) -> list[Fact]:
    """Build ``num_facts`` facts; the first half (rounded down) of a seeded shuffle is ``train``."""
    if num_facts < 10:
        raise ValueError(
            f"num_facts must be >= 10 (5-option questions take 4 distractors from the same half), got {num_facts}"
        )
    rng = random.Random(f"kb:{seed}")
    used = _UniqueNames()
    facts = []
    for i in range(num_facts):
        drug = _draw(rng, used, lambda: _cap(_stem(rng, rng.choice([1, 2])) + rng.choice(_DRUG_SUFFIXES)))
        condition = _draw(rng, used, lambda: rng.choice(_CONDITION_FORMS).format(_cap(_stem(rng, 2))))
        kind = rng.choice(_RECEPTOR_KINDS)
        target = _draw(
            rng, used, lambda: _stem(rng, 2) + rng.choice(["in", "ase", "ol", "ar"]) + f"-{rng.randint(1, 9)}"
        )
        mechanism = rng.choice(_MECHANISM_VERBS[kind]).format(target)
        finding = f"{rng.choice(_FINDING_ADJ)} {rng.choice(_FINDING_SITE)} {rng.choice(_FINDING_SIGN)}"
        test = rng.choice(_TEST_FORMS).format(_draw(rng, used, lambda: _cap(_stem(rng, 2))))
        facts.append(Fact(f"F{i:04d}", drug, condition, mechanism, finding, test, ""))
    order = list(range(num_facts))
    rng.shuffle(order)
    train = set(order[: num_facts // 2])
    return [dataclasses.replace(f, split="train" if i in train else "test") for i, f in enumerate(facts)]


def _slots(fact: Fact) -> dict[str, str]:
    return {
        "drug": fact.drug,
        "condition": fact.condition,
        "condition_cap": _cap(fact.condition),
        "mechanism": fact.mechanism,
        "finding": fact.finding,
        "test": fact.test,
        "test_cap": _cap(fact.test),
    }


def state_fact(fact: Fact, *, variant: int) -> str:
    """A short paragraph stating ``fact``: the relation in template ``variant`` plus one attribute sentence.

    Consecutive variants use different relation templates, so six statements use six paraphrases, and
    the second sentence cycles through mechanism, finding and test (each stated twice in six). Keeping
    statements to two sentences keeps the drug-condition relation a large share of the tokens, which
    is what a tiny model needs to learn it in minutes.
    """
    slots = _slots(fact)
    relation = RELATION_TEMPLATES[variant % len(RELATION_TEMPLATES)].format(**slots)
    kind, k = variant % 3, variant // 3
    if kind == 0:
        extra = MECHANISM_TEMPLATES[k % len(MECHANISM_TEMPLATES)]
    elif kind == 1:
        extra = FINDING_TEMPLATES[k % len(FINDING_TEMPLATES)]
    else:
        extra = TEST_TEMPLATES[k % len(TEST_TEMPLATES)]
    return f"{relation} {extra.format(**slots)}"


def explanation(fact: Fact) -> str:
    """A short mechanistic rationale for chain-of-thought answers (Figure 5)."""
    return (
        f"{fact.drug} {fact.mechanism}. {_cap(fact.condition)} presents with {fact.finding} and is confirmed by "
        f"{fact.test}; the pathway targeted by {fact.drug} drives {fact.condition}, so {fact.drug} is the "
        f"treatment of choice."
    )
