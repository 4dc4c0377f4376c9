"""``clinray cot``: the verified chain-of-thought stage, end to end.

1. read the training questions of every input through :mod:`clinray.qa` (bad rows, unlabelled questions,
   repeated ids and those past ``limit`` are skipped with their reason);
2. drop the questions whose stem copies an evaluation question (the SFT data stage's 13-gram rule,
   :class:`~clinray.data.decontaminate.ContaminationIndex`), before any teacher time is spent;
3. plan k samples per question, each with its own seeded option order and sampling seed
   (:func:`~clinray.cot.verify.plan_samples`);
4. generate in Ray Data: ``map_batches`` over an actor class holding the teacher
   (:class:`~clinray.cot.teacher.TeacherBatch`, ``teacher.concurrency`` actors);
5. judge every completion on the driver (:func:`~clinray.cot.verify.judge`) and keep the chains whose
   mapped-back answer is the gold one;
6. write ``cot.jsonl`` (clinray's own SFT rows, the ``chat`` layout, which ``clinray index`` also reads
   as ``cot`` input), ``rejects.jsonl`` (every skipped question, contaminated question, rejected sample
   and dropped chain with its reason), ``cot_report.json`` / ``cot_report.md`` and ``config.yaml``.

Completions are collected on the driver by sample key, so the output order (input, file, sample) does
not depend on how Ray Data scheduled the batches. Trade-off: the driver holds every question and the
accepted chains in memory (a few hundred MB for MedMCQA's 183k questions x 5), in exchange for
exact per-question accounting and a deterministic file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from clinray.config import dump
from clinray.cot.config import CoTConfig, CoTInput
from clinray.cot.report import Tally, ledger_problems, render_markdown
from clinray.cot.verify import Judgement, Sample, cot_row, judge, plan_samples, question_text
from clinray.qa import LETTERS, Question, read_questions
from clinray.results import StageResult

__all__ = ["CoTResult", "run_cot", "read_inputs", "ROWS", "REJECTS", "REPORT"]

ROWS = "cot.jsonl"
REJECTS = "rejects.jsonl"
REPORT = "cot_report.json"
#: Characters of a rejected completion kept in ``rejects.jsonl``.
MAX_DETAIL_CHARS = 1000


@dataclasses.dataclass(kw_only=True)
class CoTResult(StageResult):
    """The verified chains one run wrote, with its ledger."""

    out_dir: Path
    rows_path: Path
    rejects_path: Path
    report_path: Path
    report: dict[str, Any]

    @property
    def num_written(self) -> int:
        return int(self.report["rows"]["written"])

    @property
    def acceptance_rate(self) -> float:
        return float(self.report["total"]["acceptance_rate"])

    def outputs(self) -> dict[str, str]:
        return {"cot_rows": str(self.rows_path), "cot_report": str(self.report_path)}

    def summary(self) -> str:
        q, s, t = self.report["questions"], self.report["samples"], self.report["total"]
        head = [
            f"cot: {s['accepted']} of {s['planned']} chains verified ({100 * t['acceptance_rate']:.1f}%), "
            f"{self.num_written} written for {t['questions_with_accepted']} of {q['generated']} questions; "
            f"questions read {q['read']}, skipped {q['skipped_by_reason'] or 0}, contaminated {q['contaminated']}",
            f"rejected samples: wrong answer {s['wrong_answer']}, unparseable {s['unparseable_by_reason'] or 0}",
        ]
        return "\n".join([*head, StageResult.summary(self)])


def read_inputs(
    cfg: CoTConfig,
) -> tuple[list[tuple[CoTInput, Question]], list[dict], Counter, int, list[str]]:
    """``(selected, rejects, skipped by reason, rows read, warnings)`` over every input file.

    A question is selected when it is labelled, has at most 10 options, was not read before (by id) and
    is within its file's ``limit``; a missing file or one with no usable row is a ``ValueError``.
    """
    selected: list[tuple[CoTInput, Question]] = []
    rejects: list[dict] = []
    skipped: Counter = Counter()
    warnings: list[str] = []
    seen: set[str] = set()
    read = 0
    for spec in cfg.all_inputs():
        got = read_questions(spec.path, benchmark=spec.benchmark or None, cop_base=spec.cop_base)
        read += len(got.questions) + len(got.skipped)
        warnings += list(got.warnings)
        for s in got.skipped:
            skipped[s.reason] += 1
            rejects.append(_question_reject(spec, s.locator, None, s.reason, s.detail))
        taken = 0
        for q in got.questions:
            reason = ""
            if q.answer_index is None:
                reason, detail = "no_answer", "unlabelled question"
            elif q.id in seen:
                reason, detail = "duplicate_id", f"id {q.id} already read"
            elif len(q.options) > len(LETTERS):
                reason, detail = "too_many_options", f"{len(q.options)} options, at most {len(LETTERS)}"
            elif cfg.limit and taken >= cfg.limit:
                skipped["over_limit"] += 1  # counted, not listed: a limit on a big file is the point
                continue
            if reason:
                skipped[reason] += 1
                rejects.append(_question_reject(spec, q.meta.get("locator", ""), q.id, reason, detail))
                continue
            seen.add(q.id)
            taken += 1
            selected.append((spec, q))
    return selected, rejects, skipped, read, warnings


def _question_reject(spec: CoTInput, at: str, qid: str | None, reason: str, detail: str) -> dict:
    return {"level": "question", "input": spec.path, "at": at, "id": qid, "reason": reason, "detail": detail}


def _examples(cfg: CoTConfig, clean: list[tuple[CoTInput, Question]]) -> list:
    """The few-shot draw: ``num_examples + 1`` questions with an explanation (one spare replaces the asked
    question when it was drawn itself)."""
    from clinray.prompting.cot import static_examples
    from clinray.prompting.templates import Example

    if not cfg.num_examples:
        return []
    pool = [
        Example(
            id=q.id,
            question=question_text(q),
            options=q.options,
            answer_index=q.answer_index,
            explanation=q.explanation,
            source=spec.label,
        )
        for spec, q in clean
        if q.explanation
    ]
    if len(pool) <= cfg.num_examples:
        raise ValueError(
            f"num_examples={cfg.num_examples} needs more than {cfg.num_examples} input questions with an "
            f"explanation (MedMCQA exp, MedQA explanation); the inputs have {len(pool)}"
        )
    return static_examples(pool, k=cfg.num_examples + 1, seed=cfg.seed)


def _generate(
    cfg: CoTConfig, samples: list[Sample], examples: list
) -> tuple[dict[int, tuple[str, str]], int]:
    """``({sample key: (completion, error)}, keys returned more than once)`` from Ray Data actors."""
    import ray

    from clinray.cot.teacher import TeacherBatch

    if not samples:
        return {}, 0
    items = [
        {
            "key": i,
            "qid": s.question.id,
            "text": question_text(s.question),
            "shown": json.dumps(s.shown, ensure_ascii=False),
            "seed": s.seed,
        }
        for i, s in enumerate(samples)
    ]
    api_key = os.environ.get(cfg.teacher.api_key_env, "") if cfg.teacher.kind == "openai" else ""
    ds = ray.data.from_items(items).map_batches(
        TeacherBatch,
        fn_constructor_kwargs={
            "cfg": cfg.teacher,
            "api_key": api_key,
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "seed": cfg.seed,
            "use_labels": cfg.use_labels,
            "examples": examples,
            "num_examples": cfg.num_examples,
        },
        batch_size=cfg.teacher.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.teacher.concurrency),
        num_cpus=cfg.teacher.num_cpus,
        num_gpus=cfg.teacher.num_gpus or None,
    )
    out: dict[int, tuple[str, str]] = {}
    repeated = 0
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for key, completion, error in zip(batch["key"], batch["completion"], batch["error"], strict=True):
            repeated += int(key) in out
            out[int(key)] = (str(completion), str(error))
    return out, repeated


def _judge(sample: Sample, got: tuple[str, str] | None) -> Judgement | None:
    if got is None:
        return None  # lost by the pipeline: the ledger shows it
    completion, error = got
    if error:
        return Judgement("unparseable", "teacher_error")
    return judge(completion, sample.shown, sample.perm, sample.question.answer_index)


def run_cot(cfg: CoTConfig) -> CoTResult:
    """Generate, verify and write chains of thought for the configured questions; return the result.

    Needs a running Ray (``ray.init``); the caller owns it.
    """
    start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected, rejects, skipped, read, warnings = read_inputs(cfg)

    decontam = cfg.decontam()
    clean: list[tuple[CoTInput, Question]] = []
    hits_by_benchmark: Counter = Counter()
    if decontam.enabled:
        from clinray.data.decontaminate import ContaminationIndex, describe

        index = ContaminationIndex.build(decontam)
        for spec, q in selected:
            hits = index.hits(q.stem)
            if hits:
                hits_by_benchmark.update(hits.keys())
                rejects.append(
                    _question_reject(spec, q.meta.get("locator", ""), q.id, "contaminated", describe(hits))
                )
            else:
                clean.append((spec, q))
    else:
        clean = list(selected)
    contaminated = len(selected) - len(clean)

    examples = _examples(cfg, clean)
    plans = [(spec, q, plan_samples(q, k=cfg.k, seed=cfg.seed)) for spec, q in clean]
    samples = [s for _, _, plan in plans for s in plan]
    completions, repeated = _generate(cfg, samples, examples)

    total, by_source, by_benchmark = Tally(), {}, {}
    unparseable, forms, chains = Counter(), Counter(), Counter()
    rows: list[dict] = []
    judged = errors = 0
    first_error = ""
    written = duplicate = over_keep = 0
    at = 0
    for spec, question, plan in plans:
        verdicts: list[str] = []
        kept: set[tuple[str, str]] = set()
        for sample in plan:
            got = completions.get(at)
            at += 1
            judgement = _judge(sample, got)
            if judgement is None:
                continue
            judged += 1
            verdicts.append(judgement.verdict)
            if judgement.verdict == "unparseable":
                unparseable[judgement.reason] += 1
                if judgement.reason == "teacher_error":
                    errors += 1
                    first_error = first_error or got[1]
            if judgement.verdict != "accepted":
                rejects.append(_sample_reject(sample, judgement, got))
                continue
            forms[judgement.form] += 1
            row = cot_row(
                sample, judgement, source=spec.label, use_labels=cfg.use_labels, teacher=cfg.teacher.model
            )
            signature = (row["prompter"], row["assistant"])
            if signature in kept:
                duplicate += 1
                rejects.append(
                    {"level": "row", "id": row["id"], "reason": "duplicate", "detail": "same chain"}
                )
            elif cfg.keep_per_question and len(kept) >= cfg.keep_per_question:
                over_keep += 1
                rejects.append(
                    {"level": "row", "id": row["id"], "reason": "over_keep", "detail": f"{len(kept)} kept"}
                )
            else:
                kept.add(signature)
                rows.append(row)
                written += 1
        chains[len(kept)] += 1
        for tally in (
            total,
            by_source.setdefault(spec.label, Tally()),
            by_benchmark.setdefault(question.benchmark, Tally()),
        ):
            tally.add_question(verdicts)

    _write_jsonl(out / ROWS, rows)
    _write_jsonl(out / REJECTS, rejects)
    wall = time.perf_counter() - start
    report: dict[str, Any] = {
        "teacher": {
            "kind": cfg.teacher.kind,
            "model": cfg.teacher.model,
            **({"base_url": cfg.teacher.base_url} if cfg.teacher.kind == "openai" else {}),
        },
        "k": cfg.k,
        "seed": cfg.seed,
        "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "num_examples": cfg.num_examples,
        "use_labels": cfg.use_labels,
        "questions": {
            "read": read,
            "skipped_by_reason": dict(skipped.most_common()),
            "contaminated": contaminated,
            "generated": len(plans),
        },
        "samples": {
            "planned": len(samples),
            "judged": judged,
            "returned_twice": repeated,
            "accepted": total.accepted,
            "wrong_answer": total.wrong_answer,
            "unparseable": total.unparseable,
            "unparseable_by_reason": dict(unparseable.most_common()),
            "answer_forms": dict(forms.most_common()),
        },
        "rows": {"written": written, "duplicate": duplicate, "over_keep": over_keep},
        "total": total.to_dict(),
        "by_source": {name: t.to_dict() for name, t in by_source.items()},
        "by_benchmark": {name: t.to_dict() for name, t in by_benchmark.items()},
        "chains_per_question": {str(n): chains[n] for n in sorted(chains)},
        "decontamination": {
            "enabled": decontam.enabled,
            "questions_root": decontam.questions_root,
            "benchmarks": list(decontam.benchmarks) if decontam.enabled else [],
            "questions_hit_by_benchmark": dict(hits_by_benchmark),
        },
        "warnings": warnings,
        "outputs": {"rows": str(out / ROWS), "rejects": str(out / REJECTS)},
        "wall_s": round(wall, 3),
    }
    problems = ledger_problems(report)
    if repeated:
        problems.append(f"{repeated} sample(s) came back from Ray Data more than once")
    report["balanced"] = not problems
    if not plans:
        problems.append("no question left to generate for (every one was skipped or contaminated)")
    elif errors == len(samples):
        problems.append(f"every teacher request failed: {first_error}")
    if written < cfg.min_written:
        problems.append(f"{written} chains written, fewer than min_written={cfg.min_written}")
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "cot_report.md").write_text(render_markdown(report))
    config_path = dump(cfg, out / "config.yaml")
    return CoTResult(
        out_dir=out,
        rows_path=out / ROWS,
        rejects_path=out / REJECTS,
        report_path=out / REPORT,
        report=report,
        config_path=config_path,
        problems=problems,
    )


def _sample_reject(sample: Sample, judgement: Judgement, got: tuple[str, str] | None) -> dict:
    completion, error = got or ("", "")
    return {
        "level": "sample",
        "id": sample.key,
        "question_id": sample.question.id,
        "reason": judgement.reason,
        "answer_index": judgement.answer_index,
        "gold_index": sample.question.answer_index,
        "detail": (error or completion)[:MAX_DETAIL_CHARS],
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
