"""``clinray pack``: curated documents -> mixed, tokenized token blocks (Parquet + manifest) for pretraining."""

from __future__ import annotations

import argparse
import json

HELP = "mix clinical/general documents by token ratio, tokenize, and cut seq_len token blocks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clinray.cli import add_config_arguments

    add_config_arguments(parser, default="configs/tiny/pack.yaml")
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)"
    )


def run(args: argparse.Namespace) -> int:
    from clinray.config import dump, load
    from clinray.data.pack import PackConfig, run_pack
    from clinray.ray_session import ray_session

    cfg = load(PackConfig, args.config, args.overrides)
    with ray_session(num_cpus=args.num_cpus):
        manifest = run_pack(cfg)
    dump(cfg, f"{cfg.output_dir}/config.yaml")
    print(
        json.dumps(
            {k: manifest[k] for k in ("num_blocks", "seq_len", "tokens_per_source", "epochs")}, indent=2
        )
    )
    print(f"token blocks: {cfg.output_dir}")
    return 0
