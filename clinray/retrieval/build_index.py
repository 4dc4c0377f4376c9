"""Build the Medprompt example store: read training questions, embed them in Ray Data actors, upsert.

Inputs are question files in their native layouts, read by :mod:`clinray.qa` (the layout from
``benchmark``, the folder name or the file itself): MedQA JSONL (``options`` as a letter map or a list,
``answer_idx``/``answer_index``, ``explanation``; clinray example JSONL is this layout), MedMCQA JSON
lines or Parquet (``opa``..``opd``, ``cop`` with its base detected or set by ``cop_base``, ``exp``), MMLU
CSV and PubMedQA JSON. Examples are stored under the questions' stable ids (``medqa/train/<id>``), the
ids evaluation and Medprompt use, so the leak guard can match them. An example needs its answer: an
unlabelled question is a reject (``no_answer``), a file without any answer an error. Explanations come
from the record or from SFT chain-of-thought samples (``sft-<native id>`` or ``sft-<question id>``), used
only when their final answer is the question's correct option ("verified" CoT, as Medprompt keeps only
CoT that reaches the right answer). The verified chains of ``clinray cot`` (``cot`` inputs, its
``cot.jsonl``) are examples themselves: the question with its options in the order its chain saw them,
stored under the question's id in place of the question's own record. A record that cannot be used is counted and recorded with its
reason, never dropped silently. Records are normalized on the driver (small text rows), embedded by
``cfg.num_embed_actors`` Ray Data actors, and written by the driver in batches while they stream out of
``iter_batches`` (Milvus Lite allows one process per file, and nothing is materialized in full).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from clinray.config import dump
from clinray.models.chat_template import COT_ANSWER_PREFIX, COT_PREFIX
from clinray.qa import Question, read_questions
from clinray.qa.files import QuestionFile
from clinray.results import StageResult, missing_file
from clinray.retrieval.embed import EmbedConfig, embedding_text
from clinray.retrieval.milvus_store import MAX_TEXT_CHARS, StoreConfig

__all__ = ["InputSpec", "IndexConfig", "load_examples", "build_index", "world_inputs", "normalize_question"]

_MAX_REJECTS_LISTED = 1000


InputSpec = QuestionFile
"""One question file (:class:`clinray.qa.files.QuestionFile`)."""


@dataclasses.dataclass(kw_only=True, slots=True)
class IndexConfig:
    """``clinray index``: which questions to embed and where to store them."""

    world: str = ""
    """A tiny world folder: adds its MedQA and MedMCQA training questions and SFT CoT samples."""
    inputs: list[InputSpec] = dataclasses.field(default_factory=list)
    """Question files to index."""
    sft_cot: list[str] = dataclasses.field(default_factory=list)
    """SFT JSONL files whose CoT answers (id ``sft-<question id>``) supply explanations."""
    cot: list[str] = dataclasses.field(default_factory=list)
    """Verified chain-of-thought files of ``clinray cot`` (``cot.jsonl``), read before ``inputs``: a
    question's first chain becomes its example, with the options in the order that chain saw them; its
    later chains and its rows in ``inputs`` are ``duplicate_id`` rejects."""
    require_explanation: bool = True
    """Reject questions without a verified chain of thought (they would make poor CoT examples)."""
    drop_existing: bool = False
    """Drop the collection first instead of upserting into it."""
    num_embed_actors: int = 1
    """Ray Data actors embedding in parallel (each loads the embedder once)."""
    insert_batch_size: int = 512
    """Rows per Milvus upsert."""
    report: str = ""
    """Where to write the JSON report (default: beside the store, ``<store stem>.<collection>_report.json``)."""
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)
    """The embedder."""
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    """The Milvus collection."""

    def __post_init__(self) -> None:
        if not self.world and not self.inputs and not self.cot:
            raise ValueError(
                "nothing to index: set world=<tiny world folder>, inputs=[{path: ...}] or cot=[cot.jsonl]"
            )
        if self.num_embed_actors < 1 or self.insert_batch_size < 1:
            raise ValueError("num_embed_actors and insert_batch_size must be at least 1")

    def check_inputs(self) -> list[str]:
        """Every missing question or CoT file at once, before Ray starts."""
        problems: list[str] = []
        inputs, cot = list(self.inputs), list(self.sft_cot)
        if self.world:
            if not (Path(self.world) / "manifest.json").is_file():
                return [f"world {self.world!r} is not a tiny world folder (no manifest.json)"]
            more, more_cot = world_inputs(self.world)
            inputs, cot = inputs + more, cot + more_cot
        for spec in inputs:
            problems += missing_file(spec.path, f"index input ({spec.source or 'questions'})")
        for path in cot:
            problems += missing_file(path, "sft_cot file")
        for path in self.cot:
            problems += missing_file(path, "cot file (clinray cot's cot.jsonl)")
        return problems


@dataclasses.dataclass(kw_only=True)
class IndexResult(StageResult):
    """The example store one index build wrote, with its counts."""

    uri: str
    collection: str
    report_path: Path
    report: dict[str, Any]
    """num_read, num_written, num_rejected, rejected_by_reason, warnings, count, wall_s, the first rejects."""

    @property
    def count(self) -> int:
        return int(self.report["count"])

    def outputs(self) -> dict[str, str]:
        return {"index": self.uri, "index_report": str(self.report_path)}

    def summary(self) -> str:
        r = self.report
        head = (
            f"index: {r['num_written']} of {r['num_read']} examples written to {self.collection} "
            f"({r['count']} in the collection), rejected {r['rejected_by_reason'] or 0}, {r['wall_s']} s"
        )
        return "\n".join([head, *r.get("warnings", []), StageResult.summary(self)])


def world_inputs(world: str | Path) -> tuple[list[InputSpec], list[str]]:
    """The training question files and SFT file of a tiny world (docs/tiny_world.md)."""
    root = Path(world)
    if not (root / "manifest.json").is_file():
        raise ValueError(f"{root} is not a tiny world folder (no manifest.json); see `clinray world --help`")
    inputs = [
        InputSpec(path=str(root / "questions/medqa/train.jsonl"), source="medqa"),
        InputSpec(path=str(root / "questions/medmcqa/train.json"), source="medmcqa"),
    ]
    return inputs, [str(root / "sft/train.jsonl")]


def _load_cot(paths: list[str]) -> dict[str, tuple[str, str]]:
    """``{question id: (reasoning, final answer text)}`` from SFT CoT samples."""
    out: dict[str, tuple[str, str]] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            text = str(rec.get("assistant", "")) if isinstance(rec, dict) else ""
            if COT_ANSWER_PREFIX not in text or not str(rec.get("id", "")).startswith("sft-"):
                continue
            reasoning, answer = text.rsplit(COT_ANSWER_PREFIX, 1)
            reasoning = reasoning.strip().removeprefix(COT_PREFIX).strip()
            out[str(rec["id"])[4:]] = (reasoning, answer.strip())
    return out


def normalize_question(
    q: Question, *, source: str, cot: dict[str, tuple[str, str]], require_explanation: bool
) -> tuple[dict[str, Any] | None, str]:
    """A store row from one labelled question, or ``(None, reason)``."""
    explanation = q.explanation or ""
    if not explanation:
        found = cot.get(q.id) or cot.get(str(q.meta.get("native_id")))
        if found:
            reasoning, final = found
            if final.strip().rstrip(".") != q.answer.strip().rstrip("."):
                return None, "cot_answer_mismatch"
            explanation = reasoning
    if require_explanation and not explanation:
        return None, "no_explanation"
    if len(q.stem) > MAX_TEXT_CHARS or len(explanation) > MAX_TEXT_CHARS:
        return None, "too_long"
    row = {
        "id": q.id,
        "question": q.stem,
        "options": json.dumps(list(q.options)),
        "answer_index": q.answer_index,
        "explanation": explanation,
        "source": source,
        "text": embedding_text(q.stem, list(q.options)),
    }
    return row, ""


def _reject(path: Path, at: str, reason: str, *, qid: str | None = None, detail: str = "") -> dict[str, Any]:
    return {"path": str(path), "at": at, "id": qid, "reason": reason, "detail": detail}


def load_examples(cfg: IndexConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Normalized rows and rejects (``{path, at, id, reason, detail}``) of every input.

    A missing file, a file without a usable row or without any answer is a ``ValueError`` (one line).
    """
    rows, rejects, _ = _load(cfg)
    return rows, rejects


def _load(cfg: IndexConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    inputs, sft = list(cfg.inputs), list(cfg.sft_cot)
    if cfg.world:
        more_inputs, more_sft = world_inputs(cfg.world)
        inputs, sft = inputs + more_inputs, sft + more_sft
    cot = _load_cot(sft)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for path in cfg.cot:  # verified chains first: they win over the same question's own record
        from clinray.cot.output import read_cot_questions

        chains, bad = read_cot_questions(path)
        rejects += [_reject(Path(path), s.locator, s.reason, detail=s.detail) for s in bad]
        for q in chains:
            row, reason = normalize_question(q, source=q.meta["source"], cot={}, require_explanation=True)
            if row is not None and row["id"] in seen:
                row, reason = None, "duplicate_id"
            if row is None:
                rejects.append(_reject(Path(path), q.meta["locator"], reason, qid=q.id))
                continue
            seen.add(row["id"])
            rows.append(row)
    for spec in inputs:
        path = Path(spec.path)
        source = spec.source or path.parent.name
        questions = read_questions(path, benchmark=spec.benchmark or None, cop_base=spec.cop_base)
        questions = questions.require_answers(purpose="the Medprompt index (an example needs its answer)")
        warnings += questions.warnings
        rejects += [_reject(path, s.locator, s.reason, detail=s.detail) for s in questions.skipped]
        for q in questions:
            if q.id in seen:  # stored from a verified chain (cfg.cot) or an earlier input
                rejects.append(_reject(path, q.meta.get("locator", ""), "duplicate_id", qid=q.id))
                continue
            row, reason = normalize_question(
                q, source=source, cot=cot, require_explanation=cfg.require_explanation
            )
            if row is not None and row["id"] in seen:
                row, reason = None, "duplicate_id"
            if row is None:
                rejects.append(_reject(path, q.meta.get("locator", ""), reason, qid=q.id))
                continue
            seen.add(row["id"])
            rows.append(row)
    return rows, rejects, warnings


def build_index(cfg: IndexConfig) -> IndexResult:
    """Embed every usable training question and upsert it into the store; return what was written.

    Needs a running Ray (``ray.init``); the caller owns it.
    """
    import ray

    from clinray.retrieval.embed import EmbedBatch
    from clinray.retrieval.milvus_store import MilvusExampleStore

    start = time.perf_counter()
    rows, rejects, warnings = _load(cfg)
    store = MilvusExampleStore(cfg.store)
    store.ensure_collection(drop=cfg.drop_existing)
    num_written = 0
    if rows:
        ds = ray.data.from_items(rows).map_batches(
            EmbedBatch,
            fn_constructor_kwargs={"cfg": cfg.embed},
            batch_size=cfg.embed.batch_size,
            compute=ray.data.ActorPoolStrategy(size=cfg.num_embed_actors),
        )
        for batch in ds.iter_batches(batch_size=cfg.insert_batch_size, batch_format="numpy"):
            keys = list(batch)
            num_written += store.upsert([{k: batch[k][i] for k in keys} for i in range(len(batch["id"]))])
        store.flush()
    report = {
        "uri": cfg.store.uri,
        "collection": cfg.store.collection,
        "embedder": cfg.embed.model,
        "num_read": len(rows) + len(rejects),
        "num_written": num_written,
        "num_rejected": len(rejects),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejects)),
        "warnings": warnings,
        "count": store.count(),
        "wall_s": round(time.perf_counter() - start, 3),
        "rejects": rejects[:_MAX_REJECTS_LISTED],
    }
    store.close()
    path = Path(cfg.report) if cfg.report else _default_report_path(cfg.store)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    config_path = dump(cfg, _config_path(path))
    return IndexResult(
        uri=cfg.store.uri,
        collection=cfg.store.collection,
        report_path=path,
        report=report,
        config_path=config_path,
        problems=[] if report["count"] else ["the collection holds no example"],
    )


def _default_report_path(store: StoreConfig) -> Path:
    """Beside a ``*.db`` store, named after it (two stores in one folder keep their own reports)."""
    if store.uri.endswith(".db"):
        db = Path(store.uri)
        return db.with_name(f"{db.stem}.{store.collection}_report.json")
    return Path("runs/index") / f"{store.collection}_report.json"


def _config_path(report: Path) -> Path:
    """The resolved config beside the report: ``<name>_report.json`` -> ``<name>_config.yaml``."""
    name = report.name.removesuffix("_report.json") if report.name.endswith("_report.json") else report.stem
    return report.with_name(f"{name}_config.yaml")
