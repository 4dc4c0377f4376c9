"""Ray job: build the Medprompt example store.

``ray job submit -- python -m ray_jobs.build_index --config configs/tiny/index.yaml --set world=runs/world``
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from clinray.cli import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, default="configs/tiny/index.yaml")
    args = parser.parse_args(argv)

    import ray

    from clinray.config import load
    from clinray.retrieval.build_index import IndexConfig, build_index

    cfg = load(IndexConfig, args.config, args.overrides)
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`: the job's cluster
        ray.init()
    else:  # run by hand: a private local cluster, never someone else's
        ray.init(address="local", include_dashboard=False)
    try:
        report = build_index(cfg)
    finally:
        ray.shutdown()
    print(json.dumps({k: v for k, v in report.items() if k != "rejects"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
