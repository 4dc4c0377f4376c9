"""Demo stage: the two-step clinical PEFT recipe (``peft`` job) on the demo's pretrained model P.

Step 1 trains a clinical LoRA adapter on the tiny world's clinical corpus with the causal-LM loss; step
2 classifies synthetic admission notes (conditions named only through the corpus's cues: a test, a
finding, a drug) with a task adapter stacked on the frozen clinical one, beside the task adapter alone
and the classifier head alone. The report shows macro and micro AUROC side by side and whether step 1
helped against the noise (paired bootstrap). One process on CPU, no Ray.
"""

from __future__ import annotations

from clinray.demo import DemoContext, Section

ORDER = 85
TITLE = "Two-step clinical PEFT (clinical LoRA adapter + task adapter, AUROC)"
BUDGET_S = 60
NEEDS = ("world", "pretrained_model")
MAKES = ("peft_table", "peft_adapter_concat")
RECIPE = "tiny/peft"


def overrides(ctx: DemoContext) -> list[str]:
    return [
        f"model_path={ctx.artifacts['pretrained_model']}",
        f"world_dir={ctx.artifacts['world']}",
        f"out={ctx.stage_dir('peft')}",
        f"seed={ctx.seed}",
    ]


JOBS = {"peft": (RECIPE, overrides)}
"""The jobs this stage runs: job name -> (recipe, overrides from the context)."""


def run(ctx: DemoContext) -> Section:
    from clinray.peft_clinical.run import auroc_markdown

    result = ctx.run_job("peft", RECIPE, overrides(ctx))
    table = result.table
    variants, step1 = table["variants"], table["step1"]
    notes = [
        f"Base: the pretrained model P. Step 1: a LoRA adapter (causal LM) on the clinical corpus, "
        f"{step1['steps']} steps, loss {step1['loss_first']:.3f} -> {step1['loss_last']:.3f}. Step 2: "
        f"{table['train_notes']} training and {table['test_notes']} test notes, "
        f"{len(variants['stacked']['per_label'])} conditions (multi-label, BCE), the same head init for "
        "every variant; the clinical adapter is frozen in `stacked` (it gets no gradient).",
        "",
        auroc_markdown(table).rstrip(),
        "",
        f"Report: `{result.report_path}`; resolved config: `{result.config_path}`.",
    ]
    summary = ", ".join(f"{name} {_pair(row)}" for name, row in variants.items())
    helped = table["step1_helped"].split(" (")[0]
    return Section(
        outputs=result.outputs(),
        metrics={f"{name} macro / micro AUROC": _pair(row, " / ") for name, row in variants.items()},
        notes=notes,
        headline=[f"peft AUROC macro/micro: {summary}; step 1 helped: {helped}"],
    )


def _pair(row: dict, sep: str = "/") -> str:
    return sep.join("-" if row[k] is None else f"{row[k]:.3f}" for k in ("macro", "micro"))
