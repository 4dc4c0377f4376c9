"""Ray job: two-step clinical PEFT (a clinical LoRA adapter, a task adapter stacked on it) and its AUROC table.

``ray job submit --working-dir . -- python -m ray_jobs.peft --config tiny/peft --set model_path=... --set world_dir=...``
(the job itself is one process on the node it lands on: it does not start Ray work).
"""

import sys

from clinray.jobs import main as run_job


def main(argv: list[str] | None = None) -> int:
    return run_job("peft", argv, prog="ray_jobs.peft")


if __name__ == "__main__":
    sys.exit(main())
