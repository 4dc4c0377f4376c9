"""``clinray index``: embed training questions with their chain of thought into the Milvus example store."""

from __future__ import annotations

import argparse

HELP = "embed training questions + verified CoT (Ray Data) into the Milvus example store for kNN few-shot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clinray.cli import add_config_arguments

    add_config_arguments(parser, default="configs/tiny/index.yaml")
    parser.add_argument("--world", help="tiny world folder (shortcut for --set world=...)")
    parser.add_argument("--uri", help="store URI: a *.db path (Milvus Lite) or http://host:19530")


def run(args: argparse.Namespace) -> int:
    import json

    import ray

    from clinray.config import dump, load
    from clinray.retrieval.build_index import IndexConfig, build_index

    overrides = list(args.overrides)
    if args.world:
        overrides.append(f"world={args.world}")
    if args.uri:
        overrides.append(f"store.uri={args.uri}")
    cfg = load(IndexConfig, args.config, overrides)
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    report = build_index(cfg)
    dump(cfg, report["report"].replace("_report.json", "_config.yaml"))
    summary = {k: v for k, v in report.items() if k != "rejects"}
    print(json.dumps(summary, indent=2))
    return 0
