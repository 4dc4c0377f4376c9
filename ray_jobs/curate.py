"""Ray job: curate a pretraining corpus (parse, normalize, filter, dedup, decontaminate) into docs Parquet + a report.

``ray job submit --working-dir . -- python -m ray_jobs.curate --config paper/curate --set input_root=/data/raw --set output.dir=/data/curate``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("curate", argv, prog="ray_jobs.curate")


if __name__ == "__main__":
    sys.exit(main())
