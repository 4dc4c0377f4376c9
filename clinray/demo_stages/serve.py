"""Demo stage: serve the best model the demo made behind the Medprompt endpoint (Ray Serve, 127.0.0.1)
with the Medprompt stage's example store, send one real request over HTTP, and report the answer, its
votes and the exemplars it was shown (``serve`` job).

The app starts three replicas (LLM, retriever, ingress) on fractional CPUs and stops after the request;
the API key is ephemeral (made for this run, never written). Most of the stage's time is the replicas
loading torch and the model, not the request.
"""

from __future__ import annotations

import json
from pathlib import Path

from clinray.demo import DemoContext, Section
from clinray.demo import best_model as _best_model

ORDER = 95
TITLE = "Serving: the Medprompt endpoint on Ray Serve"
BUDGET_S = 90
"""Measured: 32 s on an idle 2-core machine (25 s of it the three replicas starting), about 55 s loaded."""
NEEDS = ("world", "tiny_model", "index")
USES = ("sft_model", "pretrained_model")
MAKES = ("serve_response",)
RECIPE = "tiny/serve"
MAX_NEW_TOKENS = 32


def best_model(ctx: DemoContext) -> tuple[str, str]:
    return _best_model(ctx, stage="serving")


def overrides(ctx: DemoContext) -> list[str]:
    return [
        f"model={best_model(ctx)[1]}",
        f"store_uri={ctx.artifacts['index']}",
        f"questions_file={Path(ctx.artifacts['world']) / 'questions' / 'medqa' / 'test.jsonl'}",
        f"max_new_tokens={MAX_NEW_TOKENS}",
        f"seed={ctx.seed}",
        "port=0",
        "llm_num_cpus=0.5",
        f"out_dir={ctx.stage_dir('serve')}",
    ]


JOBS = {"serve": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def run(ctx: DemoContext) -> Section:
    result = ctx.run_job("serve", RECIPE, overrides(ctx))
    model_key = best_model(ctx)[0]
    r = result.response or {}
    request = json.loads(result.response_path.read_text())["request"]
    labels = list(r.get("votes", {}))
    notes = [
        f"`POST /v1/medprompt` to `{model_key}` on {result.url} (Ray Serve, ephemeral API key), "
        f"the first MedQA test question of the world; response: `{result.response_path}`.",
        "",
        f"> {request['question']}",
        "",
        *[f"> {chr(65 + i)}. {opt}" for i, opt in enumerate(request["options"])],
        "",
        "| answer | text | confidence | votes |",
        "|---|---|---|---|",
        f"| {r['answer']} | {r['answer_text']} | {r['confidence']:.2f} | "
        + ", ".join(f"{k}: {r['votes'][k]}" for k in labels)
        + " |",
        "",
        "| run | option order | answer | method |",
        "|---|---|---|---|",
        *[
            f"| {i} | {' '.join(run['option_order'])} | {run['answer']} | {run['method']} |"
            for i, run in enumerate(r["runs"], 1)
        ],
        "",
        "| exemplar | similarity |",
        "|---|---|",
        *[
            f"| `{ex['id']}` | {ex['score']:.3f} |"
            if ex["score"] is not None
            else f"| `{ex['id']}` | static |"
            for ex in r["exemplars"]
        ],
        "",
        "Latency (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["latency_ms"].items()),
        *[f"Warning: {w}" for w in r["warnings"]],
    ]
    metrics = {
        "model": model_key,
        "startup (s)": round(result.startup_s, 1),
        "request (s)": round(result.request_s or 0.0, 2),
        "answer": f"{r['answer']} ({r['confidence']:.2f})",
        "exemplars": len(r["exemplars"]),
    }
    return Section(
        outputs=result.outputs(),
        metrics=metrics,
        notes=notes,
        headline=[
            "",
            f"Served Medprompt ({model_key}, POST /v1/medprompt over HTTP):",
            "| answer | votes | exemplars | seconds |",
            "|---|---|---|---:|",
            f"| {r['answer']} ({r['answer_text']}) | {' '.join(f'{k}:{v}' for k, v in sorted(r['votes'].items()))} "
            f"| {len(r['exemplars'])} | {result.request_s:.2f} |",
        ],
    )
