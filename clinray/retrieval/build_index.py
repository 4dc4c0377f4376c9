"""Build the Medprompt example store: read training questions, embed them in Ray Data actors, upsert.

Inputs are question files in their native layouts, recognized per record: MedQA JSONL (``options`` as a
letter map, ``answer_idx``), MedMCQA JSON lines (``opa``..``opd``, 1-based ``cop``, ``exp``) and clinray
example JSONL (``options`` list, ``answer_index``, ``explanation``). Explanations come from the record
(``exp``/``explanation``) or from SFT chain-of-thought samples (``sft-<question id>``), used only when
their final answer is the question's correct option ("verified" CoT, as Medprompt keeps only CoT that
reaches the right answer). A record that cannot be used is counted and recorded with its reason, never
dropped silently. Records are normalized on the driver (small text rows), embedded by
``cfg.num_embed_actors`` Ray Data actors, and written by the driver in batches while they stream out of
``iter_batches`` (Milvus Lite allows one process per file, and nothing is materialized in full).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clinray.config import dump
from clinray.models.chat_template import COT_ANSWER_PREFIX, COT_PREFIX
from clinray.results import StageResult, missing_file
from clinray.retrieval.embed import EmbedConfig, embedding_text
from clinray.retrieval.milvus_store import MAX_TEXT_CHARS, StoreConfig

__all__ = ["InputSpec", "IndexConfig", "load_examples", "build_index", "world_inputs", "options_and_answer"]

_MAX_REJECTS_LISTED = 1000


@dataclasses.dataclass(kw_only=True, slots=True)
class InputSpec:
    """One question file."""

    path: str
    """MedQA JSONL, MedMCQA JSON lines, or clinray example JSONL (recognized per record)."""
    source: str = ""
    """Label stored with each example (default: the file's parent folder name)."""


@dataclasses.dataclass(kw_only=True, slots=True)
class IndexConfig:
    """``clinray index``: which questions to embed and where to store them."""

    world: str = ""
    """A tiny world folder: adds its MedQA and MedMCQA training questions and SFT CoT samples."""
    inputs: list[InputSpec] = dataclasses.field(default_factory=list)
    """Question files to index."""
    sft_cot: list[str] = dataclasses.field(default_factory=list)
    """SFT JSONL files whose CoT answers (id ``sft-<question id>``) supply explanations."""
    require_explanation: bool = True
    """Reject questions without a verified chain of thought (they would make poor CoT examples)."""
    drop_existing: bool = False
    """Drop the collection first instead of upserting into it."""
    num_embed_actors: int = 1
    """Ray Data actors embedding in parallel (each loads the embedder once)."""
    insert_batch_size: int = 512
    """Rows per Milvus upsert."""
    report: str = ""
    """Where to write the JSON report (default: beside the store, ``<collection>_report.json``)."""
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)
    """The embedder."""
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    """The Milvus collection."""

    def __post_init__(self) -> None:
        if not self.world and not self.inputs:
            raise ValueError("nothing to index: set world=<tiny world folder> or inputs=[{path: ...}]")
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
        return problems


@dataclasses.dataclass(kw_only=True)
class IndexResult(StageResult):
    """The example store one index build wrote, with its counts."""

    uri: str
    collection: str
    report_path: Path
    report: dict[str, Any]
    """num_read, num_written, num_rejected, rejected_by_reason, count, wall_s, the first rejects."""

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
        return "\n".join([head, StageResult.summary(self)])


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


def options_and_answer(rec: dict[str, Any]) -> tuple[list[str], int]:
    if "opa" in rec:  # MedMCQA: opa..opd, cop 1-based
        options = [rec.get(k) for k in ("opa", "opb", "opc", "opd") if rec.get(k) is not None]
        return [str(o) for o in options], int(rec["cop"]) - 1
    options = rec.get("options")
    if isinstance(options, dict):  # MedQA: {"A": ..}, answer_idx letter
        keys = sorted(options)
        return [str(options[k]) for k in keys], keys.index(str(rec["answer_idx"]))
    if isinstance(options, list):
        return [str(o) for o in options], int(rec["answer_index"])
    raise ValueError("bad_options")


def normalize_record(
    rec: Any, *, fallback_id: str, source: str, cot: dict[str, tuple[str, str]], require_explanation: bool
) -> tuple[dict[str, Any] | None, str]:
    """A store row from one record, or ``(None, reason)``."""
    if not isinstance(rec, dict):
        return None, "not_an_object"
    question = str(rec.get("question") or "").strip()
    if not question:
        return None, "missing_question"
    try:
        options, answer_index = options_and_answer(rec)
    except (KeyError, ValueError, TypeError):
        return None, "bad_options_or_answer"
    if len(options) < 2 or not 0 <= answer_index < len(options):
        return None, "bad_options_or_answer"
    qid = str(rec.get("id") or fallback_id)
    explanation = str(rec.get("explanation") or rec.get("exp") or "").strip()
    if not explanation and qid in cot:
        reasoning, final = cot[qid]
        if final.strip().rstrip(".") != options[answer_index].strip().rstrip("."):
            return None, "cot_answer_mismatch"
        explanation = reasoning
    if require_explanation and not explanation:
        return None, "no_explanation"
    if len(question) > MAX_TEXT_CHARS or len(explanation) > MAX_TEXT_CHARS:
        return None, "too_long"
    row = {
        "id": qid,
        "question": question,
        "options": json.dumps(options),
        "answer_index": answer_index,
        "explanation": explanation,
        "source": source,
        "text": embedding_text(question, options),
    }
    return row, ""


def load_examples(cfg: IndexConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Normalized rows and rejects (``{path, line, id, reason}``) of every input."""
    inputs, sft = list(cfg.inputs), list(cfg.sft_cot)
    if cfg.world:
        more_inputs, more_sft = world_inputs(cfg.world)
        inputs, sft = inputs + more_inputs, sft + more_sft
    cot = _load_cot(sft)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in inputs:
        path = Path(spec.path)
        if not path.is_file():
            raise ValueError(f"input {spec.path!r} does not exist")
        source = spec.source or path.parent.name
        for num, rec in _records(path):
            if isinstance(rec, Exception):
                rejects.append({"path": str(path), "line": num, "id": None, "reason": "bad_json"})
                continue
            row, reason = normalize_record(
                rec,
                fallback_id=f"{source}-{path.stem}-{num}",
                source=source,
                cot=cot,
                require_explanation=cfg.require_explanation,
            )
            if row is not None and row["id"] in seen:
                row, reason = None, "duplicate_id"
            if row is None:
                rid = rec.get("id") if isinstance(rec, dict) else None
                rejects.append({"path": str(path), "line": num, "id": rid, "reason": reason})
                continue
            seen.add(row["id"])
            rows.append(row)
    return rows, rejects


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        for num, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield num, json.loads(line)
            except json.JSONDecodeError as exc:
                yield num, exc


def build_index(cfg: IndexConfig) -> IndexResult:
    """Embed every usable training question and upsert it into the store; return what was written.

    Needs a running Ray (``ray.init``); the caller owns it.
    """
    import ray

    from clinray.retrieval.embed import EmbedBatch
    from clinray.retrieval.milvus_store import MilvusExampleStore

    start = time.perf_counter()
    rows, rejects = load_examples(cfg)
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
        "count": store.count(),
        "wall_s": round(time.perf_counter() - start, 3),
        "rejects": rejects[:_MAX_REJECTS_LISTED],
    }
    store.close()
    path = Path(cfg.report) if cfg.report else _default_report_path(cfg.store)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    config_path = dump(cfg, path.with_name(f"{cfg.store.collection}_config.yaml"))
    return IndexResult(
        uri=cfg.store.uri,
        collection=cfg.store.collection,
        report_path=path,
        report=report,
        config_path=config_path,
        problems=[] if report["count"] else ["the collection holds no example"],
    )


def _default_report_path(store: StoreConfig) -> Path:
    if store.uri.endswith(".db"):
        return Path(store.uri).with_name(f"{store.collection}_report.json")
    return Path("runs/index") / f"{store.collection}_report.json"
