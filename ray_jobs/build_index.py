"""Ray job: build the Medprompt example store (training questions + verified CoT, embedded on Ray Data).

``ray job submit --working-dir . -- python -m ray_jobs.build_index --config tiny/index --set world=/data/world --set store.uri=/data/index/medprompt.db``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("index", argv, prog="ray_jobs.build_index")


if __name__ == "__main__":
    sys.exit(main())
