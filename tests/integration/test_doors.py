"""Every stage has three doors (``clinray <stage>``, ``python -m ray_jobs.<module>``, the demo stage) and
one runner behind them: for the same recipe and overrides they give the same exit code and write the
same resolved ``config.yaml``. Stages run at toy size (a few steps, a few questions) on the session's
local Ray cluster, in pipeline order, each reading what the one before it made.
"""

from __future__ import annotations

import importlib

import pytest

from clinray import cli
from clinray.demo import DemoContext, StageFailed, exit_code
from clinray.jobs import JOBS

#: Toy-size overrides per job, applied last by every door.
SMALL = {
    "pretrain": ["train.max_steps=4", "train.log_every=2", "train.checkpoint_every=2"],
    "cot": ["limit=1", "k=2", "max_new_tokens=8"],
    "sft": ["train.max_steps=2", "sft.option_orders=1", "sft.epochs=1", "train.log_every=1"],
    "eval": ["limit=4", "tasks=[clinray_medqa_4]", "merge_columns={}"],
    "peft": [
        "clinical.steps=4",
        "clinical.seq_len=64",
        "task.seq_len=64",
        "task.epochs=2",
        "task.batch_size=8",
        "synthetic.num_train=64",
        "synthetic.num_test=40",
        "bootstrap_samples=50",
    ],
    "medprompt_eval": ["limit=1", "strategies=[zero_shot_cot]", "setup.medprompt.max_new_tokens=4"],
}
#: Demo stages in pipeline order (each needs the artifacts of the ones before).
STAGES = ["curate", "pack", "pretrain", "sft", "cot", "eval", "peft", "medprompt"]


@pytest.fixture(scope="module")
def ctx(ray_local, world_dir, tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("doors")
    return DemoContext(
        run_dir=run_dir,
        artifacts={"world": str(world_dir), "tiny_model": str(tiny_model_dir)},
        overrides=SMALL,
    )


def _doors(job: str, recipe: str, overrides: list[str]) -> dict[str, int]:
    args = ["--config", recipe, *[f"--set={o}" for o in overrides]]
    module = importlib.import_module(f"ray_jobs.{JOBS[job].ray_job}")
    return {"cli": cli.main([JOBS[job].command, *args]), "ray_jobs": module.main(args)}


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_three_doors_agree(stage, ctx):
    module = importlib.import_module(f"clinray.demo_stages.{stage}")
    section = module.run(ctx)  # the demo door (raises when not ok)
    ctx.artifacts.update(section.outputs)
    assert set(module.MAKES) <= set(section.outputs)
    assert set(module.JOBS) <= set(ctx.results), "the stage ran its jobs through DemoContext.run_job"
    for job, (recipe, overrides) in module.JOBS.items():
        config_path = ctx.results[job].config_path
        by_demo = config_path.read_text()
        codes = _doors(job, recipe, [*overrides(ctx), *SMALL.get(job, [])])
        assert codes == {"cli": 0, "ray_jobs": 0}, f"{job}: {codes}"
        assert config_path.read_text() == by_demo, f"{job}: the doors wrote different config.yaml"
        assert str(ctx.run_dir) in by_demo  # the stage's own outputs, not a recipe default


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "job", "bad", "error", "code"),
    [
        # a result that is not ok (too few tokens for one block): 1 everywhere, not a crash
        ("pack", "pack", "seq_len=100000", "no token block", 1),
        # a user mistake: 2 everywhere, with the "did you mean"
        ("curate", "curate", "length.min_word=3", "did you mean 'min_words'", 2),
    ],
)
def test_failures_give_the_same_exit_code_at_every_door(stage, job, bad, error, code, ctx, capsys):
    module = importlib.import_module(f"clinray.demo_stages.{stage}")
    overrides = {**ctx.overrides, job: [bad]}
    here = DemoContext(
        run_dir=ctx.run_dir / f"bad_{stage}", artifacts=dict(ctx.artifacts), overrides=overrides
    )
    with pytest.raises((StageFailed, ValueError), match=error) as info:
        module.run(here)
    assert exit_code(info.value) == code
    assert _doors(job, module.RECIPE, [*module.overrides(here), bad]) == {"cli": code, "ray_jobs": code}
    if code == 2:
        assert error in capsys.readouterr().err
