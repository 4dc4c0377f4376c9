"""Demo stage: generate the tiny clinical world that every later stage reads (``world``)."""

from __future__ import annotations

from clinray.demo import DemoContext, Section

ORDER = 10
TITLE = "Tiny clinical world"
BUDGET_S = 30
NEEDS: tuple[str, ...] = ()
MAKES = ("world",)


def run(ctx: DemoContext) -> Section:
    from clinray.synthetic import generate_world

    out = ctx.stage_dir("world")
    manifest = generate_world(out, seed=ctx.seed, scale=1.0)
    counts = manifest["counts"]
    notes = [
        f"{counts['num_facts']} invented facts ({counts['num_train_facts']} train / {counts['num_test_facts']} test), "
        f"{counts['num_documents']} documents ({counts['num_corpus_bytes'] / 1e6:.1f} MB) in five formats, "
        f"{counts['num_questions']} benchmark questions and {counts['num_sft_samples']} SFT samples.",
        "Planted ground truth (duplicates, repeated passages, junk, corrupt files, contamination) is in "
        f"`{out / 'manifest.json'}`.",
    ]
    return Section(outputs={"world": str(out)}, metrics=counts, notes=notes)
