"""Decontamination: drop (or flag) training text that copies evaluation test questions.

Evaluation questions are read from local files in their native layouts (:func:`load_questions`, through
:mod:`clinray.qa`): MedQA and its 5-option USMLE-style twin (``test.jsonl``), MedMCQA (``dev.json``, the
split evaluated, since the public test split has no answers), MMLU (``test/<subject>_test.csv``) and
PubMedQA (``ori_pqal.json``). Each question stem becomes a set of word ``n``-grams (13 by default, the
GPT-3 / Llama convention, over :func:`clinray.data.text.word_tokens`).

The rule is template-aware. Exam vignettes share boilerplate longer than 13 words ("..., respirations
are 17/min, and oxygen saturation is 98% on room air", "Which of the following is the most likely
..."), so an n-gram found in at least ``common_ngram_min_questions`` distinct stems is *template text*
and is no evidence for any of them. A document is contaminated by a question when it holds at least
``required(q) = min(d, max(min_distinct_ngrams, ceil(min_share * d)))`` distinct n-grams of the
question's ``d`` distinctive (non-template) ones: a long vignette must be copied in part (a quarter by
default), not brushed by one shared vitals sentence whose numbers happen to coincide; a stem with a
single distinctive n-gram needs that one. Hits are counted per benchmark and name the question ids that
:func:`load_questions` returns, which are the ids evaluation logs.

Trade-off: stems shorter than ``n`` words are skipped (counted as ``num_too_short``) rather than matched
whole: a short stem such as "X is used in the treatment of:" also appears in ordinary clinical prose,
and matching it would delete the very knowledge the model must learn. Likewise a question whose every
n-gram is template cannot be detected (counted). The n-gram index is a plain dict held by every worker
(a few MB for the real test sets).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clinray import storage
from clinray.data.decontam_config import BENCHMARKS, DecontamConfig  # noqa: F401  (re-exported)
from clinray.data.stage import DETAIL, REASON, GlobalStage, resolve
from clinray.data.text import word_tokens

logger = logging.getLogger(__name__)
STAGE = "decontaminate"
#: Template n-grams listed (most shared first) in ``decontaminate_summary.json``.
NUM_TEMPLATES_SHOWN = 20


def load_questions(root: str | Path, benchmark: str) -> list[tuple[str, str]]:
    """``(question_id, stem)`` of one benchmark's evaluation split, read from its native layout.

    Read by :func:`clinray.qa.read_benchmark`, so the ids are the ones evaluation logs for the same
    questions (``medqa/test/<id>``, ``mmlu/test/<subject>:<row>``, ``pubmedqa/ori_pqal/<pmid>``); rows it
    cannot read are logged with their reasons.
    """
    from clinray.qa import read_benchmark

    try:
        questions = read_benchmark(root, benchmark)
    except ValueError as exc:
        raise ValueError(f"{exc}; or drop {benchmark!r} from decontaminate.benchmarks") from None
    if questions.skipped:
        logger.warning(
            "decontaminate: skipped %d question rows of %s: %s",
            len(questions.skipped),
            questions.source,
            questions.describe_skipped(),
        )
    return [(q.id, q.stem) for q in questions]


def ngrams(text: str, n: int) -> set[str]:
    words = word_tokens(text)
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class ContaminationIndex:
    """The distinctive n-grams of every question stem, and how many of them a hit needs.

    Stems are keyed by their word tokens, so a question found in two benchmarks (MedQA and its 5-option
    twin) is one stem for the template count and a hit for both benchmarks.
    """

    ngram: int
    table: dict[str, list[int]]
    """Distinctive n-gram -> the stems (numbers) holding it."""
    members: list[list[tuple[str, str]]]
    """Stem number -> its ``(benchmark, question_id)`` pairs."""
    required: list[int]
    """Stem number -> distinct n-grams a document must share with it."""
    num_questions: dict[str, int]
    num_too_short: dict[str, int]
    """Per benchmark: stems shorter than ``ngram`` words (never matched)."""
    num_ngrams: dict[str, int]
    """Per benchmark: distinct n-grams of its stems."""
    num_template_ngrams: dict[str, int]
    """Per benchmark: how many of those are template (in ``common_ngram_min_questions`` stems or more)."""
    num_all_template: dict[str, int]
    """Per benchmark: stems whose every n-gram is template (cannot be detected)."""
    num_templates: int = 0
    """Distinct template n-grams dropped from the index (all benchmarks)."""
    templates: list[tuple[str, int]] = field(default_factory=list)
    """The most shared template n-grams with their stem counts, most shared first."""

    @classmethod
    def build(cls, cfg: DecontamConfig) -> ContaminationIndex:
        if not cfg.questions_root:
            raise ValueError("decontaminate.questions_root is not set; point it at the benchmarks' folder")
        stems: dict[tuple[str, ...], int] = {}
        members: list[list[tuple[str, str]]] = []
        grams_of: list[set[str]] = []
        num_q, short = Counter(), Counter()
        for bench in cfg.benchmarks:
            for qid, stem in load_questions(cfg.questions_root, bench):
                num_q[bench] += 1
                key = tuple(word_tokens(stem))
                if len(key) < cfg.ngram:
                    short[bench] += 1
                    continue
                if key not in stems:
                    stems[key] = len(members)
                    members.append([])
                    grams_of.append(ngrams(stem, cfg.ngram))
                members[stems[key]].append((bench, qid))
        shared = Counter(g for grams in grams_of for g in grams)
        limit = cfg.common_ngram_min_questions or math.inf
        template = {g for g, n in shared.items() if n >= limit}
        table: dict[str, list[int]] = {}
        required = []
        counts = {name: Counter() for name in ("ngrams", "template", "all_template")}
        for number, grams in enumerate(grams_of):
            distinctive = grams - template
            required.append(cfg.required(len(distinctive)))
            for g in distinctive:
                table.setdefault(g, []).append(number)
            for bench in {b for b, _ in members[number]}:
                counts["ngrams"][bench] += len(grams)
                counts["template"][bench] += len(grams) - len(distinctive)
                counts["all_template"][bench] += not distinctive
        top = sorted(((g, shared[g]) for g in template), key=lambda gn: (-gn[1], gn[0]))
        return cls(
            ngram=cfg.ngram,
            table=table,
            members=members,
            required=required,
            num_questions=dict(num_q),
            num_too_short=dict(short),
            num_ngrams=dict(counts["ngrams"]),
            num_template_ngrams=dict(counts["template"]),
            num_all_template=dict(counts["all_template"]),
            num_templates=len(template),
            templates=top[:NUM_TEMPLATES_SHOWN],
        )

    def summary(self) -> dict:
        """The index in numbers: per benchmark, and the most shared template n-grams."""
        per = {
            b: {
                "num_questions": n,
                "num_too_short": self.num_too_short.get(b, 0),
                "num_ngrams": self.num_ngrams.get(b, 0),
                "num_template_ngrams": self.num_template_ngrams.get(b, 0),
                "num_all_template": self.num_all_template.get(b, 0),
            }
            for b, n in self.num_questions.items()
        }
        top = [{"ngram": g, "num_questions": n} for g, n in self.templates]
        return {"ngram": self.ngram, "num_templates": self.num_templates, "benchmarks": per, "templates": top}

    def matches(self, text: str) -> dict[int, int]:
        """Stem number -> distinct distinctive n-grams ``text`` shares with it (any count)."""
        seen: dict[int, set[str]] = {}
        words = word_tokens(text)
        n, table = self.ngram, self.table
        for i in range(len(words) - n + 1):
            gram = " ".join(words[i : i + n])
            for number in table.get(gram, ()):
                seen.setdefault(number, set()).add(gram)
        return {number: len(grams) for number, grams in seen.items()}

    def hits(self, text: str) -> dict[str, set[str]]:
        """Benchmark -> ids of the questions ``text`` is contaminated by (empty dict: clean)."""
        found: dict[str, set[str]] = {}
        for number, count in self.matches(text).items():
            if count >= self.required[number]:
                for bench, qid in self.members[number]:
                    found.setdefault(bench, set()).add(qid)
        return found


def describe(hits: dict[str, set[str]]) -> str:
    """Hits as ``benchmark:id,id;benchmark:id`` (the rejects' detail, the SFT ``contamination`` column)."""
    return ";".join(f"{b}:{','.join(sorted(q))}" for b, q in sorted(hits.items()))


def parse_hits(detail: str) -> dict[str, list[str]]:
    """The inverse of :func:`describe`: benchmark -> question ids."""
    pairs = (part.split(":", 1) for part in (detail or "").split(";") if ":" in part)
    return {bench: ids.split(",") for bench, ids in pairs}


def contamination_summary(rejects: list[dict]) -> dict[str, dict]:
    """Per benchmark, the removed documents and the question ids they hit (from the rejects' details)."""
    out: dict[str, dict] = {}
    for row in rejects:
        if row["stage"] != STAGE or row["reason"] != "contaminated":
            continue
        for bench, qids in parse_hits(row["detail"]).items():
            entry = out.setdefault(bench, {"num_docs": 0, "question_ids": set()})
            entry["num_docs"] += 1
            entry["question_ids"].update(qids)
    return {
        b: {"num_docs": e["num_docs"], "question_ids": sorted(e["question_ids"])}
        for b, e in sorted(out.items())
    }


class DecontaminateStage(GlobalStage):
    """The ``decontaminate`` stage: the analysis is the question index; marking checks each document.

    No barrier: the index is built from the question files, not from the documents, so the marking
    streams. Counters: ``num_docs_contaminated``, per benchmark ``hits_<b>`` (documents) and
    ``questions_<b>`` (question hits); from the index, ``index_*_<b>`` (questions, too short, n-grams,
    template n-grams, questions left with no distinctive n-gram) and ``index_num_templates``.
    """

    name = STAGE
    barrier = False

    def __init__(self, cfg: DecontamConfig, *, sink_root: str, index: ContaminationIndex | None = None):
        super().__init__(sink_root=sink_root)
        self.cfg, self.index = cfg, index
        self.requires = ("text",) if cfg.action == "remove" else ("text", "metadata")

    def analyze(self, ds) -> ContaminationIndex:
        """Build the index (unless given) and write ``details/decontaminate_summary.json``."""
        index = self.index or ContaminationIndex.build(self.cfg)
        self.index = None  # the index travels to the workers once, through the object store
        rule = {
            k: getattr(self.cfg, k)
            for k in ("common_ngram_min_questions", "min_distinct_ngrams", "min_share")
        }
        summary = {"rule": rule, **index.summary()}
        path = storage.join(self.sink_root, "details", "decontaminate_summary.json")
        storage.write_text(path, json.dumps(summary, indent=2) + "\n")  # a local path or a URI
        return index

    def analysis_counters(self, analysis: ContaminationIndex) -> dict[str, int]:
        out = {"index_num_templates": analysis.num_templates}
        for name, counts in (
            ("questions", analysis.num_questions),
            ("too_short", analysis.num_too_short),
            ("ngrams", analysis.num_ngrams),
            ("template_ngrams", analysis.num_template_ngrams),
            ("all_template", analysis.num_all_template),
        ):
            out.update({f"index_{name}_{b}": n for b, n in counts.items()})
        return out

    def mark(
        self, rows: list[dict], analysis: ContaminationIndex, *, step: int, counters: Counter
    ) -> list[dict]:
        for row in rows:
            hits = analysis.hits(row.get("text") or "")
            if not hits:
                continue
            counters["num_docs_contaminated"] += 1
            for bench, qids in hits.items():
                counters[f"hits_{bench}"] += 1
                counters[f"questions_{bench}"] += len(qids)
            if self.cfg.action == "remove":
                row[REASON], row[DETAIL] = "contaminated", describe(hits)
            else:
                meta = json.loads(row.get("metadata") or "{}")
                meta["contamination"] = {b: sorted(q) for b, q in hits.items()}
                row["metadata"] = json.dumps(meta)
        return rows


def decontaminate(ds, cfg: DecontamConfig, *, sink_root: str, index: ContaminationIndex | None = None):
    """The ``decontaminate`` stage on a working-schema dataset (lazy; the index is built now)."""
    return DecontaminateStage(cfg, sink_root=str(sink_root), index=index).apply(ds)


def contamination_column(batch, *, index, columns: list[str]):
    """For SFT samples (pandas batch): add ``contamination`` (``""`` when clean) from the text ``columns``."""
    index = resolve(index)
    texts = batch[columns].fillna("").astype(str).agg("\n".join, axis=1)
    return batch.assign(contamination=[describe(index.hits(t)) for t in texts])
