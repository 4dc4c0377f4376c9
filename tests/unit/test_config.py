"""The strict config loader: defaults < YAML < overrides, unknown keys and bad values rejected."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from clinray.config import ConfigError, dump, from_dict, load, parse_overrides, to_dict


@dataclasses.dataclass(kw_only=True, slots=True)
class Optim:
    """Optimizer settings."""

    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclasses.dataclass(kw_only=True, slots=True)
class Job:
    """A root config composing a sub-config."""

    name: str = "run"
    """Run name."""
    steps: int = 10
    """Number of steps."""
    arch: Literal["mistral", "mixtral"] = "mistral"
    """Model family."""
    out: Path | None = None
    """Output folder."""
    sources: list[str] = dataclasses.field(default_factory=lambda: ["clinical"])
    """Source names."""
    optim: Optim = dataclasses.field(default_factory=Optim)
    """Optimizer."""


def test_defaults_yaml_and_overrides_compose(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"steps": 5, "optim": {"lr": 0.01}}))
    cfg = load(Job, recipe, ["optim.lr=2e-4", "name=x", "sources=[clinical, general]", "out=/tmp/o"])
    assert cfg.steps == 5  # from YAML
    assert cfg.optim.lr == pytest.approx(2e-4)  # override beats YAML
    assert cfg.optim.betas == (0.9, 0.95)  # default kept
    assert cfg.name == "x" and cfg.sources == ["clinical", "general"] and cfg.out == Path("/tmp/o")


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        from_dict(Job, {"optim": {"lrr": 1.0}})
    msg = str(err.value)
    assert "optim.lrr" in msg and "did you mean 'lr'" in msg and "betas" in msg


def test_bad_values_say_what_is_allowed():
    with pytest.raises(ConfigError, match="choose one of"):
        from_dict(Job, {"arch": "llama"})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(Job, {"steps": "many"})
    with pytest.raises(ConfigError, match="lr must be positive"):
        from_dict(Job, {"optim": {"lr": -1}})
    with pytest.raises(ConfigError, match="expected 2 items"):
        from_dict(Job, {"optim": {"betas": [0.9]}})


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["steps"])
    assert parse_overrides(["a.b=1", "a.c=true", "d=x"]) == {"a": {"b": 1, "c": True}, "d": "x"}


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(Job, tmp_path / "nope.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load(Job, None, ["steps=3", "optim.lr=0.5"])
    path = dump(cfg, tmp_path / "resolved.yaml")
    again = load(Job, path)
    assert to_dict(again) == to_dict(cfg)


#: Root config class of each recipe, by file stem (``*_pretrain`` recipes share PretrainConfig).
RECIPE_CLASSES = {
    "curate": "clinray.data.pipeline:CurateConfig",
    "pack": "clinray.data.pack:PackConfig",
    "pretrain": "clinray.train.config:PretrainConfig",
    "cot": "clinray.cot.config:CoTConfig",
    "sft": "clinray.train.config:TrainConfig",
    "sft_mix": "clinray.sft.mixture:SFTMixture",
    "eval": "clinray.eval.config:EvalConfig",
    "peft": "clinray.peft_clinical.run:PeftConfig",
    "medprompt_eval": "clinray.eval.medprompt_eval:MedpromptEvalConfig",
    "index": "clinray.retrieval.build_index:IndexConfig",
    "medprompt": "clinray.serve.setup:MedpromptRunConfig",
    "serve": "clinray.serve.run:ServeConfig",
}
#: Values a recipe leaves to the command line on purpose.
RUNTIME_VALUES = {"medprompt_eval": ["setup.engine.model=some/model"]}
RECIPES = sorted((Path(__file__).resolve().parents[2] / "clinray" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_validates(recipe):
    import importlib

    from clinray.recipes import recipe_job

    key = "sft_mix" if recipe.stem.endswith("sft_mix") else recipe_job(recipe.stem)
    assert key in RECIPE_CLASSES, f"{recipe} has no root config class registered in this test"
    module, name = RECIPE_CLASSES[key].split(":")
    cls = getattr(importlib.import_module(module), name)
    cfg = load(cls, recipe, RUNTIME_VALUES.get(key))
    assert to_dict(cfg)
