"""Ray job: serve the Medprompt endpoint and OpenAI routes on Ray Serve, send one request, stop.

``ray job submit --working-dir . -- python -m ray_jobs.serve --config tiny/serve --set model=runs/tiny_model --set store_uri=runs/index/medprompt.db``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("serve", argv, prog="ray_jobs.serve")


if __name__ == "__main__":
    sys.exit(main())
