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
    import ray

    from clinray.config import load
    from clinray.data.pipeline import CurateConfig, run_curation

    cfg = load(CurateConfig, args.config, args.overrides)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        result = run_curation(cfg)
    finally:
        ray.shutdown()
    print(result.report_md.read_text())
    print(f"kept documents: {result.docs_dir}\nrejects: {result.rejects_dir}\nreport: {result.report_json}")
    return 0 if not result.problems else 1
