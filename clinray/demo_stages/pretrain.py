"""Demo stage: continued pretraining of the tiny Mistral on the packed tiny world (2 workers, FSDP2/gloo).

Uses the ``tiny/pretrain`` recipe: 1.82M tokens, long enough for the model to bind the held-out drugs to
their conditions (``../shared/notes/fidelity.md``), with ``max_time_s`` as a safety cap. Then the
knowledge probe (:mod:`clinray.eval.probe`): the cloze accuracy on the held-out facts, before and after.
"""

from __future__ import annotations

import json

from clinray.demo import DemoContext, Section

ORDER = 60
TITLE = "Continued pretraining (Ray Train, FSDP2)"
BUDGET_S = 300
NEEDS = ("token_blocks", "tiny_model")
USES = ("world",)
MAKES = ("pretrained_model", "pretrain_run")
RECIPE = "tiny/pretrain"


def overrides(ctx: DemoContext) -> list[str]:
    return [
        f"model.path={ctx.artifacts['tiny_model']}",
        f"data.path={ctx.artifacts['token_blocks']}",
        f"run.storage_path={ctx.stage_dir('pretrain')}",
        "run.name=run",
        f"train.seed={ctx.seed}",
    ]


def progress(ctx: DemoContext) -> str:
    """The last logged step, read from the run's metrics.jsonl while training runs."""
    path = ctx.run_dir / "pretrain" / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    if not lines:
        return "starting workers"
    row = json.loads(lines[-1])
    losses = " ".join(
        f"{k[5:]} {v:.3f}" for k, v in row.items() if k.startswith("loss_") and isinstance(v, float)
    )
    return f"step {row['step']}  loss {losses}"


JOBS = {"pretrain": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def run(ctx: DemoContext) -> Section:
    result = ctx.run_job("pretrain", RECIPE, overrides(ctx))
    last = result.last
    capped = last["step"] < result.total_steps
    notes = [
        f"{last['step']} of {result.total_steps} planned steps (accumulation {result.grad_accum}), warm-up then "
        "cosine"
        + ("; stopped by the safety cap max_time_s (slow machine)" if capped else "")
        + f". Metrics: `{result.run_dir}/metrics.jsonl` and TensorBoard. Resolved config: `{result.config_path}`.",
    ]
    losses = result.losses()
    fmt = lambda v: round(v, 3) if isinstance(v, float) else v  # noqa: E731
    metrics = {"steps": last["step"], "tokens seen": last["tokens_seen"]}
    metrics.update({f"{k} loss first -> last": f"{fmt(a)} -> {fmt(b)}" for k, (a, b) in losses.items()})
    metrics["tokens/s (2 workers, last interval)"] = round(last["tokens_per_s"])
    from clinray.eval.probe import cloze_probe

    world = ctx.artifacts.get("world")
    if world:
        before = cloze_probe(ctx.artifacts["tiny_model"], world)
        after = cloze_probe(result.hf_final, world)
        metrics["knowledge probe, held-out facts (start -> pretrained)"] = (
            f"{before['accuracy']:.2f} -> {after['accuracy']:.2f} (chance 0.25; margin {after['margin']:+.2f} nats)"
        )
        notes.append(
            f"Knowledge probe: {after['items']} cloze items ('Patients with <condition> are usually treated with', "
            "the 4 drugs of its MedQA question ranked by likelihood) on the held-out facts: "
            f"{before['accuracy']:.2f} before, {after['accuracy']:.2f} after pretraining. At 0.65 or more the facts "
            "are there for instruction tuning to unlock (P+F); near 0.25 they are not."
        )
    loss_text = ", ".join(f"{k} {a:.2f} -> {b:.2f}" for k, (a, b) in losses.items() if a is not None)
    return Section(
        outputs=result.outputs(),
        metrics=metrics,
        notes=notes,
        images=[str(result.plot)],
        headline=[
            f"training  {last['step']} steps, {last['tokens_seen']:,} tokens; loss {loss_text}",
            *[f"probe     {v}" for k, v in metrics.items() if k.startswith("knowledge probe")],
        ],
    )
