"""Ray job: evaluate models (or a pretraining run's checkpoints) with lm-eval, one Ray task per model.

``ray job submit -- python -m ray_jobs.evaluate --config configs/paper/eval.yaml --set data_dir=/data``
(add ``--set sweep.pretrain_run=RUN`` for the Figure 2 sweep).
"""

from __future__ import annotations

import argparse
import sys

from clinray.cli import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, default="configs/tiny/eval.yaml")
    args = parser.parse_args(argv)

    from clinray.config import load
    from clinray.eval.config import EvalConfig
    from clinray.eval.harness import run_eval
    from clinray.eval.sweep import run_sweep
    from clinray.ray_session import ray_session

    cfg = load(EvalConfig, args.config, args.overrides)
    with ray_session():
        result = run_sweep(cfg) if cfg.sweep.pretrain_run else run_eval(cfg)
    print(result["table_md"].read_text())
    print(f"results: {result['results_json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
