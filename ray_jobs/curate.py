"""Ray job: curate a pretraining corpus (parse, normalize, filter, dedup) into docs Parquet + a report.

``ray job submit -- python -m ray_jobs.curate --config configs/paper/curate.yaml --set input_root=/data/raw``
"""

from __future__ import annotations

import argparse
import sys

from clinray.cli import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, default="configs/tiny/curate.yaml")
    args = parser.parse_args(argv)

    from clinray.config import load
    from clinray.data.pipeline import CurateConfig, run_curation
    from clinray.ray_session import ray_session

    cfg = load(CurateConfig, args.config, args.overrides)
    with ray_session():
        result = run_curation(cfg)
    print(result.report_md.read_text())
    print(f"kept documents: {result.docs_dir}\nreport: {result.report_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
