"""Answer multiple-choice questions with a Medprompt strategy: the public API of ``clinray.prompting``.

``answer_question(question, options, strategy=..., engine=..., retriever=...)`` returns a
:class:`MedpromptAnswer` with the chosen option, a confidence and every run's prompt, completion and
parse; ``answer_batch`` does the same for many questions with all their prompts generated in one engine
call (an ensemble's n prompts are a batch, not n sequential generations). Strategies:

- ``zero_shot_cot``: ``Let's think step-by-step.`` and nothing else;
- ``static_fewshot_cot``: the same k examples (seeded draw) before every question;
- ``knn_fewshot_cot``: the k most similar stored examples, most similar last;
- ``cot_ensemble``: n runs (paper: 5, temperature 0.2) with distinct permutations of the options and of
  the examples (kNN by default), answers mapped back to the original options, plurality vote.

Each run's answer is parsed from the completion; a run whose completion names no option is answered by
the likelihood of each option after ``Therefore, the correct answer is:`` (the paper's evaluation),
recorded as ``method="scored"``. With ``answer_mode="score"`` every run is scored that way, which is
what the paper's evaluation does. So every strategy always returns an answer, and the record says how.
A prompt longer than the engine's window loses whole few-shot examples, farthest first, before it is
sent (:mod:`clinray.prompting.fit`; ``num_shots_used`` / ``num_shots_dropped`` in each run's record).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from clinray.prompting.cot import static_examples
from clinray.prompting.ensemble import apply_permutation, distinct_permutations, map_back, plurality_vote
from clinray.prompting.fit import Window, fit_examples, window_of
from clinray.prompting.knn_fewshot import Retriever, knn_examples
from clinray.prompting.parsing import parse_answer, reasoning_of
from clinray.prompting.templates import Example, build_prompt, option_display, scoring_context

if TYPE_CHECKING:
    from clinray.engines.base import GenerationEngine

__all__ = [
    "STRATEGIES",
    "MedpromptConfig",
    "MedpromptAnswer",
    "RunRecord",
    "answer_question",
    "answer_batch",
    "parse_runs",
    "apply_scores",
]

Strategy = Literal["zero_shot_cot", "static_fewshot_cot", "knn_fewshot_cot", "cot_ensemble"]
STRATEGIES: tuple[str, ...] = ("zero_shot_cot", "static_fewshot_cot", "knn_fewshot_cot", "cot_ensemble")


@dataclasses.dataclass(kw_only=True, slots=True)
class MedpromptConfig:
    """How a strategy builds and resolves its runs (paper values as defaults)."""

    strategy: Strategy = "cot_ensemble"
    """One of zero_shot_cot, static_fewshot_cot, knn_fewshot_cot, cot_ensemble."""
    num_shots: int = 5
    """Few-shot examples per prompt (paper: 5)."""
    num_runs: int = 5
    """cot_ensemble only: runs per question (paper: 5)."""
    ensemble_temperature: float = 0.2
    """cot_ensemble only: sampling temperature (paper: 0.2)."""
    temperature: float = 0.0
    """Single-run strategies: sampling temperature (0: greedy)."""
    ensemble_examples: Literal["knn", "static", "none"] = "knn"
    """cot_ensemble only: where its few-shot examples come from."""
    max_new_tokens: int = 256
    """Longest generated reasoning plus answer, in tokens."""
    answer_mode: Literal["generate", "score"] = "generate"
    """generate: parse the answer, score the options only when parsing fails; score: always score."""
    use_labels: bool = True
    """Show options as ``A. text`` (answers may then be letters)."""
    seed: int = 0
    """Seed of the static draw, the permutations and the sampling."""
    shuffle_examples: bool = True
    """cot_ensemble only: permute the few-shot examples too (the paper's preset). False keeps them in one
    order across the runs and shuffles only the options (promptbase's choice-shuffle), so the n prompts
    share their few-shot prefix, which vLLM's prefix caching and the transformers engine's
    ``share_prefix`` compute once; the trade-off is less diversity between the runs."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is unknown; choose one of {list(STRATEGIES)}")
        if self.num_shots < 1:
            raise ValueError(f"num_shots must be at least 1, got {self.num_shots}")
        if self.num_runs < 1:
            raise ValueError(f"num_runs must be at least 1, got {self.num_runs}")
        if self.temperature < 0 or self.ensemble_temperature < 0:
            raise ValueError("temperatures must be non-negative")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclasses.dataclass(kw_only=True, slots=True)
class RunRecord:
    """One generation of one question."""

    prompt: str
    completion: str
    permutation: list[int]
    """Original option index shown at each position."""
    example_ids: list[str]
    """Few-shot example ids in shown order."""
    parsed: int | None
    """Shown index read from the completion (None: not parseable, or answer_mode=score)."""
    parse_form: str
    method: Literal["parsed", "scored"]
    mapped_back: int
    """The run's answer as an index into the original options."""
    option_scores: list[float] | None = None
    """Log-likelihood of each shown option after the reasoning, when scored."""
    num_shots_used: int = 0
    """Few-shot examples in the prompt (``example_ids``)."""
    num_shots_dropped: int = 0
    """Examples dropped, whole, to fit the model's window (``clinray.prompting.fit``)."""
    num_prompt_tokens: int | None = None
    """The prompt's tokens, as the engine counts them (None: the engine does not count)."""


@dataclasses.dataclass(kw_only=True, slots=True)
class MedpromptAnswer:
    """The strategy's answer to one question."""

    answer_index: int
    answer_text: str
    confidence: float
    """Share of the runs that chose the answer (1.0 for single-run strategies)."""
    votes: dict[int, int]
    """Runs per original option index."""
    strategy: str
    runs: list[RunRecord]
    num_shots_dropped: int = 0
    """Examples dropped to fit the window, over all runs."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class _Plan:
    question: str
    options: list[str]
    prompts: list[str]
    perms: list[tuple[int, ...]]
    example_ids: list[list[str]]
    num_dropped: list[int]
    num_tokens: list[int | None]


def _base_examples(
    kind: str,
    question: str,
    options: Sequence[str],
    question_id: str | None,
    cfg: MedpromptConfig,
    retriever: Retriever | None,
    pool: Sequence[Example] | None,
) -> list[Example]:
    if kind == "none":
        return []
    if kind == "knn":
        if retriever is None:
            raise ValueError(
                f"strategy {cfg.strategy!r} with kNN examples needs a retriever (a Milvus index)"
            )
        return knn_examples(question, options, retriever=retriever, k=cfg.num_shots, question_id=question_id)
    if not pool:
        raise ValueError(f"strategy {cfg.strategy!r} with static examples needs a pool of examples")
    return static_examples(
        pool, k=cfg.num_shots, seed=cfg.seed, exclude_id=question_id, exclude_question=question
    )


def _plan(item: Mapping[str, Any], cfg: MedpromptConfig, retriever, pool, window: Window | None) -> _Plan:
    question, options, qid = str(item["question"]), list(item["options"]), item.get("id")
    qid = None if qid is None else str(qid)
    kind = {"zero_shot_cot": "none", "static_fewshot_cot": "static", "knn_fewshot_cot": "knn"}.get(
        cfg.strategy, cfg.ensemble_examples
    )
    examples = _base_examples(kind, question, options, qid, cfg, retriever, pool)
    if cfg.strategy == "cot_ensemble":
        rng = random.Random(f"{cfg.seed}:{qid or question}")
        perms = distinct_permutations(cfg.num_runs, len(options), rng=rng)
        example_perms = (
            distinct_permutations(cfg.num_runs, len(examples), rng=rng)
            if examples and cfg.shuffle_examples
            else None
        )
    else:
        perms, example_perms = [tuple(range(len(options)))], None
    # Whole examples leave a prompt too long for the window: kNN's least similar (first in its list)
    # first, static's last first (see clinray.prompting.fit).
    rank = list(range(len(examples))) if kind == "knn" else list(reversed(range(len(examples))))
    budget = (
        window.budget([option_display(options, j, use_labels=cfg.use_labels) for j in range(len(options))])
        if window
        else None
    )
    plan = _Plan(question, options, [], perms, [], [], [])
    for r, perm in enumerate(perms):
        order = list(example_perms[r]) if example_perms else list(range(len(examples)))
        shown = apply_permutation(options, perm)
        fitted = fit_examples(
            lambda exs, shown=shown: build_prompt(
                question, shown, examples=exs, cot=True, use_labels=cfg.use_labels
            ),
            [examples[i] for i in order],
            drop_order=sorted(range(len(order)), key=lambda pos: rank[order[pos]]),
            budget=budget,
            count=window.count if window else None,
        )
        plan.prompts.append(fitted.prompt)
        plan.example_ids.append([ex.id for ex in fitted.examples])
        plan.num_dropped.append(fitted.num_dropped)
        plan.num_tokens.append(fitted.num_tokens)
    return plan


def _score_all(engine, requests: list[tuple[str, list[str]]]) -> list[list[float]]:
    """Score many (context, continuations) requests, in one batch where the engine offers one."""
    if not requests:
        return []
    if hasattr(engine, "score_batch"):
        return engine.score_batch(requests)
    return [engine.score(ctx, conts) for ctx, conts in requests]


def _resolve_runs(
    plans: list[_Plan], completions: list[str], engine, cfg: MedpromptConfig
) -> list[list[RunRecord]]:
    """Parse every run; score the options of the runs that need it, all in one batch."""
    runs, pending, requests = parse_runs(plans, completions, cfg)
    apply_scores(pending, _score_all(engine, requests))
    return runs


def parse_runs(plans: list[_Plan], completions: list[str], cfg: MedpromptConfig):
    """Parse every run: ``(runs per plan, runs pending a score, their (context, continuations))``.

    Split from the scoring so that a caller that reaches the engine asynchronously (the served
    ingress) can send the score requests itself and then call :func:`apply_scores`.
    """
    runs: list[list[RunRecord]] = []
    pending: list[tuple[RunRecord, list[int]]] = []
    requests: list[tuple[str, list[str]]] = []
    at = 0
    for plan in plans:
        records = []
        for r, perm in enumerate(plan.perms):
            completion = completions[at + r]
            shown = apply_permutation(plan.options, perm)
            parsed = parse_answer(completion, shown) if cfg.answer_mode == "generate" else None
            ok = parsed is not None and parsed.index is not None
            record = RunRecord(
                prompt=plan.prompts[r],
                completion=completion,
                permutation=list(perm),
                example_ids=plan.example_ids[r],
                parsed=parsed.index if parsed is not None else None,
                parse_form=parsed.form if parsed is not None else "answer_mode=score",
                method="parsed" if ok else "scored",
                mapped_back=map_back(perm, parsed.index) if ok else -1,
                num_shots_used=len(plan.example_ids[r]),
                num_shots_dropped=plan.num_dropped[r],
                num_prompt_tokens=plan.num_tokens[r],
            )
            if not ok:
                context = scoring_context(plan.prompts[r], reasoning_of(completion))
                conts = [" " + option_display(shown, j, use_labels=cfg.use_labels) for j in range(len(shown))]
                requests.append((context, conts))
                pending.append((record, list(perm)))
            records.append(record)
        at += len(plan.prompts)
        runs.append(records)
    return runs, pending, requests


def apply_scores(pending: list[tuple[RunRecord, list[int]]], scores: Sequence[Sequence[float]]) -> None:
    """Answer each pending run by its best-scored option (mapped back to the original order)."""
    for (record, perm), row in zip(pending, scores, strict=True):
        record.option_scores = [float(s) for s in row]
        record.mapped_back = map_back(perm, max(range(len(row)), key=lambda j: row[j]))


def answer_batch(
    items: Sequence[Mapping[str, Any]],
    *,
    engine: GenerationEngine,
    config: MedpromptConfig | None = None,
    retriever: Retriever | None = None,
    pool: Sequence[Example] | None = None,
) -> list[MedpromptAnswer]:
    """Answer many questions; all their prompts go to the engine in one ``generate`` call.

    Args:
        items: mappings with ``question``, ``options`` (list of texts) and optionally ``id``.
        engine: a :class:`~clinray.engines.base.GenerationEngine`.
        config: the strategy and its settings (defaults: the paper's CoT ensemble).
        retriever: nearest-example search, needed by the kNN strategies.
        pool: stored examples, needed by static few-shot.
    """
    cfg = config or MedpromptConfig()
    window = window_of(engine, max_new_tokens=cfg.max_new_tokens)
    plans = [_plan(item, cfg, retriever, pool, window) for item in items]
    prompts = [p for plan in plans for p in plan.prompts]
    temperature = cfg.ensemble_temperature if cfg.strategy == "cot_ensemble" else cfg.temperature
    completions = engine.generate(
        prompts, max_new_tokens=cfg.max_new_tokens, temperature=temperature, seed=cfg.seed
    )
    if len(completions) != len(prompts):
        raise RuntimeError(f"engine returned {len(completions)} completions for {len(prompts)} prompts")
    answers = []
    for plan, runs in zip(plans, _resolve_runs(plans, completions, engine, cfg), strict=True):
        winner, votes, share = plurality_vote([run.mapped_back for run in runs])
        answers.append(
            MedpromptAnswer(
                answer_index=winner,
                answer_text=plan.options[winner],
                confidence=share,
                votes=votes,
                strategy=cfg.strategy,
                runs=runs,
                num_shots_dropped=sum(plan.num_dropped),
            )
        )
    return answers


def answer_question(
    question: str,
    options: Sequence[str],
    *,
    engine: GenerationEngine,
    strategy: str | None = None,
    config: MedpromptConfig | None = None,
    retriever: Retriever | None = None,
    pool: Sequence[Example] | None = None,
    question_id: str | None = None,
) -> MedpromptAnswer:
    """Answer one question with a strategy (``strategy`` overrides ``config.strategy``)."""
    cfg = config or MedpromptConfig()
    if strategy is not None and strategy != cfg.strategy:
        cfg = dataclasses.replace(cfg, strategy=strategy)
    item = {"question": question, "options": list(options), "id": question_id}
    return answer_batch([item], engine=engine, config=cfg, retriever=retriever, pool=pool)[0]
