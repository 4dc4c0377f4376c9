"""Ray job: evaluate models (or a pretraining run's checkpoints, sweep.pretrain_run) with lm-eval, one Ray task per model.

``ray job submit --working-dir . -- python -m ray_jobs.evaluate --config paper/eval --set data_dir=/data/benchmarks --set models.clinical=/models/run/hf/final``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("eval", argv, prog="ray_jobs.evaluate")


if __name__ == "__main__":
    sys.exit(main())
