"""Ray job: mix, tokenize and pack curated documents into token blocks for pretraining.

``ray job submit --working-dir . -- python -m ray_jobs.pack --config paper/pack --set input_dir=/data/curate/docs --set output_dir=/data/blocks``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("pack", argv, prog="ray_jobs.pack")


if __name__ == "__main__":
    sys.exit(main())
