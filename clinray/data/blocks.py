"""The token-block contract between ``clinray pack`` and pretraining, and a reader for its manifest.

A token-block folder holds any number of Parquet parts with ``input_ids`` (list<int32>, every row
exactly ``seq_len`` tokens) and ``source`` (the mixture component: one component per block), plus
``manifest.json``: ``seq_len``, ``tokenizer``, ``num_blocks``, ``tokens_per_source``,
``blocks_per_source``, ``epochs`` and ``mixture`` (the plan: targets, available and selected tokens).
Kept tiny and dependency-light so the training side can import it without the curation stack. The
folder may be a URI (``s3://...``, read through :mod:`clinray.storage`).
"""

from __future__ import annotations

import json
from pathlib import Path

from clinray import storage

MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = (
    "seq_len",
    "tokenizer",
    "num_blocks",
    "tokens_per_source",
    "blocks_per_source",
    "epochs",
    "mixture",
)


def read_block_manifest(path: str | Path) -> dict:
    """Read and check ``<path>/manifest.json`` of a token-block folder."""
    manifest_path = storage.join(path, MANIFEST_NAME) if storage.is_uri(path) else Path(path) / MANIFEST_NAME
    if not storage.isfile(manifest_path):
        raise ValueError(f"{manifest_path} is missing: is {str(path)!r} an output folder of `clinray pack`?")
    manifest = json.loads(storage.read_text(manifest_path))
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"{manifest_path} lacks key(s) {missing}; re-run `clinray pack` to rewrite it")
    if not isinstance(manifest["seq_len"], int) or manifest["seq_len"] < 2:
        raise ValueError(f"{manifest_path}: seq_len must be an integer >= 2, got {manifest['seq_len']!r}")
    blocks, tokens = manifest["blocks_per_source"], manifest["tokens_per_source"]
    if sum(blocks.values()) != manifest["num_blocks"] or any(
        tokens.get(s) != n * manifest["seq_len"] for s, n in blocks.items()
    ):
        raise ValueError(f"{manifest_path}: num_blocks / tokens_per_source disagree with blocks_per_source")
    return manifest


def block_files(path: str | Path) -> list[Path] | list[str]:
    """The Parquet parts of a token-block folder, sorted (URI strings for a URI folder)."""
    files = storage.glob(path, "*.parquet") if storage.is_uri(path) else sorted(Path(path).glob("*.parquet"))
    if not files:
        raise ValueError(f"no Parquet token blocks in {str(path)!r}")
    return files
