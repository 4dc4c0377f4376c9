"""Generate the tiny clinical world: knowledge base, corpus in five formats, planted truth, questions.

``generate_world(out, seed=0, scale=1.0)`` writes the tree described in docs/tiny_world.md and returns
the manifest. Everything comes from ``random.Random`` instances seeded by strings derived from the seed
(Python hashes string seeds with SHA-512, so they are stable across runs and platforms), iteration is
always over sorted or constructed-in-order lists, and gzip headers carry no time or name: the same seed
and scale give byte-identical trees. The trade-off is that all documents are held in memory before
writing (about the size of the output), which is fine up to ``--scale 100`` (a few hundred MB).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

from clinray.synthetic import plant
from clinray.synthetic.filler import TOPICS, clinical_background, general_paragraphs, general_title
from clinray.synthetic.kb import Fact, build_kb, state_fact
from clinray.synthetic.questions import QuestionWriter
from clinray.synthetic.render import Doc

VERSION = 1
FORMATS = ("html", "jats", "medline", "text", "jsonl")
#: Facts stated per document, by format (MEDLINE abstracts are short, textbook chapters long).
FACTS_PER_DOC = {"html": 6, "jats": 10, "medline": 3, "text": 16, "jsonl": 5}
_WORLD_PARTS = ("manifest.json", "kb", "corpus", "sft", "questions")


@dataclasses.dataclass(kw_only=True, slots=True)
class WorldConfig:
    """What the tiny world contains; counts are at scale 1 and grow linearly with ``scale``."""

    seed: int = 0
    """Seed of every random choice: same seed and scale, byte-identical tree."""
    scale: float = 1.0
    """Corpus size multiplier (more documents and planted items; the knowledge base stays the same)."""
    num_facts: int = 200
    """Facts in the knowledge base; half train, half test."""
    statements_per_fact: int = 6
    """Times each fact is stated at scale 1 (never fewer than this at any scale)."""
    num_general_docs: int = 300
    """General-domain filler documents (half text, half JSONL)."""
    num_exact_duplicates: int = 10
    """Exact duplicates planted (text and JSONL)."""
    num_near_duplicates: int = 16
    """Near-duplicates planted, half in the removed band [0.88, 0.99], half in the kept band [0.40, 0.78]."""
    docs_per_passage: int = 12
    """Documents each repeated passage is inserted into."""
    num_junk: int = 8
    """Documents under 20 words."""
    num_contaminated: int = 3
    """Pretraining documents containing a MedQA test question verbatim."""

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(
                f"scale must be > 0 (1.0 is the test/demo world, 100 the benchmark one), got {self.scale}"
            )
        if self.num_facts < 10:
            raise ValueError(
                f"num_facts must be >= 10 (5-option questions take 4 distractors from the same half), got {self.num_facts}"
            )
        if self.statements_per_fact < 1:
            raise ValueError(f"statements_per_fact must be >= 1, got {self.statements_per_fact}")
        for name in (
            "num_general_docs",
            "num_exact_duplicates",
            "num_near_duplicates",
            "docs_per_passage",
            "num_junk",
            "num_contaminated",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def scaled(self, count: int, *, minimum: int = 1) -> int:
        return max(minimum, round(count * self.scale)) if count else 0


class _Ids:
    """Unique, zero-padded ids per kind; later ids sort after earlier ones."""

    _FORMATS = {
        "html": "gl-{:06d}",
        "text/clinical": "tb-{:06d}",
        "jsonl/clinical": "art-{:06d}",
        "text/general": "gen-{:06d}",
        "jsonl/general": "sp-{:06d}",
    }

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def next(self, fmt: str, domain: str = "clinical") -> str:
        key = fmt if fmt in ("html", "jats", "medline") else f"{fmt}/{domain}"
        n = self.counters[key] = self.counters.get(key, -1) + 1
        if fmt == "jats":
            return f"PMC{7_000_000 + n}"
        if fmt == "medline":
            return str(31_000_000 + n)
        return self._FORMATS[key].format(n)


class _Builder:
    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        self.facts = build_kb(cfg.num_facts, seed=cfg.seed)
        self.ids = _Ids()
        self.docs: list[Doc] = []
        self.manifest: dict = {"seed": cfg.seed, "scale": cfg.scale, "version": VERSION}

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{name}:{self.cfg.seed}:{self.cfg.scale}")

    # -- clinical documents -------------------------------------------------------------------------
    def _clinical_doc(self, fmt: str, chunk: list[tuple[Fact, int]], rng: random.Random) -> Doc:
        paras = [state_fact(f, variant=v) for f, v in chunk]
        first = chunk[0][0]
        doc = Doc(
            doc_id=self.ids.next(fmt), fmt=fmt, domain="clinical", fact_ids=[f.fact_id for f, _ in chunk]
        )
        if fmt == "medline":
            doc.title = f"Outcomes of {first.drug} therapy in {first.condition}: a cohort study."
            doc.paragraphs = [
                clinical_background(rng, num_sentences=2) + " " + paras[0],
                clinical_background(rng, num_sentences=2),
                " ".join(paras[1:]) or paras[0],
                clinical_background(rng, num_sentences=1),
            ]
            return doc
        if fmt == "jats":
            doc.pmid = str(29_000_000 + int(doc.doc_id.removeprefix("PMC")) - 7_000_000)
            doc.title = f"Clinical experience with {first.drug} and related agents"
        elif fmt == "html":
            doc.title = f"Guideline: management of {first.condition} and related conditions"
        elif fmt == "text":
            doc.title = f"Chapter: {first.condition} and other disorders"
        else:
            doc.title = f"Review: treatment options for {first.condition}"
        body = [clinical_background(rng, num_sentences=2)]
        for p in paras:
            body.append(p + (" " + clinical_background(rng, num_sentences=1) if rng.random() < 0.25 else ""))
        body.append(clinical_background(rng, num_sentences=3 if fmt == "jsonl" else 1))
        doc.paragraphs = body
        return doc

    def clinical_docs(self) -> None:
        """Each round states every fact once; a fact's format rotates by round, so it meets all five."""
        rng = self.rng("clinical")
        rounds = max(self.cfg.statements_per_fact, round(self.cfg.statements_per_fact * self.cfg.scale))
        slot = list(range(len(self.facts)))
        rng.shuffle(slot)
        for r in range(rounds):
            for k, fmt in enumerate(FORMATS):
                group = [j for j in range(len(self.facts)) if (slot[j] + r) % len(FORMATS) == k]
                rng.shuffle(group)
                per_doc = FACTS_PER_DOC[fmt]
                for i in range(0, len(group), per_doc):
                    chunk = [(self.facts[j], r + j) for j in group[i : i + per_doc]]
                    self.docs.append(self._clinical_doc(fmt, chunk, rng))

    def general_docs(self) -> None:
        rng = self.rng("general")
        for n in range(self.cfg.scaled(self.cfg.num_general_docs)):
            topic = TOPICS[n % len(TOPICS)]
            fmt = "text" if n % 2 == 0 else "jsonl"
            self.docs.append(
                Doc(
                    doc_id=self.ids.next(fmt, "general"),
                    fmt=fmt,
                    domain="general",
                    title=general_title(rng, topic),
                    paragraphs=general_paragraphs(rng, topic, num_words=rng.randint(200, 800)),
                )
            )

    # -- planted truth ------------------------------------------------------------------------------
    def plant_duplicates(self) -> set[str]:
        """Exact and near duplicates; returns the ids involved (kept out of passage planting)."""
        rng = self.rng("duplicates")
        cands = [d for d in self.docs if d.fmt in ("text", "jsonl")]
        rng.shuffle(cands)
        long_cands = [d for d in cands if d.num_words() >= 300]
        used: set[str] = set()
        exact, near = [], []
        for orig in cands[: self.cfg.scaled(self.cfg.num_exact_duplicates)]:
            fmt = orig.fmt if rng.random() < 0.25 else "jsonl"
            copy = Doc(
                doc_id=self.ids.next(fmt, orig.domain),
                fmt=fmt,
                domain=orig.domain,
                title=orig.title,
                raw=plant.exact_duplicate_text(orig.text(), rng=rng),
                fact_ids=list(orig.fact_ids),
            )
            self.docs.append(copy)
            exact.append({"doc_id": copy.doc_id, "duplicate_of": orig.doc_id})
            used |= {orig.doc_id, copy.doc_id}
        num_near = self.cfg.scaled(self.cfg.num_near_duplicates, minimum=2)
        free = [d for d in long_cands if d.doc_id not in used]
        # a quarter from clinical textbook chapters, so dedup is exercised on fact-bearing text too
        clinical = [d for d in free if d.domain == "clinical"][: num_near // 4]
        originals = (clinical + [d for d in free if d.domain == "general"])[:num_near]
        if len(originals) < num_near:
            raise ValueError(f"only {len(originals)} documents of 300+ words for {num_near} near-duplicates")
        by_id = {f.fact_id: f for f in self.facts}
        for n, orig in enumerate(originals):
            text, j = plant.near_duplicate(orig.text(), band="high" if n % 2 == 0 else "low", rng=rng)
            kept = [fid for fid in orig.fact_ids if by_id[fid].drug in text and by_id[fid].condition in text]
            copy = Doc(
                doc_id=self.ids.next(orig.fmt, orig.domain),
                fmt=orig.fmt,
                domain=orig.domain,
                title=orig.title,
                raw=text,
                fact_ids=kept,
            )
            self.docs.append(copy)
            near.append({"doc_id": copy.doc_id, "original": orig.doc_id, "jaccard": round(j, 6)})
            used |= {orig.doc_id, copy.doc_id}
        self.manifest["exact_duplicates"] = exact
        self.manifest["near_duplicates"] = near
        return used

    def plant_passages(self, excluded: set[str]) -> None:
        rng = self.rng("passages")
        eligible = [d for d in self.docs if d.fmt != "medline" and d.raw is None and d.doc_id not in excluded]
        out = []
        for n, text in enumerate(plant.PASSAGES):
            chosen = rng.sample(
                eligible, min(len(eligible), self.cfg.scaled(self.cfg.docs_per_passage, minimum=2))
            )
            for doc in chosen:
                doc.paragraphs.insert(rng.randint(1, len(doc.paragraphs)), text)
            ids = sorted(d.doc_id for d in chosen)
            out.append(
                {
                    "passage_id": f"P{n:02d}",
                    "text": text,
                    "num_bytes": len(text.encode()),
                    "doc_ids": ids,
                    "first_doc_id": ids[0],
                }
            )
        self.manifest["repeated_passages"] = out

    def plant_junk_and_contamination(self, qw: QuestionWriter) -> None:
        rng = self.rng("junk")
        junk = []
        for n in range(self.cfg.scaled(self.cfg.num_junk)):
            fmt, domain = ("text", "jsonl")[n % 2], ("clinical", "general")[(n // 2) % 2]
            doc = Doc(
                doc_id=self.ids.next(fmt, domain),
                fmt=fmt,
                domain=domain,
                raw=f"{plant.JUNK_TEXTS[n % len(plant.JUNK_TEXTS)]} Ref {n}.",
            )
            self.docs.append(doc)
            junk.append(doc.doc_id)
        self.manifest["junk"] = junk
        by_id = {f.fact_id: f for f in self.facts}
        medqa = [q for q in qw.entries if q["benchmark"] == "medqa" and q["split"] == "test"]
        contaminated = []
        for q in rng.sample(medqa, min(len(medqa), self.cfg.scaled(self.cfg.num_contaminated))):
            fact = by_id[q["fact_id"]]
            fmt = rng.choice(["text", "jsonl"])
            doc = Doc(
                doc_id=self.ids.next(fmt),
                fmt=fmt,
                domain="clinical",
                title="Board review practice",
                paragraphs=[
                    f"Practice question. {q['question']}",
                    state_fact(fact, variant=0),
                    clinical_background(rng, num_sentences=3),
                ],
                fact_ids=[fact.fact_id],
            )
            self.docs.append(doc)
            twins = [
                e for e in qw.entries if e["question"] == q["question"] and e["benchmark"].startswith("medqa")
            ]
            contaminated += [
                {"doc_id": doc.doc_id, "question_id": e["id"], "benchmark": e["benchmark"]} for e in twins
            ]
        self.manifest["contaminated"] = contaminated


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise ValueError(
                f"{out} is not empty and holds no world (no manifest.json); choose an empty folder"
            )
        for part in _WORLD_PARTS:
            target = out / part
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def generate_world(
    out: str | Path, *, seed: int = 0, scale: float = 1.0, config: WorldConfig | None = None
) -> dict:
    """Write the tiny world under ``out`` and return its manifest (also written to ``manifest.json``).

    Args:
        out: output folder; empty, missing, or a previous world (which is replaced).
        seed: seed of every random choice.
        scale: corpus size multiplier (1.0: a few seconds, about 2 MB; 100: a few hundred MB).
        config: full configuration; ``seed`` and ``scale`` are ignored when it is given.
    """
    from clinray.synthetic.corpus import write_corpus

    cfg = config if config is not None else WorldConfig(seed=seed, scale=scale)
    out = Path(out)
    _prepare_out(out)
    builder = _Builder(cfg)
    qw = QuestionWriter(builder.facts, seed=cfg.seed)
    qw.build()
    builder.clinical_docs()
    builder.general_docs()
    used = builder.plant_duplicates()
    builder.plant_junk_and_contamination(qw)
    builder.plant_passages(
        used | set(builder.manifest["junk"]) | {c["doc_id"] for c in builder.manifest["contaminated"]}
    )
    kb = out / "kb" / "facts.jsonl"
    kb.parent.mkdir(parents=True, exist_ok=True)
    kb.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in builder.facts))
    qw.write(out)
    manifest = builder.manifest
    manifest["documents"], manifest["corrupt"], num_bytes = write_corpus(out, builder.docs, builder.ids, cfg)
    manifest["questions"] = qw.entries
    manifest["counts"] = _counts(manifest, builder.facts, qw, num_bytes)
    order = [
        "seed",
        "scale",
        "version",
        "counts",
        "documents",
        "exact_duplicates",
        "near_duplicates",
        "repeated_passages",
        "junk",
        "corrupt",
        "contaminated",
        "questions",
    ]
    manifest = {k: manifest[k] for k in order}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def _counts(manifest: dict, facts: list[Fact], qw: QuestionWriter, num_bytes: int) -> dict:
    docs = manifest["documents"]
    counts = {
        "num_documents": len(docs),
        "num_clinical_documents": sum(d["domain"] == "clinical" for d in docs),
        "num_general_documents": sum(d["domain"] == "general" for d in docs),
        "num_words": sum(d["num_words"] for d in docs),
        "num_corpus_bytes": num_bytes,
        "num_facts": len(facts),
        "num_train_facts": sum(f.split == "train" for f in facts),
        "num_test_facts": sum(f.split == "test" for f in facts),
        "num_exact_duplicates": len(manifest["exact_duplicates"]),
        "num_near_duplicates_removed_band": sum(
            n["jaccard"] >= plant.HIGH_BAND[0] for n in manifest["near_duplicates"]
        ),
        "num_near_duplicates_kept_band": sum(
            n["jaccard"] <= plant.LOW_BAND[1] for n in manifest["near_duplicates"]
        ),
        "num_repeated_passages": len(manifest["repeated_passages"]),
        "num_passage_insertions": sum(len(p["doc_ids"]) for p in manifest["repeated_passages"]),
        "num_junk": len(manifest["junk"]),
        "num_corrupt": len(manifest["corrupt"]),
        "num_contaminated": len(manifest["contaminated"]),
        "num_questions": len(qw.entries),
        "num_sft_samples": len(qw.sft),
    }
    for fmt in FORMATS:
        counts[f"num_{fmt}_documents"] = sum(d["format"] == fmt for d in docs)
    return counts
