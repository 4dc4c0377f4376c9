"""Byte-level input handling shared by the readers: gzip, size caps, binary checks (encodings: ``encoding``).

Every failure becomes a :class:`ReaderError` carrying a stable ``reason`` (the key of the rejects
table), never an exception that escapes a parser. Lines are read with a cap, so a 50 MB single line
costs at most ``max_line_bytes`` of memory at a time and becomes a ``line_too_long`` reject.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from clinray import storage
from clinray.data.stage import DETAIL, REASON

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_KNOWN_EXTS = {
    ".gz",
    ".zst",
    ".jsonl",
    ".ndjson",
    ".json",
    ".parquet",
    ".txt",
    ".text",
    ".md",
    ".markdown",
    ".html",
    ".htm",
    ".xhtml",
    ".nxml",
    ".xml",
    ".pdf",
    ".tar",
    ".tgz",
}
_CONTROL_BYTES = bytes(range(0, 9)) + bytes(range(14, 32))


try:
    from zstandard import ZstdError as _ZstdError
except ImportError:  # pragma: no cover - zstandard is a dependency

    class _ZstdError(Exception):
        pass


#: Exceptions that reading a (possibly compressed) stream can raise.
STREAM_ERRORS = (EOFError, OSError, zlib.error, _ZstdError)


class ReaderError(Exception):
    """An input (or a record of it) that cannot be parsed; ``reason`` names why."""

    def __init__(self, reason: str, detail: str = "", *, locator: str | None = None, text: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.locator, self.text = reason, detail, locator, text


def file_stem(path: str) -> str:
    """The file name without its (known) extensions: ``a.html.gz`` -> ``a``."""
    name = Path(path).name
    while True:
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem or f".{ext.lower()}" not in _KNOWN_EXTS:
            return name
        name = stem


def is_gzip(path: str) -> bool:
    with storage.open_input(path) as f:
        return f.read(2) == GZIP_MAGIC


def open_stream(path: str) -> BinaryIO:
    """The file's bytes, decompressed transparently when it starts with the gzip or zstd magic
    (SlimPajama ships as ``.jsonl.zst``). A URI (``s3://``) is one buffered streaming read."""
    if storage.is_uri(path):
        raw = storage.open_input(path)
        head = raw.peek(4)[:4]  # a stream: look ahead instead of seeking back
    else:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
        head = raw.read(4)
        raw.seek(0)
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head == ZSTD_MAGIC:
        return io.BufferedReader(_ZstdStream(raw))
    return raw


class _ZstdStream(io.RawIOBase):
    """Streaming zstd decompression that raises ``EOFError`` on a truncated stream (as gzip does);
    zstandard's own ``stream_reader`` returns a silent early EOF instead."""

    def __init__(self, raw: BinaryIO):
        import zstandard

        self.raw, self.dobj = raw, zstandard.ZstdDecompressor().decompressobj()
        self.pending, self.pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.pos >= len(self.pending):
            chunk = self.raw.read(1 << 16)
            if not chunk:
                if not self.dobj.eof:
                    raise EOFError("zstd stream ended before the end of its frame")
                return 0
            if self.dobj.eof:  # a next frame: continue with a fresh decompressor
                import zstandard

                self.dobj = zstandard.ZstdDecompressor().decompressobj()
            self.pending, self.pos = self.dobj.decompress(chunk), 0
        n = min(len(buffer), len(self.pending) - self.pos)
        buffer[:n] = self.pending[self.pos : self.pos + n]
        self.pos += n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


@contextlib.contextmanager
def open_tar(path: str) -> Iterator[tarfile.TarFile]:
    """A tar archive opened for streaming (``r|*``: compression detected, no seek), local or a URI."""
    if not storage.is_uri(path):
        with tarfile.open(path, mode="r|*") as tar:
            yield tar
        return
    with storage.open_input(path) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        yield tar


def gzip_error(exc: BaseException) -> ReaderError | None:
    """Map a decompression exception to a reject reason (None if it is not one)."""
    if isinstance(exc, EOFError):
        reason = "truncated_zstd" if "zstd" in str(exc) else "truncated_gzip"
        return ReaderError(reason, str(exc) or "compressed stream ended early")
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return ReaderError("bad_gzip", str(exc))
    if isinstance(exc, _ZstdError):
        return ReaderError("bad_zstd", str(exc))
    return None


def read_all(path: str, *, max_bytes: int) -> bytes:
    """All (decompressed) bytes of ``path``; ``file_too_large`` past ``max_bytes``, gzip errors mapped."""
    try:
        with open_stream(path) as f:
            data = f.read(max_bytes + 1)
    except STREAM_ERRORS as exc:
        raise (gzip_error(exc) or ReaderError("io_error", str(exc))) from exc
    if len(data) > max_bytes:
        raise ReaderError("file_too_large", f"more than {max_bytes} bytes (after decompression)")
    return data


def check_binary(head: bytes) -> None:
    """``binary`` if the bytes hold NULs or many control bytes (text files have next to none)."""
    sample = head[:8192]
    if not sample:
        return
    if b"\x00" in sample:
        raise ReaderError("binary", "NUL bytes in the first 8 KiB", text=None)
    num_control = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if num_control / len(sample) > 0.05:
        raise ReaderError("binary", f"{num_control} control bytes in the first {len(sample)} bytes")


def iter_capped_lines(stream: BinaryIO, *, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` per line; ``bytes`` is None for a line longer than ``max_line_bytes``
    (which is skipped in chunks, never held whole)."""
    lineno = 0
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_line_bytes and not (len(line) == max_line_bytes + 1 and line.endswith(b"\n")):
            while line and not line.endswith(b"\n"):
                line = stream.readline(1 << 20)
            yield lineno, None
            continue
        yield lineno, line


def read_capped_lines(stream: BinaryIO, *, max_line_bytes: int, max_bytes: int) -> bytes:
    """The whole (decompressed) stream, read in blocks; ``line_too_long`` at the first line longer than
    ``max_line_bytes`` (not counting its newline) and ``file_too_large`` past ``max_bytes``.

    Same verdicts as :func:`iter_capped_lines` line by line, at block speed: a block is at most
    ``max_line_bytes`` long, so only the line that crosses into it can be too long, and that is one
    ``find`` per block. Reading stops at the first verdict (a 50 MB line costs one block beyond the cap).
    """
    block = min(max_line_bytes, 1 << 20)
    chunks, size, newlines, since_newline = [], 0, 0, 0
    while True:
        chunk = stream.read(block)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ReaderError("file_too_large", f"more than {max_bytes} bytes")
        first = chunk.find(b"\n")
        if since_newline + (len(chunk) if first < 0 else first) > max_line_bytes:
            raise ReaderError("line_too_long", f"line {newlines + 1} over {max_line_bytes} bytes")
        if first >= 0:
            newlines += chunk.count(b"\n")
            since_newline = len(chunk) - chunk.rfind(b"\n") - 1
        else:
            since_newline += len(chunk)
        chunks.append(chunk)


def doc_row(
    *,
    doc_id: str,
    text: str,
    spec,
    fmt: str,
    path: str,
    locator: str | None = None,
    metadata: dict | None = None,
) -> dict:
    """A working-schema document row (``_reason`` null)."""
    return {
        "id": str(doc_id),
        "text": text,
        "source": spec.source,
        "domain": spec.domain,
        "format": fmt,
        "metadata": json.dumps(metadata or {}, ensure_ascii=False, default=str),
        "input_file": path,
        "locator": locator,
        REASON: None,
        DETAIL: None,
    }


def reject_row(err: ReaderError, *, spec, fmt: str, path: str, doc_id: str | None = None) -> dict:
    """A working-schema row marked with the error's reason (dropped by the parse stage's accounting)."""
    return {
        "id": doc_id,
        "text": err.text,
        "source": spec.source,
        "domain": spec.domain,
        "format": fmt,
        "metadata": None,
        "input_file": path,
        "locator": err.locator,
        REASON: err.reason,
        DETAIL: err.detail[:1000],
    }
