"""``clinray medprompt``: answer multiple-choice questions with a Medprompt strategy."""

from __future__ import annotations

import argparse

HELP = "answer multiple-choice questions with Medprompt (zero-shot/static/kNN CoT, choice-shuffle ensemble)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="tiny/medprompt", help="a shipped recipe or a YAML file (default: tiny/medprompt)"
    )
    from clinray.jobs import add_set_argument

    add_set_argument(parser, example="engine.model=runs/pretrain/run/hf/final")
    parser.add_argument("--question", help="the question stem")
    parser.add_argument("--option", action="append", default=[], help="an option (repeat, in order)")
    parser.add_argument(
        "--questions",
        help="a question file to answer instead, in any native layout (MedQA JSONL, MedMCQA, MMLU CSV, "
        "PubMedQA JSON); answers are optional",
    )
    parser.add_argument("--benchmark", help="the benchmark whose layout --questions has (default: detected)")
    parser.add_argument("--cop-base", default="auto", help="MedMCQA cop base: auto, 0 or 1 (default: auto)")
    parser.add_argument("--limit", type=int, default=10, help="answer at most this many from --questions")
    parser.add_argument("--out", help="write answers with every run's prompt and completion to this JSONL")


def _items(args: argparse.Namespace) -> list[dict]:
    """Questions to answer: ``{id, question, options, gold}`` (``gold`` None when unlabelled)."""
    import sys

    from clinray.qa import read_questions

    if args.questions:
        questions = read_questions(args.questions, benchmark=args.benchmark, cop_base=args.cop_base)
        for line in questions.warnings:
            print(f"warning: {line}", file=sys.stderr)
        if questions.skipped:
            print(
                f"warning: skipped {len(questions.skipped)} rows of {questions.source}: "
                f"{questions.describe_skipped()}",
                file=sys.stderr,
            )
        chosen = questions.questions[: args.limit]
        return [
            {"id": q.id, "question": q.text, "options": list(q.options), "gold": q.answer_index}
            for q in chosen
        ]
    if not args.question or len(args.option) < 2:
        raise ValueError("give --question and at least two --option, or --questions FILE")
    return [{"id": None, "question": args.question, "options": args.option, "gold": None}]


def run(args: argparse.Namespace) -> int:
    import json

    from clinray.config import load
    from clinray.prompting.medprompt import answer_batch
    from clinray.recipes import resolve_recipe
    from clinray.serve.setup import MedpromptRunConfig, open_setup

    cfg = load(MedpromptRunConfig, resolve_recipe(args.config), args.overrides)
    items = _items(args)
    setup = open_setup(cfg)
    try:
        answers = answer_batch(
            items, engine=setup.engine, config=cfg.medprompt, retriever=setup.retriever, pool=setup.pool
        )
    finally:
        setup.close()
    out = open(args.out, "w", encoding="utf-8") if args.out else None  # noqa: SIM115
    for item, ans in zip(items, answers, strict=True):
        mark = (
            ""
            if item["gold"] is None
            else ("  (correct)" if ans.answer_index == item["gold"] else "  (wrong)")
        )
        print(f"{item['question'][:70]!r} -> {ans.answer_text!r} confidence {ans.confidence:.2f}{mark}")
        if out:
            out.write(json.dumps({"id": item["id"], "gold": item["gold"], **ans.to_dict()}) + "\n")
    if out:
        out.close()
    return 0
