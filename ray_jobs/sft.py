"""Ray job: instruction-tune a model on an SFT mixture (data stage, packing, Ray Train + FSDP2).

``ray job submit --working-dir . -- python -m ray_jobs.sft --config tiny/sft --set model.path=...``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("sft", argv, prog="ray_jobs.sft")


if __name__ == "__main__":
    sys.exit(main())
