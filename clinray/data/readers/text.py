"""Plain text and Markdown files: one document per file, id = file stem.

Read in blocks with a line-length cap, so a file that is one 50 MB line is rejected (``line_too_long``)
one block past the cap instead of being read whole. The encoding is UTF-8 or detected (see ``encoding``). Markdown is kept as written (its markup is light
and informative).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from clinray.data.readers._io import (
    STREAM_ERRORS,
    ReaderError,
    doc_row,
    file_stem,
    gzip_error,
    open_stream,
    read_capped_lines,
    reject_row,
)
from clinray.data.readers.encoding import decode_document

_FIRST_LINE = re.compile(r"\S[^\r\n]*")


def _first_line(text: str, limit: int = 300) -> str:
    """The first non-blank line, Markdown heading marks removed (without splitting the whole text)."""
    match = _FIRST_LINE.search(text)
    return match.group().strip().lstrip("#").strip()[:limit] if match else ""


def read_text(path: str, *, spec, cfg, fmt: str = "text") -> Iterator[dict]:
    doc_id = file_stem(path)
    try:
        try:
            with open_stream(path) as stream:
                data = read_capped_lines(
                    stream, max_line_bytes=cfg.max_line_bytes, max_bytes=cfg.max_file_bytes
                )
        except STREAM_ERRORS as exc:
            raise (gzip_error(exc) or ReaderError("io_error", str(exc))) from exc
        decoded = decode_document(data, kind="text", max_invalid_share=cfg.max_invalid_byte_share)
        meta = {"title": _first_line(decoded.text), **decoded.metadata()}
        yield doc_row(doc_id=doc_id, text=decoded.text, spec=spec, fmt=fmt, path=path, metadata=meta)
    except ReaderError as err:
        yield reject_row(err, spec=spec, fmt=fmt, path=path, doc_id=doc_id)
