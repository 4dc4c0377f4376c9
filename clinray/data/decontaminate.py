"""Decontamination: drop (or flag) training text that shares an n-gram with an evaluation test set.

Evaluation questions are read from local files in their native layouts (docs/tiny_world.md
``questions/``): MedQA and its 5-option USMLE-style twin (``test.jsonl``), MedMCQA (``dev.json``, the
split evaluated, since the public test split has no answers), MMLU (``test/<subject>_test.csv``) and
PubMedQA (``ori_pqal.json``). Each question stem becomes a set of word ``n``-grams (13 by default, the
GPT-3 / Llama convention, over :func:`clinray.data.text.word_tokens`); a document is contaminated by a
question when it contains any of them. Hits are counted per benchmark.

Trade-off: stems shorter than ``n`` words are skipped (counted as ``num_too_short``) rather than matched
whole: a short stem such as "X is used in the treatment of:" also appears in ordinary clinical prose,
and matching it would delete the very knowledge the model must learn. The n-gram index is a plain
dict held by every worker (a few MB for the real test sets).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from clinray.data.stage import DETAIL, REASON, Accountant, batch_key, table_rows
from clinray.data.text import word_tokens

logger = logging.getLogger(__name__)
STAGE = "decontaminate"
#: Benchmarks known to the loader, by folder name under the questions root.
BENCHMARKS = ("medqa", "medqa_5", "medmcqa", "mmlu", "pubmedqa")


@dataclass(kw_only=True, slots=True)
class DecontamConfig:
    """Decontamination against evaluation test sets."""

    enabled: bool = True
    """Run the stage (it also needs ``questions_root``)."""
    questions_root: str | None = None
    """Folder holding the benchmarks in their native layouts (``medqa/test.jsonl``, ``mmlu/test/*.csv``, ...)."""
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    """Which benchmark folders to read; each must exist under ``questions_root``."""
    ngram: int = 13
    """Words per n-gram; a shared n-gram with a question stem is a hit."""
    action: Literal["remove", "flag"] = "remove"
    """``remove``: drop hits (reason ``contaminated``); ``flag``: keep them, listed in ``metadata.contamination``."""

    def __post_init__(self):
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"decontaminate.benchmarks {unknown} unknown; choose from {list(BENCHMARKS)}")
        if self.ngram < 3:
            raise ValueError(f"decontaminate.ngram must be >= 3 (13 is the convention), got {self.ngram}")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _require(path: Path, benchmark: str) -> Path:
    if not path.exists():
        raise ValueError(
            f"{benchmark} test set not found at {path}; put it there in its native layout "
            f"(see docs/tiny_world.md 'questions/') or drop {benchmark!r} from decontaminate.benchmarks"
        )
    return path


def load_questions(root: str | Path, benchmark: str) -> list[tuple[str, str]]:
    """``(question_id, stem)`` of one benchmark's evaluation split, read from its native layout."""
    root = Path(root) / benchmark
    if benchmark in ("medqa", "medqa_5"):
        rows = _jsonl(_require(root / "test.jsonl", benchmark))
        return [(r.get("id") or f"{benchmark}-test-{i:04d}", r["question"]) for i, r in enumerate(rows)]
    if benchmark == "medmcqa":
        rows = _jsonl(_require(root / "dev.json", benchmark))
        return [(r.get("id") or f"medmcqa-dev-{i:05d}", r["question"]) for i, r in enumerate(rows)]
    if benchmark == "mmlu":
        out = []
        for path in sorted(_require(root / "test", benchmark).glob("*_test.csv")):
            subject = path.name[: -len("_test.csv")]
            with path.open(encoding="utf-8", newline="") as f:
                out += [(f"mmlu-{subject}-{i:04d}", row[0]) for i, row in enumerate(csv.reader(f)) if row]
        return out
    if benchmark == "pubmedqa":
        data = json.loads(_require(root / "ori_pqal.json", benchmark).read_text(encoding="utf-8"))
        return [(str(pmid), item["QUESTION"]) for pmid, item in data.items()]
    raise ValueError(f"unknown benchmark {benchmark!r}; choose from {list(BENCHMARKS)}")


def ngrams(text: str, n: int) -> set[str]:
    words = word_tokens(text)
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class ContaminationIndex:
    """n-gram -> the ``(benchmark, question_id)`` pairs whose stem contains it."""

    ngram: int
    table: dict[str, list[tuple[str, str]]]
    num_questions: dict[str, int]
    num_too_short: dict[str, int]

    @classmethod
    def build(cls, cfg: DecontamConfig) -> ContaminationIndex:
        if not cfg.questions_root:
            raise ValueError("decontaminate.questions_root is not set; point it at the benchmarks' folder")
        table: dict[str, list[tuple[str, str]]] = {}
        num_q, short = Counter(), Counter()
        for bench in cfg.benchmarks:
            for qid, stem in load_questions(cfg.questions_root, bench):
                num_q[bench] += 1
                grams = ngrams(stem, cfg.ngram)
                if not grams:
                    short[bench] += 1
                for g in grams:
                    table.setdefault(g, []).append((bench, qid))
        return cls(ngram=cfg.ngram, table=table, num_questions=dict(num_q), num_too_short=dict(short))

    def hits(self, text: str) -> dict[str, set[str]]:
        """Benchmark -> ids of the questions ``text`` shares an n-gram with (empty dict: clean)."""
        found: dict[str, set[str]] = {}
        words = word_tokens(text)
        n, table = self.ngram, self.table
        for i in range(len(words) - n + 1):
            for bench, qid in table.get(" ".join(words[i : i + n]), ()):
                found.setdefault(bench, set()).add(qid)
        return found


def describe(hits: dict[str, set[str]]) -> str:
    return ";".join(f"{b}:{','.join(sorted(q))}" for b, q in sorted(hits.items()))


class Decontaminate:
    """``map_batches`` UDF: mark (or flag) contaminated documents, count hits per benchmark."""

    name = STAGE

    def __init__(self, index_ref, *, action: str, sink_root: str):
        self.index_ref, self.action = index_ref, action
        self.accountant = Accountant(self.name, sink_root=sink_root)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from clinray.data.dedup_minhash import resolve

        start = time.time()
        index = resolve(self.index_ref)
        rows = table_rows(batch)
        extra: Counter = Counter()
        for row in rows:
            hits = index.hits(row.get("text") or "")
            if not hits:
                continue
            extra["num_docs_contaminated"] += 1
            for bench, qids in hits.items():
                extra[f"hits_{bench}"] += 1
                extra[f"questions_{bench}"] += len(qids)
            if self.action == "remove":
                row[REASON], row[DETAIL] = "contaminated", describe(hits)
            else:
                meta = json.loads(row.get("metadata") or "{}")
                meta["contamination"] = {b: sorted(q) for b, q in hits.items()}
                row["metadata"] = json.dumps(meta)
        return self.accountant.account(rows, key=batch_key(rows), start=start, extra=dict(extra))


def decontaminate(ds, cfg: DecontamConfig, *, sink_root: str, index: ContaminationIndex | None = None):
    """The ``decontaminate`` stage on a working-schema dataset (lazy)."""
    import ray

    index = index or ContaminationIndex.build(cfg)
    udf = Decontaminate(ray.put(index), action=cfg.action, sink_root=str(sink_root))
    return ds.map_batches(udf, batch_format="pyarrow", zero_copy_batch=False)


def contamination_column(batch, *, index, columns: list[str]):
    """For SFT samples (pandas batch): add ``contamination`` (``""`` when clean) from the text ``columns``."""
    from clinray.data.dedup_minhash import resolve

    index = resolve(index)
    texts = batch[columns].fillna("").astype(str).agg("\n".join, axis=1)
    return batch.assign(contamination=[describe(index.hits(t)) for t in texts])
