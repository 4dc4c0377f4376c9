"""The ``clinray cot`` config: which questions, which teacher, how many chains, where they go.

Kept apart from the stage (no Ray, torch or transformers import), so loading a recipe and finding a
user's mistake costs no heavy import.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from clinray.data.decontam_config import DecontamConfig
from clinray.qa.files import QuestionFile
from clinray.results import missing_dir, missing_file, missing_model

__all__ = ["CoTInput", "TeacherConfig", "CoTConfig"]


CoTInput = QuestionFile
"""One question file (:class:`clinray.qa.files.QuestionFile`)."""


@dataclasses.dataclass(kw_only=True, slots=True)
class TeacherConfig:
    """The model that writes the explanations."""

    kind: Literal["transformers", "openai"] = "transformers"
    """``transformers``: a local Hugging Face folder in each Ray Data actor; ``openai``: any
    OpenAI-compatible ``/v1/completions`` server (vLLM, TGI, clinray serve)."""
    model: str = ""
    """transformers: the model folder (or hub id); openai: the served model name."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """openai only: the server's base URL, up to and including ``/v1``."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai only: the environment variable that holds the bearer token (unset or empty: none); the key
    itself never goes into a recipe, a report or ``config.yaml``."""
    device: str = "auto"
    """transformers only: ``cpu``, ``cuda`` or ``auto`` (CUDA when the actor has a GPU)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """transformers only: weights dtype (``auto``: bfloat16 on CUDA, float32 on CPU)."""
    batch_size: int = 16
    """Prompts per Ray Data batch: one ``generate`` call (one HTTP request for openai)."""
    concurrency: int = 1
    """Ray Data actors generating in parallel (each loads the model once, or holds one HTTP client)."""
    num_cpus: float = 1.0
    """CPUs reserved per actor."""
    num_gpus: float = 0.0
    """GPUs per actor (transformers on a GPU node: 1)."""
    timeout_s: float = 300.0
    """openai only: HTTP timeout per request (a batch of ``batch_size`` prompts)."""

    def __post_init__(self) -> None:
        if self.kind == "transformers" and self.num_gpus == 0 and self.device.startswith("cuda"):
            raise ValueError("teacher.device is cuda but teacher.num_gpus is 0: give each actor a GPU")
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"teacher.base_url must be an http(s) URL, got {self.base_url!r}")
        for name in ("batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"teacher.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.timeout_s <= 0:
            raise ValueError("teacher.num_cpus and num_gpus must be >= 0 and timeout_s > 0")


@dataclasses.dataclass(kw_only=True, slots=True)
class CoTConfig:
    """``clinray cot``: verified chain-of-thought for multiple-choice training questions (paper 3.2)."""

    world: str = ""
    """A tiny world folder: adds its MedQA and MedMCQA *train* questions, and decontaminates against its
    test questions unless ``decontaminate.questions_root`` is set."""
    inputs: list[CoTInput] = dataclasses.field(default_factory=list)
    """Question files (training splits: these questions become SFT targets and kNN examples)."""
    limit: int = 0
    """Questions per input file, the first in file order after the unlabelled ones (0: all); the rest are
    counted as ``over_limit`` (not listed one by one in the rejects)."""
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    """The model that writes the explanations."""
    k: int = 5
    """Explanations per question, each with the options in another seeded order."""
    max_new_tokens: int = 512
    """Tokens a chain may take (reasoning and final answer)."""
    temperature: float = 0.2
    """Sampling temperature (the paper's ensemble value; 0: greedy, only the shuffles vary the k chains).
    The transformers teacher samples each chain from its own seed, so a chain does not depend on its batch."""
    seed: int = 0
    """Seed of the option orders, the chains' sampling and the few-shot draw."""
    use_labels: bool = False
    """Show the options with letters (``A. text``) and answer ``C. text``; off: the paper's Figure 4/5
    layout (options one per line, the answer as the option's text), as the SFT data has it."""
    num_examples: int = 0
    """Few-shot Figure 5 examples before each question, drawn once with ``seed`` from the input questions
    that carry an explanation (never the asked question): lets a teacher not tuned to the format follow it."""
    keep_per_question: int = 0
    """Verified chains written per question, the first in sample order (0: all, as the paper keeps them)."""
    min_written: int = 1
    """The result is not ok when fewer chains are written (0: an empty output is a valid result)."""
    decontaminate: DecontamConfig = dataclasses.field(default_factory=DecontamConfig)
    """Questions that copy an evaluation question (the 13-gram rule of the SFT data stage, on the stem)
    are not sent to the teacher (``contaminated``); needs ``questions_root`` (or ``world``)."""
    out_dir: str = "runs/cot"
    """Output folder: ``cot.jsonl``, ``rejects.jsonl``, ``cot_report.{json,md}``, ``config.yaml``."""

    def __post_init__(self) -> None:
        if not self.world and not self.inputs:
            raise ValueError("no questions: set world=<tiny world folder> or inputs=[{path: ...}]")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 (explanations per question), got {self.k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        for name in ("limit", "num_examples", "keep_per_question", "min_written"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.out_dir:
            raise ValueError("out_dir is not set")

    def all_inputs(self) -> list[CoTInput]:
        """The configured inputs, then the world's training question files."""
        inputs = list(self.inputs)
        if self.world:
            root = Path(self.world) / "questions"
            inputs += [
                CoTInput(path=str(root / "medqa" / "train.jsonl"), source="medqa", benchmark="medqa"),
                CoTInput(path=str(root / "medmcqa" / "train.json"), source="medmcqa", benchmark="medmcqa"),
            ]
        return inputs

    def decontam(self) -> DecontamConfig:
        """The decontamination settings, with the world's questions as the default evaluation sets."""
        if self.decontaminate.enabled and not self.decontaminate.questions_root and self.world:
            return dataclasses.replace(self.decontaminate, questions_root=str(Path(self.world) / "questions"))
        return self.decontaminate

    def check_inputs(self) -> list[str]:
        """Every missing question file, teacher folder or evaluation folder at once, before Ray starts."""
        problems: list[str] = []
        if self.world and not (Path(self.world) / "manifest.json").is_file():
            return [f"world {self.world!r} is not a tiny world folder (no manifest.json)"]
        for spec in self.all_inputs():
            problems += missing_file(spec.path, f"cot input ({spec.label})")
        if self.teacher.kind == "transformers":
            problems += missing_model(self.teacher.model, "teacher.model")
        elif not self.teacher.model:
            problems.append("teacher.model is not set (the served model name)")
        decontam = self.decontam()
        if decontam.enabled:
            problems += missing_dir(decontam.questions_root or "", "decontaminate.questions_root")
        return problems
