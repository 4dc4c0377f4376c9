"""Ray job: build the Medprompt example store.

``ray job submit -- python -m ray_jobs.build_index --config configs/tiny/index.yaml --set world=runs/world``
"""

from __future__ import annotations

import argparse
import json
import sys

from clinray.cli import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, default="configs/tiny/index.yaml")
    args = parser.parse_args(argv)

    from clinray.config import load
    from clinray.ray_session import ray_session
    from clinray.retrieval.build_index import IndexConfig, build_index

    cfg = load(IndexConfig, args.config, args.overrides)
    with ray_session():
        report = build_index(cfg)
    print(json.dumps({k: v for k, v in report.items() if k != "rejects"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
