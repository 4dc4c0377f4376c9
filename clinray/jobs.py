"""One job runner for every stage: ``clinray <stage>``, ``python -m ray_jobs.<stage>`` and the demo.

Each stage is one :class:`Job` in :data:`JOBS`: its root config class, its library entry (which returns
a :class:`clinray.results.StageResult` and writes the resolved ``config.yaml`` next to its outputs) and
the CLI shortcut flags that turn into ``--set`` overrides. Every door runs the same steps:

1. parse ``--config`` (required: a shipped recipe name such as ``tiny/curate``, or a YAML path) and
   ``--set key=value`` overrides;
2. load the config strictly and run its ``check_inputs()`` (input folders, globs, model folders) -
   **before Ray starts**, every problem listed at once;
3. enter :func:`clinray.ray_session.ray_session` (the one place that honours ``RAY_ADDRESS``), run the
   entry, print its summary;
4. exit 0 when the result is ok, 1 when it is not (e.g. accounting that does not balance), 2 on a user
   error, with one line naming it and no traceback.

The trade-off: the library entries stay plain functions of a config (usable from a notebook inside
``ray_session()``); the doors add nothing but argument parsing, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from typing import Any

from clinray.config import ConfigError, load

__all__ = [
    "Flag",
    "Job",
    "JOBS",
    "get_job",
    "load_job_config",
    "execute",
    "main",
    "run_parsed",
    "add_job_arguments",
    "add_set_argument",
    "flag_overrides",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Flag:
    """A CLI shortcut: ``--data-dir D`` is ``--set data_dir=D``; keyed ``--model a=P`` is ``--set models.a=P``."""

    option: str
    key: str
    help: str
    keyed: bool = False
    metavar: str = "VALUE"

    def overrides(self, values: list[str] | str | None) -> list[str]:
        if values is None:
            return []
        if not self.keyed:
            return [f"{self.key}={values}"]
        out = []
        for item in values:
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                raise ConfigError(f"{self.option} {item!r} must be NAME=VALUE")
            out.append(f"{self.key}.{name}={value}")
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """One stage: config class, library entry and shortcuts, as ``module:attribute`` (imported lazily)."""

    name: str
    help: str
    config: str
    entry: str
    flags: tuple[Flag, ...] = ()
    ray_job: str = ""
    """The ``ray_jobs`` module of this stage (``python -m ray_jobs.<module>``)."""
    needs_ray: bool = True
    """Run inside :func:`clinray.ray_session.ray_session` (False: the stage does not use Ray)."""
    worker_output: bool = False
    """Show the Ray workers' standard output on the terminal (training prints one line per log step)."""

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    def config_class(self) -> type:
        return _attr(self.config)

    def entry_function(self):
        return _attr(self.entry)


def _attr(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


_OUT = Flag(option="--out", key="out_dir", help="output folder (shortcut for --set out_dir=...)")
_DATA = Flag(option="--data-dir", key="data_dir", help="folder of the benchmarks in their native layouts")

#: Every stage, in pipeline order.
JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            name="curate",
            help="curate a raw corpus (HTML, JATS, MEDLINE, PDF, text, JSONL, Parquet) into docs Parquet + report",
            config="clinray.data.pipeline:CurateConfig",
            entry="clinray.data.pipeline:run_curation",
            ray_job="curate",
            flags=(
                Flag(
                    option="--input-root", key="input_root", help="folder the recipe's input globs start from"
                ),
                Flag(
                    option="--out", key="output.dir", help="output folder (shortcut for --set output.dir=...)"
                ),
            ),
        ),
        Job(
            name="pack",
            help="mix clinical/general documents by token ratio, tokenize, and cut seq_len token blocks",
            config="clinray.data.pack:PackConfig",
            entry="clinray.data.pack:run_pack",
            ray_job="pack",
            flags=(
                Flag(option="--input-dir", key="input_dir", help="curated documents (curate's docs/ folder)"),
                Flag(option="--tokenizer", key="tokenizer", help="HF folder of the tokenizer"),
                Flag(option="--out", key="output_dir", help="token-block output folder"),
            ),
        ),
        Job(
            name="pretrain",
            help="continue pretraining a causal LM on token blocks with Ray Train + FSDP2 (re-run to resume)",
            config="clinray.train.config:PretrainConfig",
            entry="clinray.train.trainer:run_pretrain",
            ray_job="pretrain",
            worker_output=True,
            flags=(
                Flag(option="--model", key="model.path", help="HF folder of the model to start from"),
                Flag(option="--data", key="data.path", help="token-block folder from `clinray pack`"),
            ),
        ),
        Job(
            name="cot",
            help="verified chain-of-thought: a teacher explains MCQ training questions k times (options shuffled), only chains reaching the gold answer kept (Ray Data)",
            config="clinray.cot.config:CoTConfig",
            entry="clinray.cot.run:run_cot",
            ray_job="cot",
            flags=(
                Flag(option="--world", key="world", help="tiny world folder (its MedQA/MedMCQA train sets)"),
                Flag(option="--teacher", key="teacher.model", help="HF model folder, or a served model name"),
                _OUT,
            ),
        ),
        Job(
            name="sft",
            help="instruction-tune a model on an SFT mixture (packed, response-only loss, NEFTune) with Ray Train + FSDP2",
            config="clinray.train.config:TrainConfig",
            entry="clinray.sft.prepare:run_sft",
            ray_job="sft",
            worker_output=True,
            flags=(
                Flag(
                    option="--model",
                    key="model.path",
                    help="HF folder of the model to tune (base or pretrained)",
                ),
                Flag(
                    option="--mixture",
                    key="sft.mixture",
                    help="SFT mixture recipe (tiny/sft_mix, paper/sft_mix) or YAML",
                ),
            ),
        ),
        Job(
            name="eval",
            help="evaluate models (or a pretraining run's checkpoints) on the medical benchmarks with lm-eval",
            config="clinray.eval.config:EvalConfig",
            entry="clinray.eval.harness:run_evaluation",
            ray_job="evaluate",
            flags=(
                Flag(
                    option="--model",
                    key="models",
                    keyed=True,
                    metavar="NAME=PATH",
                    help="a model row: name and HF folder (repeatable; adds to the config's models)",
                ),
                Flag(
                    option="--sweep", key="sweep.pretrain_run", help="sweep this pretraining run's hf/step_*"
                ),
                _DATA,
                _OUT,
            ),
        ),
        Job(
            name="peft",
            help="two-step clinical PEFT: a clinical LoRA adapter, a task adapter stacked on it (frozen), macro/micro AUROC of 3 variants",
            config="clinray.peft_clinical.run:PeftConfig",
            entry="clinray.peft_clinical.run:run_peft",
            ray_job="peft",
            # one process, plain PyTorch on CPU (clinray.peft_clinical.recipe): the whole comparison is
            # four small trainings in a row at tiny size, which Ray would only add start-up time to
            needs_ray=False,
            flags=(
                Flag(
                    option="--model",
                    key="model_path",
                    help="HF folder of the base model (tiny or pretrained)",
                ),
                Flag(
                    option="--world",
                    key="world_dir",
                    help="tiny world folder (clinical corpus, synthetic task)",
                ),
                Flag(option="--out", key="out", help="output folder (shortcut for --set out=...)"),
            ),
        ),
        Job(
            name="index",
            help="embed training questions + verified CoT (Ray Data) into the Milvus example store",
            config="clinray.retrieval.build_index:IndexConfig",
            entry="clinray.retrieval.build_index:build_index",
            ray_job="build_index",
            flags=(
                Flag(option="--world", key="world", help="tiny world folder (its questions/ are indexed)"),
                Flag(option="--uri", key="store.uri", help="a *.db path (Milvus Lite) or http://host:19530"),
            ),
        ),
        Job(
            name="medprompt_eval",
            help="Figure 3: accuracy of each Medprompt strategy on a benchmark's test questions",
            config="clinray.eval.medprompt_eval:MedpromptEvalConfig",
            entry="clinray.eval.medprompt_eval:run_medprompt_eval",
            ray_job="medprompt_eval",
            needs_ray=False,
            flags=(
                Flag(option="--model", key="setup.engine.model", help="HF folder of the answering model"),
                _DATA,
                _OUT,
            ),
        ),
        Job(
            name="serve",
            help="serve the Medprompt endpoint and OpenAI routes on Ray Serve (127.0.0.1), send one request, stop",
            config="clinray.serve.run:ServeConfig",
            entry="clinray.serve.run:run_serve",
            ray_job="serve",
            flags=(
                Flag(option="--model", key="model", help="HF folder of the served model"),
                Flag(option="--index", key="store_uri", help="example store (*.db or http://host:19530)"),
                Flag(option="--port", key="port", help="HTTP port on 127.0.0.1 (0: a free one)"),
                _OUT,
            ),
        ),
    )
}


def get_job(name: str) -> Job:
    key = name.replace("-", "_")
    if key not in JOBS:
        raise ConfigError(f"no job {name!r}; jobs: {', '.join(JOBS)}")
    return JOBS[key]


def add_set_argument(parser: argparse.ArgumentParser, *, example: str, metavar: str = "KEY=VALUE") -> None:
    """The repeatable ``--set`` override option (into ``args.overrides``) that every command shares."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar=metavar,
        help=f"override one config value, e.g. --set {example} (repeatable)",
    )


def add_job_arguments(parser: argparse.ArgumentParser, job: Job) -> None:
    """``--config`` (required), ``--set``, ``--num-cpus`` and the job's shortcut flags."""
    parser.add_argument(
        "--config",
        required=True,
        help="a shipped recipe (e.g. tiny/curate; `clinray recipes` lists them) or a YAML file",
    )
    add_set_argument(parser, example="train.max_lr=1e-4")
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of a private local Ray cluster (default: all)"
    )
    for flag in job.flags:
        parser.add_argument(
            flag.option,
            dest=_dest(flag),
            action="append" if flag.keyed else "store",
            metavar=flag.metavar,
            help=flag.help,
        )


def _dest(flag: Flag) -> str:
    return "flag_" + flag.option.lstrip("-").replace("-", "_")


def flag_overrides(job: Job, args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides the job's shortcut flags stand for (applied after the explicit ones)."""
    return [o for flag in job.flags for o in flag.overrides(getattr(args, _dest(flag), None))]


def load_job_config(job: Job, config: str, overrides: list[str], *, check_inputs: bool = True) -> Any:
    """Load and check a job's config without Ray: a ConfigError names every problem at once.

    ``check_inputs=False`` checks keys and values only (``clinray submit``: the inputs are the cluster's).
    """
    cfg = load(job.config_class(), config, overrides)
    problems = cfg.check_inputs() if check_inputs and hasattr(cfg, "check_inputs") else []
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) with the inputs: " + "; ".join(problems))
    return cfg


def execute(job: Job | str, config: str, overrides: list[str] | None = None, *, num_cpus: int | None = None):
    """Load, check and run one stage; return its StageResult (Ray: the caller's, RAY_ADDRESS, or local)."""
    from clinray.ray_session import ray_session

    job = get_job(job) if isinstance(job, str) else job
    cfg = load_job_config(job, config, list(overrides or []))
    if not job.needs_ray:
        return job.entry_function()(cfg)
    with ray_session(num_cpus=num_cpus, log_to_driver=job.worker_output):
        quiet_ray_console()
        return job.entry_function()(cfg)


def quiet_ray_console() -> None:
    """Ray's INFO lines go to its session log files only; warnings and errors still reach the terminal."""
    import ray.data  # noqa: F401  (Ray Data configures its loggers on import: adjust them after)

    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)


def main(job_name: str, argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """The whole door: parse, check, run, summarize; returns the exit code (0 ok, 1 not ok, 2 user error)."""
    job = get_job(job_name)
    prog = prog or f"clinray {job.command}"
    parser = argparse.ArgumentParser(prog=prog, description=job.help)
    add_job_arguments(parser, job)
    return run_parsed(job, parser.parse_args(argv), prog=prog)


def run_parsed(job: Job, args: argparse.Namespace, *, prog: str) -> int:
    """Run a job from parsed arguments (the CLI parses with its own subparser, then calls this)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = [*args.overrides, *flag_overrides(job, args)]
        result = execute(job, args.config, overrides, num_cpus=args.num_cpus)
    except ValueError as exc:  # ConfigError included: a user mistake is one line, not a traceback
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(result.summary(), flush=True)
    if not result.ok:
        print(f"{prog}: not ok: {'; '.join(result.problems)}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
