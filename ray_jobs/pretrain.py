"""Ray job: continued pretraining (FSDP2 on Ray Train); re-submitting with the same run name resumes.

``ray job submit -- python -m ray_jobs.pretrain --config configs/paper/mistral7b_pretrain.yaml
--set model.path=/models/Mistral-7B-v0.1 --set data.path=/data/blocks``
"""

from __future__ import annotations

import argparse
import json
import sys

from clinray.cli import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, default="configs/tiny/pretrain.yaml")
    args = parser.parse_args(argv)

    from clinray.config import load
    from clinray.ray_session import ray_session
    from clinray.train.config import PretrainConfig
    from clinray.train.trainer import run_pretrain

    cfg = load(PretrainConfig, args.config, args.overrides)
    with ray_session():
        summary = run_pretrain(cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
