"""Ray job: accuracy of each Medprompt strategy (Figure 3); runs in the job's driver, no Ray tasks.

``ray job submit --working-dir . -- python -m ray_jobs.medprompt_eval --config tiny/medprompt_eval --set setup.engine.model=/models/clinical --set data_dir=/data/benchmarks``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("medprompt_eval", argv, prog="ray_jobs.medprompt_eval")


if __name__ == "__main__":
    sys.exit(main())
