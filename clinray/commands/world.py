"""``clinray world``: generate the tiny clinical world (corpus, planted truth, questions, SFT samples)."""

from __future__ import annotations

import argparse

HELP = "generate the tiny clinical world (see docs/tiny_world.md) into a folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (empty, missing, or a previous world)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="corpus size multiplier: 1 is ~1 MB in <1 s, 100 is ~hundreds of MB",
    )


def run(args: argparse.Namespace) -> int:
    import time

    from clinray.synthetic import generate_world

    start = time.perf_counter()
    manifest = generate_world(args.out, seed=args.seed, scale=args.scale)
    elapsed = time.perf_counter() - start
    print(f"tiny world (seed {args.seed}, scale {args.scale}) written to {args.out} in {elapsed:.1f} s")
    for key, value in manifest["counts"].items():
        print(f"  {key:<36} {value}")
    return 0
