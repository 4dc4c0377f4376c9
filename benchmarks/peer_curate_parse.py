"""datatrove's side of ``curate_parse``: readers + trafilatura + a length filter + Parquet writer.

Run with the peer venv's Python (``benchmarks/common.py:peer_python``). Prints one JSON line. datatrove
has no reader for whole-file text or HTML, so a minimal ``BaseDiskReader`` subclass reads one document
per file (as its JsonlReader reads one per line); HTML goes through datatrove's own Trafilatura step.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def build_pipeline(corpus: str, out: str, min_words: int):
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.readers.base import BaseDiskReader
    from datatrove.pipeline.writers import JsonlWriter

    class WholeFileReader(BaseDiskReader):
        """One document per file (text or HTML), id = file stem; undecodable files are skipped."""

        name = "whole file"

        def read_file(self, filepath: str):
            try:
                with self.data_folder.open(filepath, "rt", encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                return
            stem = os.path.basename(filepath).split(".")[0]
            document = self.get_document_from_dict({"text": text, "id": stem}, filepath, 0)
            if document:
                yield document

    return [
        WholeFileReader(corpus, glob_pattern="clinical/html/*.html"),
        Trafilatura(timeout=10, deduplicate=False, include_tables=True, fast=True),
        WholeFileReader(corpus, glob_pattern="*/text/*.txt"),
        JsonlReader(corpus, glob_pattern="*/jsonl/*.jsonl"),
        LambdaFilter(lambda doc: len(doc.text.split()) >= min_words),
        JsonlWriter(out, compression=None),  # its ParquetWriter needs one metadata schema per file
    ]


def main() -> None:
    from datatrove.executor import LocalPipelineExecutor

    p = argparse.ArgumentParser()
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-words", type=int, default=20)
    args = p.parse_args()
    executor = LocalPipelineExecutor(
        pipeline=build_pipeline(args.corpus, os.path.join(args.out, "docs"), args.min_words),
        tasks=args.workers,
        workers=args.workers,
        logging_dir=os.path.join(args.out, "logs"),
        skip_completed=False,
    )
    start = time.perf_counter()
    executor.run()
    wall = time.perf_counter() - start
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(args.out, "docs")) for f in fs]
    num_out = 0
    for path in files:
        with open(path, "rb") as f:
            num_out += sum(1 for _ in f)
    print(json.dumps({"wall_s": wall, "num_docs_out": num_out}))


if __name__ == "__main__":
    main()
