"""Template text with no facts in it: general-domain filler and clinical background prose.

General filler (cooking, geography, sports, software, gardening, music, astronomy, travel) stands in for
SlimPajama; clinical background prose pads clinical documents to realistic lengths without stating any
fact. Sentences are drawn from templates with many slots, so two documents share almost no 5-word
shingles (no accidental near-duplicates). The trade-off is speed over realism: one ``rng.choice`` per
slot and plain string joins, which keeps ``--scale 100`` (hundreds of MB) to a minute or two.
"""

from __future__ import annotations

import random

_NAMES = [
    "Anna",
    "Bruno",
    "Chloé",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hiro",
    "Inès",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Otto",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tomás",
    "Uma",
    "Viktor",
]
_PLACES = [
    "São Paulo",
    "Zürich",
    "Kraków",
    "Reykjavík",
    "Montréal",
    "Oslo",
    "Lima",
    "Nairobi",
    "Hanoi",
    "Porto",
    "Tbilisi",
    "Valparaíso",
    "Cork",
    "Tromsø",
    "Bergen",
    "Quito",
    "Dakar",
    "Perth",
]
_TOPICS = {
    "cooking": (
        [
            "onions",
            "garlic",
            "lentils",
            "tomatoes",
            "saffron",
            "jalapeños",
            "crème fraîche",
            "basil",
            "chickpeas",
            "rice",
            "butter",
            "lemon zest",
            "mushrooms",
            "paprika",
            "fennel",
            "couscous",
        ],
        ["simmer", "roast", "whisk", "sauté", "fold", "braise", "grill", "season", "knead", "blanch"],
        [
            "{name} likes to {verb} the {a} with {b} before adding a pinch of salt.",
            "For a quick dinner in {place}, {verb} {a} and serve it beside warm {b}.",
            "Many cooks {verb} {a} for {n} minutes so that the {b} keeps its flavour.",
            "A good café in {place} serves {a} with {b} every {day}.",
            "The recipe asks you to {verb} {n} grams of {a} and then add {b}.",
        ],
    ),
    "geography": (
        [
            "rivers",
            "glaciers",
            "valleys",
            "plateaus",
            "fjords",
            "deltas",
            "volcanoes",
            "dunes",
            "lagoons",
            "forests",
            "islands",
            "canyons",
            "wetlands",
            "steppes",
        ],
        ["cross", "survey", "map", "explore", "photograph", "follow", "measure", "sketch"],
        [
            "Travellers who {verb} the {a} near {place} often mention the {b} to the north.",
            "The region around {place} is known for {a} and wide {b}.",
            "In {year}, a team set out to {verb} the {a} that feed the {b} of {place}.",
            "Local guides in {place} {verb} the {a} every {day} with small groups.",
            "About {n} kilometres of {a} separate {place} from the nearest {b}.",
        ],
    ),
    "sports": (
        [
            "sprinters",
            "goalkeepers",
            "cyclists",
            "rowers",
            "climbers",
            "skaters",
            "swimmers",
            "archers",
            "fencers",
            "midfielders",
            "coaches",
            "referees",
        ],
        ["train", "compete", "rest", "warm up", "stretch", "travel", "practise", "recover"],
        [
            "The {a} from {place} {verb} for {n} hours each {day} before the final.",
            "{name} told the {b} that the {a} would {verb} earlier this season.",
            "In {year} the {a} of {place} won {n} medals against strong {b}.",
            "Young {a} learn to {verb} with help from experienced {b}.",
            "After the match the {a} and the {b} {verb} together in {place}.",
        ],
    ),
    "software": (
        [
            "compilers",
            "databases",
            "caches",
            "schedulers",
            "parsers",
            "queues",
            "indexes",
            "threads",
            "sockets",
            "containers",
            "plugins",
            "test suites",
            "build scripts",
        ],
        ["refactor", "profile", "deploy", "benchmark", "document", "review", "debug", "package"],
        [
            "{name} decided to {verb} the {a} before touching the {b}.",
            "Our team in {place} spent {n} days trying to {verb} slow {a}.",
            "Good {a} make it easier to {verb} the {b} without surprises.",
            "Version {n} of the tool can {verb} {a} and {b} in one step.",
            "Since {year} the project has used {a} to {verb} its {b}.",
        ],
    ),
    "gardening": (
        [
            "tulips",
            "carrots",
            "hedges",
            "seedlings",
            "roses",
            "ferns",
            "beans",
            "apple trees",
            "herbs",
            "compost heaps",
            "potatoes",
            "sunflowers",
        ],
        ["prune", "water", "plant", "mulch", "harvest", "repot", "weed", "feed"],
        [
            "In spring {name} likes to {verb} the {a} next to the {b}.",
            "Gardeners in {place} {verb} their {a} every {day}.",
            "It takes about {n} weeks for {a} to grow taller than the {b}.",
            "Try to {verb} {a} early in the morning when the {b} are still cool.",
            "The allotment near {place} has {n} rows of {a} and a few {b}.",
        ],
    ),
    "music": (
        [
            "violins",
            "drummers",
            "choirs",
            "pianos",
            "trumpets",
            "cellists",
            "guitars",
            "organs",
            "flutes",
            "orchestras",
            "songwriters",
            "bands",
        ],
        ["rehearse", "tune", "record", "perform", "compose", "improvise", "arrange", "listen"],
        [
            "The {a} of {place} {verb} a new piece every {day}.",
            "{name} wrote that the {a} should {verb} before the {b} join in.",
            "In {year} a festival in {place} invited {n} {a}.",
            "Some {a} prefer to {verb} alone, while {b} like company.",
            "The hall holds {n} people who come to hear {a} and {b}.",
        ],
    ),
    "astronomy": (
        [
            "comets",
            "nebulae",
            "telescopes",
            "moons",
            "galaxies",
            "meteors",
            "pulsars",
            "planets",
            "eclipses",
            "star clusters",
            "observatories",
            "asteroids",
        ],
        ["observe", "catalogue", "track", "photograph", "model", "detect", "count", "chart"],
        [
            "From {place} you can {verb} {a} on clear nights every {day}.",
            "{name} used two {b} to {verb} faint {a} in {year}.",
            "About {n} {a} were added to the catalogue after the survey.",
            "Amateur astronomers {verb} {a} and share notes about the {b}.",
            "The new instrument in {place} can {verb} {a} behind bright {b}.",
        ],
    ),
}
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "morning", "evening"]
TOPICS = sorted(_TOPICS)

_CLINICAL_BACKGROUND = [
    "Treatment-naïve patients should be reviewed after {n} weeks and again at {m} months.",
    "Careful follow-up of renal function is advised in patients older than {age} years.",
    "In the {ward} ward, {n} of {m} patients completed the planned course without interruption.",
    "The {ward} team recorded adverse events on a standard form at every visit.",
    "Dose adjustments were made for {n} patients because of weight below {age} kilograms.",
    "Clinicians in the {ward} unit discussed each case at a weekly meeting.",
    "Adherence was checked by pill count at week {n} and at month {m}.",
    "The cohort included {n} adults with a median age of {age} years.",
    "Nurses in the {ward} clinic measured blood pressure twice at each visit.",
    "Referral to a specialist is recommended when symptoms persist beyond {n} days.",
    "Baseline laboratory values were collected within {n} days before the first dose.",
    "Across {m} centres, the {ward} service enrolled {n} participants.",
]
_WARDS = [
    "cardiology",
    "dermatology",
    "neurology",
    "respiratory",
    "renal",
    "geriatric",
    "paediatric",
    "infectious disease",
    "rheumatology",
    "endocrine",
    "outpatient",
    "emergency",
]


def general_sentence(rng: random.Random, topic: str) -> str:
    nouns, verbs, templates = _TOPICS[topic]
    return rng.choice(templates).format(
        name=rng.choice(_NAMES),
        place=rng.choice(_PLACES),
        verb=rng.choice(verbs),
        a=rng.choice(nouns),
        b=rng.choice(nouns),
        n=rng.randint(2, 400),
        year=rng.randint(1950, 2023),
        day=rng.choice(_DAYS),
    )


def general_paragraphs(rng: random.Random, topic: str, *, num_words: int) -> list[str]:
    """Paragraphs of about ``num_words`` words on ``topic`` (4 to 7 sentences each)."""
    paragraphs, total = [], 0
    while total < num_words:
        sentences = [general_sentence(rng, topic) for _ in range(rng.randint(4, 7))]
        paragraph = " ".join(sentences)
        total += paragraph.count(" ") + 1
        paragraphs.append(paragraph)
    return paragraphs


def general_title(rng: random.Random, topic: str) -> str:
    nouns = _TOPICS[topic][0]
    return f"{topic.capitalize()} notes: {rng.choice(nouns)} and {rng.choice(nouns)} in {rng.choice(_PLACES)}"


def clinical_background(rng: random.Random, *, num_sentences: int) -> str:
    """A paragraph of clinical-sounding prose that states no fact of the knowledge base."""
    return " ".join(
        rng.choice(_CLINICAL_BACKGROUND).format(
            n=rng.randint(2, 90), m=rng.randint(3, 48), age=rng.randint(18, 85), ward=rng.choice(_WARDS)
        )
        for _ in range(num_sentences)
    )
