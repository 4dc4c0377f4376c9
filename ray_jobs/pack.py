"""Ray job: mix, tokenize and pack curated documents into token blocks for pretraining.

``ray job submit -- python -m ray_jobs.pack --config configs/paper/pack.yaml --set input_dir=/data/curate/docs``
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from clinray.cli import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, default="configs/tiny/pack.yaml")
    args = parser.parse_args(argv)

    import ray

    from clinray.config import dump, load
    from clinray.data.pack import PackConfig, run_pack

    cfg = load(PackConfig, args.config, args.overrides)
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`: the job's cluster
        ray.init()
    else:  # run by hand: a private local cluster, never someone else's
        ray.init(address="local", include_dashboard=False)
    try:
        manifest = run_pack(cfg)
    finally:
        ray.shutdown()
    dump(cfg, f"{cfg.output_dir}/config.yaml")
    print(
        json.dumps(
            {k: manifest[k] for k in ("num_blocks", "seq_len", "tokens_per_source", "epochs")}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
