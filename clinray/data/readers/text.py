"""Plain text and Markdown files: one document per file, id = file stem.

Read as a stream of capped lines, so a file that is one 50 MB line is rejected (``line_too_long``)
without ever holding the line. Markdown is kept as written (its markup is light and informative).
"""

from __future__ import annotations

from collections.abc import Iterator

from clinray.data.readers._io import (
    STREAM_ERRORS,
    ReaderError,
    decode_text,
    doc_row,
    file_stem,
    gzip_error,
    iter_capped_lines,
    open_stream,
    reject_row,
)


def read_text(path: str, *, spec, cfg, fmt: str = "text") -> Iterator[dict]:
    doc_id = file_stem(path)
    try:
        chunks, size = [], 0
        try:
            with open_stream(path) as stream:
                for lineno, line in iter_capped_lines(stream, max_line_bytes=cfg.max_line_bytes):
                    if line is None:
                        raise ReaderError("line_too_long", f"line {lineno} over {cfg.max_line_bytes} bytes")
                    size += len(line)
                    if size > cfg.max_file_bytes:
                        raise ReaderError("file_too_large", f"more than {cfg.max_file_bytes} bytes")
                    chunks.append(line)
        except STREAM_ERRORS as exc:
            raise (gzip_error(exc) or ReaderError("io_error", str(exc))) from exc
        text = decode_text(b"".join(chunks))
        title = next((ln.strip().lstrip("#").strip() for ln in text.splitlines() if ln.strip()), "")
        yield doc_row(
            doc_id=doc_id, text=text, spec=spec, fmt=fmt, path=path, metadata={"title": title[:300]}
        )
    except ReaderError as err:
        yield reject_row(err, spec=spec, fmt=fmt, path=path, doc_id=doc_id)
