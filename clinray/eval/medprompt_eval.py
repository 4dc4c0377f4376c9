"""Medprompt evaluation (the paper's Figure 3): accuracy of each prompting strategy on a question set.

For every strategy of :mod:`clinray.prompting.medprompt` the model generates its reasoning once per run
(``answer_mode="score"``); then two accuracies are read from the same generations:

* ``likelihood``: each run's answer is the option with the highest likelihood after the reasoning and
  ``Therefore, the correct answer is:`` (the paper's method), and the ensemble votes over those;
* ``vote``: each run's answer is parsed from its completion (a run naming no option abstains), and the
  runs vote; a question with no parseable run counts as wrong.

A ``zero_shot`` bar (no reasoning: Figure 4's full-answer likelihood through the engine's ``score``)
anchors the chart. The trade-off: one generation pass serves both accuracies, so they differ only in
how an answer is read, never in what was generated. Strategies and engines are not reimplemented here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinray.config import dump
from clinray.models.chat_template import ANSWER_PREFIX, mcq_prompt
from clinray.plotting import pyplot, save_figure
from clinray.prompting.ensemble import apply_permutation, map_back, plurality_vote
from clinray.prompting.medprompt import STRATEGIES, answer_batch
from clinray.prompting.parsing import parse_answer
from clinray.results import StageResult, missing_file, missing_model
from clinray.serve.setup import MedpromptRunConfig


@dataclasses.dataclass(kw_only=True, slots=True)
class MedpromptEvalConfig:
    """``clinray medprompt-eval``: strategies x one question set, with one engine."""

    setup: MedpromptRunConfig = dataclasses.field(default_factory=MedpromptRunConfig)
    """Engine, strategy settings, embedder and example store (as for ``clinray medprompt``)."""
    strategies: list[str] = dataclasses.field(default_factory=lambda: list(STRATEGIES))
    """Strategies to evaluate, in chart order."""
    data_dir: str = ""
    """Folder of the datasets in their native layouts ('' = $CLINRAY_DATA_DIR)."""
    test_file: str = "medqa/test.jsonl"
    """Labelled questions in a native layout (clinray.qa), relative to data_dir (or absolute)."""
    limit: int = 0
    """Evaluate only the first N questions (0 = all)."""
    out_dir: str = "runs/eval/medprompt"
    """Where medprompt.json, medprompt_samples.jsonl and medprompt.png go."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(
                f"strategies must be a non-empty subset of {list(STRATEGIES)}; unknown: {unknown}"
            )
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0 = all questions), got {self.limit}")

    def check_inputs(self) -> list[str]:
        """The model folder, the question file and the example store, all at once."""
        import os

        data_dir = self.data_dir or os.environ.get("CLINRAY_DATA_DIR", "")
        problems = []
        if self.setup.engine.kind != "openai":
            problems += missing_model(self.setup.engine.model, "setup.engine.model")
        if not data_dir:
            problems.append("data_dir is not set (the benchmarks' folder; or set $CLINRAY_DATA_DIR)")
        else:
            problems += missing_file(Path(data_dir) / self.test_file, "test_file")
        uri = self.setup.store.uri
        if self.setup.use_store and uri.endswith(".db") and not Path(uri).exists():
            problems.append(f"setup.store.uri {uri!r} does not exist (build it with `clinray index`)")
        return problems


@dataclasses.dataclass(kw_only=True)
class MedpromptEvalResult(StageResult):
    """Figure 3: each strategy's accuracy, with the files behind it."""

    out_dir: Path
    strategies: dict[str, dict]
    """Per strategy: likelihood and vote accuracy, parse rate."""
    num_questions: int
    json_path: Path
    png: Path
    notes: list[str] = dataclasses.field(default_factory=list)
    """Skipped question rows (by reason) and data warnings, printed under the table."""

    def outputs(self) -> dict[str, str]:
        return {
            "medprompt_results": str(self.json_path),
            "medprompt_chart": str(self.png),
        }

    def table(self) -> list[str]:
        lines = ["| strategy | likelihood acc (%) | vote acc (%) | runs parsed (%) |", "|---|---:|---:|---:|"]
        for name, row in self.strategies.items():
            vote = "-" if row["vote"] is None else f"{100 * row['vote']:.1f}"
            parsed = "-" if row["parse_rate"] is None else f"{100 * row['parse_rate']:.0f}"
            lines.append(f"| {name} | {100 * row['likelihood']:.1f} | {vote} | {parsed} |")
        return lines

    def summary(self) -> str:
        head = f"Medprompt strategies on {self.num_questions} questions:"
        return "\n".join([head, *self.table(), *self.notes, StageResult.summary(self)])


def load_questions(cfg: MedpromptEvalConfig):
    """The labelled test questions (a :class:`clinray.qa.QuestionSet`; unlabelled ones are skipped rows)."""
    import os

    from clinray.qa import read_questions

    data_dir = cfg.data_dir or os.environ.get("CLINRAY_DATA_DIR", "")
    path = Path(cfg.test_file) if Path(cfg.test_file).is_absolute() else Path(data_dir) / cfg.test_file
    return read_questions(path).require_answers(purpose="medprompt-eval (accuracy)")


def load_items(cfg: MedpromptEvalConfig, questions=None) -> list[dict]:
    """The question rows ``{id, question, options, answer_index}``, ids from :mod:`clinray.qa`."""
    questions = load_questions(cfg) if questions is None else questions
    rows = [
        {"id": q.id, "question": q.text, "options": list(q.options), "answer_index": q.answer_index}
        for q in questions
    ]
    return rows[: cfg.limit] if cfg.limit else rows


def _vote(answer, options: Sequence[str]) -> tuple[int | None, int]:
    """Plurality over the runs' parsed answers (mapped back to the original options); parsed count."""
    choices = []
    for run in answer.runs:
        shown = apply_permutation(options, run.permutation)
        parsed = parse_answer(run.completion, shown)
        if parsed.index is not None:
            choices.append(map_back(run.permutation, parsed.index))
    if not choices:
        return None, 0
    return plurality_vote(choices)[0], len(choices)


def zero_shot_accuracy(items: Sequence[dict], engine) -> tuple[float, list[int]]:
    """Figure 4's full-answer likelihood, no reasoning, through the engine's ``score``."""
    preds = []
    for item in items:
        scores = engine.score(
            f"{mcq_prompt(item['question'], item['options'])} {ANSWER_PREFIX}",
            [f" {o}" for o in item["options"]],
        )
        preds.append(max(range(len(scores)), key=scores.__getitem__))
    correct = sum(p == item["answer_index"] for p, item in zip(preds, items, strict=True))
    return correct / len(items), preds


def evaluate_strategies(items: list[dict], *, setup, strategies: Sequence[str]) -> dict[str, Any]:
    """Per strategy: likelihood accuracy, vote accuracy, parse rate, wall time; plus per-question records."""
    summary: dict[str, dict] = {}
    records: list[dict] = []
    start = time.perf_counter()
    acc, preds = zero_shot_accuracy(items, setup.engine)
    summary["zero_shot"] = {
        "likelihood": acc,
        "vote": None,
        "parse_rate": None,
        "wall_s": time.perf_counter() - start,
    }
    records += [
        {"strategy": "zero_shot", "id": it["id"], "gold": it["answer_index"], "likelihood": p}
        for it, p in zip(items, preds, strict=True)
    ]
    for strategy in strategies:
        mcfg = dataclasses.replace(setup.config.medprompt, strategy=strategy, answer_mode="score")
        start = time.perf_counter()
        answers = answer_batch(
            items, engine=setup.engine, config=mcfg, retriever=setup.retriever, pool=setup.pool
        )
        num_likelihood = num_vote = num_parsed = num_runs = 0
        for item, answer in zip(items, answers, strict=True):
            voted, parsed = _vote(answer, item["options"])
            num_likelihood += answer.answer_index == item["answer_index"]
            num_vote += voted == item["answer_index"]
            num_parsed, num_runs = num_parsed + parsed, num_runs + len(answer.runs)
            records.append(
                {
                    "strategy": strategy,
                    "id": item["id"],
                    "gold": item["answer_index"],
                    "likelihood": answer.answer_index,
                    "vote": voted,
                    "confidence": answer.confidence,
                    "completions": [r.completion for r in answer.runs],
                }
            )
        summary[strategy] = {
            "likelihood": num_likelihood / len(items),
            "vote": num_vote / len(items),
            "parse_rate": num_parsed / max(num_runs, 1),
            "wall_s": time.perf_counter() - start,
        }
    return {"num_questions": len(items), "strategies": summary, "records": records}


def plot_strategies(summary: dict[str, dict], out_png: str | Path, *, title: str) -> Path:
    """Figure-3-style bars: likelihood accuracy per strategy, vote accuracy beside it."""
    plt = pyplot()

    names = list(summary)
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=120)
    lik = [100 * summary[n]["likelihood"] for n in names]
    vote = [100 * (summary[n]["vote"] or 0) for n in names]
    ax.bar([x - 0.2 for x in xs], lik, width=0.4, label="answer likelihood after reasoning (paper)")
    ax.bar([x + 0.2 for x in xs], vote, width=0.4, label="parsed answer, vote", hatch="//", alpha=0.7)
    for x, v in zip(xs, lik, strict=True):
        ax.text(x - 0.2, v + 1, f"{v:.0f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def run_medprompt_eval(cfg: MedpromptEvalConfig, *, setup=None) -> MedpromptEvalResult:
    """Load the questions, open the Medprompt setup, evaluate every strategy, write JSON, JSONL and PNG."""
    from clinray.serve.setup import open_setup

    questions = load_questions(cfg)
    items = load_items(cfg, questions)
    notes = list(questions.warnings)
    if questions.skipped:
        notes.insert(
            0, f"skipped {len(questions.skipped)} rows of {questions.source}: {questions.describe_skipped()}"
        )
    own = setup is None
    setup = setup or open_setup(cfg.setup)
    try:
        result = evaluate_strategies(items, setup=setup, strategies=cfg.strategies)
    finally:
        if own:
            setup.close()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "medprompt_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.pop("records")))
    result["data"] = questions.report()
    (out / "medprompt.json").write_text(json.dumps(result, indent=2))
    title = f"Medprompt strategies on {cfg.test_file} ({result['num_questions']} questions)"
    png = plot_strategies(result["strategies"], out / "medprompt.png", title=title)
    config_path = dump(cfg, out / "config.yaml")
    return MedpromptEvalResult(
        out_dir=out,
        strategies=result["strategies"],
        num_questions=result["num_questions"],
        json_path=out / "medprompt.json",
        png=png,
        config_path=config_path,
        problems=[] if result["num_questions"] else ["no question was answered"],
        notes=notes,
    )
