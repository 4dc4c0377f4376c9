"""``clinray tiny-model``: train the tiny tokenizer on a corpus and save a random tiny model."""

from __future__ import annotations

import argparse

HELP = "build a tiny Mistral/Mixtral and a BPE tokenizer trained on a corpus (an HF folder)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="file or folder of text to train the tokenizer on")
    parser.add_argument("--out", required=True, help="output folder (Hugging Face layout)")
    parser.add_argument("--arch", choices=["mistral", "mixtral"], default="mistral")
    from clinray.jobs import add_set_argument

    add_set_argument(parser, example="hidden_size=64 (a TinyModelConfig field)")


def run(args: argparse.Namespace) -> int:
    from clinray.config import load
    from clinray.models.tiny import TinyModelConfig, build_tiny_model

    cfg = load(TinyModelConfig, None, [f"arch={args.arch}", *args.overrides])
    out = build_tiny_model(args.corpus, args.out, cfg)
    print(f"tiny {cfg.arch} model and tokenizer written to {out}")
    return 0
