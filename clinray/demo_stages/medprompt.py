"""Demo stage: build the Milvus Lite example store from the world, answer test questions with Medprompt.

The index holds the world's MedQA and MedMCQA training questions with verified CoT, embedded by Ray
Data actors; the best model so far (SFT, else pretrained, else the random tiny model) answers a few
MedQA test questions with each strategy. With a tiny model most completions do not name an option, so
most runs are answered by option likelihood after the reasoning (the paper's scoring): the table shows
how each run was resolved, not only the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from clinray.demo import DemoContext, StageResult

ORDER = 90
TITLE = "Medprompt: example store and prompting strategies"
BUDGET_S = 90
NUM_QUESTIONS = 3
MAX_NEW_TOKENS = 32


def _best_model(ctx: DemoContext) -> tuple[str, str]:
    for key in ("sft_model", "pretrained_model", "tiny_model"):
        if ctx.artifacts.get(key):
            return key, ctx.artifacts[key]
    raise ValueError("the Medprompt stage needs a model: run the tiny model stage first")


def _test_items(world: Path) -> list[dict]:
    from clinray.retrieval.build_index import options_and_answer

    items = []
    for line in (
        (world / "questions/medqa/test.jsonl").read_text(encoding="utf-8").splitlines()[:NUM_QUESTIONS]
    ):
        rec = json.loads(line)
        options, gold = options_and_answer(rec)
        items.append({"id": rec["id"], "question": rec["question"], "options": options, "gold": gold})
    return items


def run(ctx: DemoContext) -> StageResult:
    from clinray.engines.transformers_engine import TransformersEngine
    from clinray.prompting.medprompt import STRATEGIES, MedpromptConfig, answer_batch
    from clinray.retrieval.build_index import IndexConfig, build_index
    from clinray.retrieval.embed import Embedder
    from clinray.retrieval.milvus_store import MilvusExampleStore, MilvusRetriever, StoreConfig

    out = ctx.stage_dir("medprompt")
    world = Path(ctx.artifacts["world"])
    cfg = IndexConfig(world=str(world), store=StoreConfig(uri=str(out / "index.db"), index_type="FLAT"))
    report = build_index(cfg)
    model_key, model_path = _best_model(ctx)
    engine = TransformersEngine(model_path, device="auto")
    store = MilvusExampleStore(cfg.store)
    retriever, pool = MilvusRetriever(store, Embedder(cfg.embed)), store.all_examples()
    items = _test_items(world)
    results: dict[str, list] = {}
    try:
        for strategy in STRATEGIES:
            mcfg = MedpromptConfig(strategy=strategy, max_new_tokens=MAX_NEW_TOKENS, seed=ctx.seed)
            results[strategy] = answer_batch(
                items, engine=engine, config=mcfg, retriever=retriever, pool=pool
            )
    finally:
        store.close()
    answers_path = out / "answers.jsonl"
    with answers_path.open("w", encoding="utf-8") as fh:
        for answers in results.values():
            for item, ans in zip(items, answers, strict=True):
                fh.write(
                    json.dumps({"question_id": item["id"], "gold": item["gold"], **ans.to_dict()}) + "\n"
                )
    metrics = {
        "model": model_key,
        "examples indexed": report["count"],
        "rejected (by reason)": json.dumps(report["rejected_by_reason"]),
        "index build (s)": report["wall_s"],
    }
    for strategy, answers in results.items():
        runs = [run for ans in answers for run in ans.runs]
        correct = sum(ans.answer_index == item["gold"] for ans, item in zip(answers, items, strict=True))
        metrics[f"{strategy}: correct"] = f"{correct}/{len(items)}"
        metrics[f"{strategy}: runs parsed"] = f"{sum(r.method == 'parsed' for r in runs)}/{len(runs)}"
    return StageResult(
        outputs={"index": str(out / "index.db"), "medprompt_answers": str(answers_path)},
        metrics=metrics,
        notes=_table(items, results),
    )


def _table(items: list[dict], results: dict[str, list]) -> list[str]:
    strategies = list(results)
    lines = [
        "Answers per strategy (answer, confidence = share of runs that chose it; * = correct):",
        "",
        "| question | gold | " + " | ".join(strategies) + " |",
        "|---|---|" + "---|" * len(strategies),
    ]
    for i, item in enumerate(items):
        cells = []
        for strategy in strategies:
            ans = results[strategy][i]
            mark = "*" if ans.answer_index == item["gold"] else ""
            cells.append(f"{ans.answer_text}{mark} ({ans.confidence:.1f})")
        lines.append(f"| {item['id']} | {item['options'][item['gold']]} | " + " | ".join(cells) + " |")
    return lines
