"""Ray job: continued pretraining (FSDP2 on Ray Train); re-submitting with the same run name resumes.

``ray job submit --working-dir . -- python -m ray_jobs.pretrain --config paper/mistral7b_pretrain --set model.path=/models/Mistral-7B-v0.1 --set data.path=/data/blocks``
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("pretrain", argv, prog="ray_jobs.pretrain")


if __name__ == "__main__":
    sys.exit(main())
