"""``clinray pretrain``: continued pretraining on Ray Train (FSDP2), resumable by storage path and name."""

from __future__ import annotations

import argparse
import json

HELP = "continue pretraining a causal LM on token blocks with Ray Train + FSDP2 (re-run to resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clinray.cli import add_config_arguments

    add_config_arguments(parser, default="configs/tiny/pretrain.yaml")
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)"
    )


def run(args: argparse.Namespace) -> int:

    from clinray.config import load
    from clinray.ray_session import ray_session
    from clinray.train.config import PretrainConfig
    from clinray.train.trainer import plan_run, run_pretrain

    cfg = load(PretrainConfig, args.config, args.overrides)
    plan_run(cfg)  # fail fast on paths and batch geometry before starting Ray
    with ray_session(num_cpus=args.num_cpus):
        summary = run_pretrain(cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0
