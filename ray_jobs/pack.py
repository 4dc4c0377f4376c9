"""Ray job: mix, tokenize and pack curated documents into token blocks for pretraining.

``ray job submit -- python -m ray_jobs.pack --config configs/paper/pack.yaml --set input_dir=/data/curate/docs``
"""

from __future__ import annotations

import argparse
import json
import sys

from clinray.cli import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, default="configs/tiny/pack.yaml")
    args = parser.parse_args(argv)

    from clinray.config import dump, load
    from clinray.data.pack import PackConfig, run_pack
    from clinray.ray_session import ray_session

    cfg = load(PackConfig, args.config, args.overrides)
    with ray_session():
        manifest = run_pack(cfg)
    dump(cfg, f"{cfg.output_dir}/config.yaml")
    print(
        json.dumps(
            {k: manifest[k] for k in ("num_blocks", "seq_len", "tokens_per_source", "epochs")}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
