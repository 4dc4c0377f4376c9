"""Ray job: verified chain-of-thought for multiple-choice training questions (teacher in Ray Data actors).

``ray job submit --working-dir . -- python -m ray_jobs.cot --config paper/cot --set teacher.base_url=...``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("cot", argv, prog="ray_jobs.cot")


if __name__ == "__main__":
    sys.exit(main())
