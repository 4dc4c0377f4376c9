"""``clinray curate``: parse, normalize, filter and exact-dedup a raw corpus on a local Ray cluster."""

from __future__ import annotations

import argparse

HELP = "curate a raw corpus (HTML, JATS, MEDLINE, PDF, text, JSONL, Parquet) into docs Parquet + report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clinray.cli import add_config_arguments

    add_config_arguments(parser, default="configs/tiny/curate.yaml")
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)"
    )


def run(args: argparse.Namespace) -> int:
    from clinray.config import load
    from clinray.data.pipeline import CurateConfig, run_curation
    from clinray.ray_session import ray_session

    cfg = load(CurateConfig, args.config, args.overrides)
    with ray_session(num_cpus=args.num_cpus):
        result = run_curation(cfg)
    print(result.report_md.read_text())
    print(f"kept documents: {result.docs_dir}\nrejects: {result.rejects_dir}\nreport: {result.report_json}")
    return 0 if not result.problems else 1
