"""The CoT stage's accounting: three identities, acceptance per source and per benchmark, the report.

Every question read ends in exactly one place and every sample planned gets exactly one verdict::

    questions read    = skipped (by reason) + contaminated + generated
    samples planned   = k x generated = accepted + wrong_answer + unparseable (by reason)
    accepted          = written + duplicate + over_keep

The first two are checked against counts taken independently (the readers' row counts; the keys that
came back from Ray Data), so a lost or repeated batch shows as a ledger that does not balance, and the
result is not ok.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

__all__ = ["Tally", "acceptance_table", "ledger_problems", "render_markdown"]


@dataclasses.dataclass
class Tally:
    """Counts of one group of questions (a source, a benchmark, or all)."""

    questions: int = 0
    samples: int = 0
    accepted: int = 0
    wrong_answer: int = 0
    unparseable: int = 0
    questions_with_accepted: int = 0

    def add_question(self, verdicts: list[str]) -> None:
        self.questions += 1
        self.samples += len(verdicts)
        counts = Counter(verdicts)
        self.accepted += counts["accepted"]
        self.wrong_answer += counts["wrong_answer"]
        self.unparseable += counts["unparseable"]
        self.questions_with_accepted += counts["accepted"] > 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.samples if self.samples else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "acceptance_rate": round(self.acceptance_rate, 4)}


def ledger_problems(report: dict[str, Any]) -> list[str]:
    """Why the report's accounting does not balance (empty when it does)."""
    q, s, r = report["questions"], report["samples"], report["rows"]
    problems = []
    skipped = sum(q["skipped_by_reason"].values())
    if q["read"] != skipped + q["contaminated"] + q["generated"]:
        problems.append(
            f"questions do not balance: read {q['read']} != skipped {skipped} + contaminated "
            f"{q['contaminated']} + generated {q['generated']}"
        )
    if s["planned"] != s["judged"] or s["judged"] != s["accepted"] + s["wrong_answer"] + s["unparseable"]:
        problems.append(
            f"samples do not balance: planned {s['planned']}, judged {s['judged']}, accepted {s['accepted']} + "
            f"wrong_answer {s['wrong_answer']} + unparseable {s['unparseable']}"
        )
    if sum(s["unparseable_by_reason"].values()) != s["unparseable"]:
        problems.append("unparseable samples do not add up over their reasons")
    if s["accepted"] != r["written"] + r["duplicate"] + r["over_keep"]:
        problems.append(
            f"rows do not balance: accepted {s['accepted']} != written {r['written']} + duplicate "
            f"{r['duplicate']} + over_keep {r['over_keep']}"
        )
    return problems


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def acceptance_table(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: one per group (``by_source`` or ``by_benchmark`` of the report)."""
    lines = [
        f"| {title} | questions | samples | accepted | wrong answer | unparseable | acceptance | questions with a chain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in groups.items():
        lines.append(
            f"| {name} | {t['questions']} | {t['samples']} | {t['accepted']} | {t['wrong_answer']} "
            f"| {t['unparseable']} | {_pct(t['acceptance_rate'])} | {t['questions_with_accepted']} |"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """``cot_report.md``: the ledger, acceptance per source and per benchmark, why samples failed."""
    q, s, r, total = report["questions"], report["samples"], report["rows"], report["total"]
    teacher = report["teacher"]
    skipped = ", ".join(f"{k} {v}" for k, v in q["skipped_by_reason"].items()) or "none"
    unparseable = ", ".join(f"{k} {v}" for k, v in s["unparseable_by_reason"].items()) or "none"
    lines = [
        "# Verified chain-of-thought",
        "",
        f"Teacher: {teacher['kind']} `{teacher['model']}`; k = {report['k']} chains per question, options "
        f"shuffled per chain (seed {report['seed']}), temperature {report['temperature']}, "
        f"{report['max_new_tokens']} new tokens, {report['num_examples']} few-shot examples.",
        "",
        f"- Questions: {q['read']} read = {sum(q['skipped_by_reason'].values())} skipped ({skipped}) "
        f"+ {q['contaminated']} contaminated + {q['generated']} generated.",
        f"- Samples: {s['planned']} = {s['accepted']} accepted + {s['wrong_answer']} wrong answer + "
        f"{s['unparseable']} unparseable ({unparseable}).",
        f"- Chains written: {r['written']} (of {s['accepted']} accepted: {r['duplicate']} duplicate, "
        f"{r['over_keep']} over keep_per_question) for {total['questions_with_accepted']} of "
        f"{q['generated']} questions.",
        f"- Acceptance rate: **{_pct(total['acceptance_rate'])}**; ledger "
        f"{'balanced' if report['balanced'] else 'NOT balanced'}.",
        "",
        *acceptance_table("source", report["by_source"]),
        "",
        *acceptance_table("benchmark", report["by_benchmark"]),
        "",
        "Accepted chains per question: "
        + ", ".join(f"{n} chains: {c}" for n, c in report["chains_per_question"].items()),
        "",
    ]
    return "\n".join(lines)
