"""Reading the world back: its plain-text and JSONL documents, straight from the manifest.

Tests and benchmarks of the text stages (near-dup, substring dedup, decontamination) need the world's
documents without running the parsers. Those two formats need none: the file (or JSONL line) holds the
text exactly as a reader extracts it. Each JSONL part is read once, not once per document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def plain_documents(world: str | Path, manifest: dict | None = None) -> Iterator[dict]:
    """Yield each text or JSONL document's manifest entry with its ``text`` added.

    Args:
        world: the world folder (``clinray world --out``).
        manifest: its parsed ``manifest.json``, if already loaded.
    """
    world = Path(world)
    if manifest is None:
        manifest = json.loads((world / "manifest.json").read_text())
    parts: dict[Path, list[str]] = {}
    for doc in manifest["documents"]:
        path = world / doc["path"]
        if doc["format"] == "text":
            text = path.read_text(encoding="utf-8")
        elif doc["format"] == "jsonl":
            if path not in parts:
                parts[path] = path.read_text(encoding="utf-8").splitlines()
            text = json.loads(parts[path][int(doc["locator"]) - 1])["text"]
        else:
            continue
        yield {**doc, "text": text}
