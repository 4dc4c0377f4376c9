"""Record readers: JSONL (gzip transparent, line-capped) and Parquet, with configurable fields.

A bad record (invalid JSON, not an object, no text, no id, a line past the cap, more bytes that are not
UTF-8 than ``max_invalid_byte_share``) is one reject and the file goes on (a line with fewer is kept, its
``metadata.num_invalid_bytes`` counting them); a broken container (truncated gzip, unreadable Parquet) rejects the rest of the file
after the records already read, which stay. That keeps most of a large, slightly damaged shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from clinray import storage
from clinray.data.readers._io import (
    STREAM_ERRORS,
    ReaderError,
    doc_row,
    file_stem,
    gzip_error,
    iter_capped_lines,
    open_stream,
    reject_row,
)
from clinray.data.readers.encoding import check_share, decode_counting
from clinray.storage import open_random_access

try:  # orjson parses JSON lines several times faster; same results, same ValueError on bad input
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads


def _record_to_row(obj, *, spec, fmt: str, path: str, locator: str, num_invalid_bytes: int = 0) -> dict:
    if not isinstance(obj, dict):
        raise ReaderError(
            "not_an_object", f"record is a {type(obj).__name__}, not an object", locator=locator
        )
    text = obj.get(spec.text_field)
    if not isinstance(text, str) or not text.strip():
        raise ReaderError("missing_text", f"no non-empty string field {spec.text_field!r}", locator=locator)
    if not spec.id_field:  # corpora without ids (SlimPajama): folder/file-stem:record
        doc_id = f"{Path(path).parent.name}/{file_stem(path)}:{locator}"
    else:
        doc_id = obj.get(spec.id_field)
    if doc_id is None or str(doc_id) == "":
        raise ReaderError("missing_id", f"no field {spec.id_field!r}", locator=locator, text=text[:200])
    meta = {k: v for k, v in obj.items() if k not in (spec.text_field, spec.id_field)}
    if num_invalid_bytes:
        meta["num_invalid_bytes"] = num_invalid_bytes
    return doc_row(
        doc_id=str(doc_id), text=text, spec=spec, fmt=fmt, path=path, locator=locator, metadata=meta
    )


def _parse_line(line: bytes, *, locator: str, share: float):
    """``(object, invalid bytes)`` of a JSON line; a line with a few bytes that are not UTF-8 is read with
    them replaced (up to ``share`` of its bytes, else ``not_utf8``)."""
    try:
        return _loads(line), 0
    except ValueError as exc:  # orjson (and json on bytes) say "UTF-8" for an encoding error
        if not isinstance(exc, UnicodeDecodeError) and "utf-8" not in str(exc).lower():
            text = line[:200].decode("utf-8", "replace")
            raise ReaderError("bad_json", str(exc), locator=locator, text=text) from exc
    text, num_invalid = decode_counting(line, "utf-8")
    try:
        check_share(num_invalid, len(line), encoding="utf-8", share=share, text=text)
        return _loads(text), num_invalid
    except ReaderError as err:
        err.locator = locator
        raise
    except ValueError as exc:
        raise ReaderError("bad_json", str(exc), locator=locator, text=text[:200]) from exc


def read_jsonl(path: str, *, spec, cfg) -> Iterator[dict]:
    """One document per JSON line; ``locator`` is the 1-based line number."""
    lineno = 0
    try:
        with open_stream(path) as stream:
            for lineno, line in iter_capped_lines(stream, max_line_bytes=cfg.max_line_bytes):
                locator = str(lineno)
                try:
                    if line is None:
                        raise ReaderError(
                            "line_too_long", f"line over {cfg.max_line_bytes} bytes", locator=locator
                        )
                    if not line.strip():
                        continue
                    obj, num_invalid = _parse_line(line, locator=locator, share=cfg.max_invalid_byte_share)
                    yield _record_to_row(
                        obj, spec=spec, fmt="jsonl", path=path, locator=locator, num_invalid_bytes=num_invalid
                    )
                except ReaderError as err:
                    yield reject_row(err, spec=spec, fmt="jsonl", path=path)
    except STREAM_ERRORS as exc:
        err = gzip_error(exc) or ReaderError("io_error", str(exc))
        err.locator = f"after line {lineno}"
        yield reject_row(err, spec=spec, fmt="jsonl", path=path)


def read_parquet(path: str, *, spec, cfg) -> Iterator[dict]:
    """One document per Parquet row; ``locator`` is the 0-based row index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = 0
    try:
        pf = pq.ParquetFile(open_random_access(path) if storage.is_uri(path) else path)
        names = pf.schema_arrow.names
        missing = [f for f in (spec.text_field, spec.id_field) if f not in names]
        if missing:
            raise ReaderError("missing_column", f"columns {missing} not in {names}")
        for batch in pf.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                try:
                    yield _record_to_row(obj, spec=spec, fmt="parquet", path=path, locator=str(index))
                except ReaderError as err:
                    yield reject_row(err, spec=spec, fmt="parquet", path=path)
                index += 1
    except ReaderError as err:
        yield reject_row(err, spec=spec, fmt="parquet", path=path)
    except (pa.ArrowException, OSError) as exc:
        err = ReaderError("bad_parquet", str(exc), locator=f"after row {index}")
        yield reject_row(err, spec=spec, fmt="parquet", path=path)
