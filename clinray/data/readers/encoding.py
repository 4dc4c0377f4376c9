"""Bytes to text for the readers: declared encodings honoured, undeclared ones detected, few bad bytes kept.

The order, for a whole file (:func:`decode_document`):

1. a byte-order mark (UTF-8, UTF-16, UTF-32) decides;
2. bytes that are valid UTF-8 are read as UTF-8, whatever the file declares: pages that declare
   ``iso-8859-1`` but are UTF-8 are common, while a legacy-encoded text with non-ASCII characters is
   almost never valid UTF-8 by chance;
3. otherwise a declared encoding is honoured: the XML declaration (``<?xml ... encoding="..."?>``) and,
   for HTML, ``<meta charset>`` or ``<meta http-equiv="Content-Type" content="...; charset=...">``.
   Labels follow the WHATWG encoding standard where it differs from Python (``iso-8859-1`` and
   ``ascii`` mean windows-1252, as in every browser);
4. undeclared: XML is UTF-8 (the XML default); text and HTML are UTF-8 when they hold valid non-ASCII
   UTF-8 characters (a UTF-8 file with a few bad bytes), else the encoding is detected with
   charset-normalizer (among its equally good guesses the common web encodings come first, so Western
   text is windows-1252 rather than the Central-European windows-1250 it often ranks first).

Bytes invalid in the chosen encoding are replaced with U+FFFD and counted: a document keeps them up to
``max_invalid_share`` of its bytes (``num_invalid_bytes`` in its metadata) and is rejected above it,
``not_utf8`` for UTF-8 and ``undecodable`` for another encoding. The trade-off: a legacy file without a
declaration relies on a statistical guess (good on prose, weak on a few words), and the fast path
(valid UTF-8, most files) costs one strict decode, as before.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
import threading
from typing import BinaryIO, Literal

from clinray.data.readers._io import ReaderError, check_binary

Kind = Literal["text", "html", "xml"]

_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_XML_DECL = re.compile(rb"^\s*<\?xml\b[^>]{0,200}?\bencoding\s*=\s*[\"']([A-Za-z0-9._:-]{1,40})[\"']", re.I)
_META_CHARSET = re.compile(rb"<meta\b[^>]{0,500}?\bcharset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]{1,40})", re.I)
#: Where an HTML declaration is looked for (the WHATWG prescan reads 1 KiB; long heads exist).
_HEAD_BYTES = 16_384
#: WHATWG labels whose meaning differs from Python's codec of the same name.
_WHATWG = {"latin_1": "cp1252", "iso8859_1": "cp1252", "ascii": "cp1252", "iso8859_9": "cp1254"}
#: Legacy encodings most used on the web, preferred among the detector's equally good guesses.
_COMMON = ("cp1252", "cp1251", "cp1250", "cp932", "gb18030", "euc_kr", "big5", "cp1254", "cp1256")
_NON_ASCII = re.compile(r"[^\x00-\x7f\ufffd]")

_count = threading.local()


def _count_and_replace(exc: UnicodeDecodeError) -> tuple[str, int]:
    _count.value += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error("clinray.count", _count_and_replace)


@dataclasses.dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded file: its text and how it was read."""

    text: str
    encoding: str
    """Python codec name (``utf-8``, ``cp1252``, ...)."""
    source: str
    """Where the encoding came from: ``default`` (UTF-8), ``bom``, ``xml_declaration``, ``meta``, ``detected``."""
    num_invalid_bytes: int = 0

    def metadata(self) -> dict:
        """What a document's metadata records (nothing for clean UTF-8)."""
        meta = {} if self.encoding == "utf-8" else {"encoding": self.encoding, "encoding_source": self.source}
        if self.num_invalid_bytes:
            meta["num_invalid_bytes"] = self.num_invalid_bytes
        return meta


def decode_counting(data: bytes, encoding: str) -> tuple[str, int]:
    """``(text, invalid bytes)``: ``data`` decoded with every invalid byte sequence replaced by U+FFFD."""
    _count.value = 0
    text = codecs.decode(data, encoding, "clinray.count")
    return text, _count.value


def codec_name(label: bytes | str) -> str | None:
    """The Python codec of an encoding label (WHATWG meanings), or None when it is unknown."""
    if isinstance(label, bytes):
        label = label.decode("ascii", "ignore")
    try:
        name = codecs.lookup(label.strip()).name
    except LookupError:
        return None
    name = name.replace("-", "_")
    name = _WHATWG.get(name, name)
    return "utf-8" if name == "utf_8" else name


def declared_encoding(data: bytes, *, kind: Kind) -> tuple[str, str] | None:
    """``(codec, source)`` the bytes declare (XML declaration; HTML meta), or None.

    A UTF-16 or UTF-32 label is ignored: readable ASCII markup without a byte-order mark is neither
    (WHATWG reads such a meta as UTF-8).
    """
    found = None
    match = _XML_DECL.match(data[:512])
    if match and (name := codec_name(match.group(1))):
        found = name, "xml_declaration"
    elif kind == "html":
        match = _META_CHARSET.search(data[:_HEAD_BYTES])
        if match and (name := codec_name(match.group(1))):
            found = name, "meta"
    return None if found is None or found[0].startswith(("utf_16", "utf_32")) else found


def detect_encoding(data: bytes) -> str | None:
    """charset-normalizer's guess for undeclared legacy bytes, common web encodings first among ties."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data[:1_000_000]))
    if not matches:
        return None
    best = matches[0]
    near = [m for m in matches if m.chaos <= best.chaos + 0.01 and m.coherence >= best.coherence - 0.05]
    for common in _COMMON:
        for m in near:
            if common == m.encoding or common in m.could_be_from_charset:
                return common
    return codec_name(best.encoding) or "utf-8"


def _choose(data: bytes, *, kind: Kind) -> tuple[str, str, str, int]:
    """``(codec, source, text, invalid bytes)`` of bytes that are not valid UTF-8."""
    declared = declared_encoding(data, kind=kind)
    if declared and declared[0] != "utf-8":
        text, bad = decode_counting(data, declared[0])
        return declared[0], declared[1], text, bad
    text, bad = decode_counting(data, "utf-8")
    if declared or kind == "xml":  # declared UTF-8, or XML's default
        return "utf-8", declared[1] if declared else "default", text, bad
    if _NON_ASCII.search(text):  # valid UTF-8 characters beside the bad bytes: UTF-8 with damage
        return "utf-8", "default", text, bad
    detected = detect_encoding(data)
    if detected is None or detected == "utf-8":
        return "utf-8", "default", text, bad
    text, bad = decode_counting(data, detected)
    return detected, "detected", text, bad


def decode_document(
    data: bytes, *, kind: Kind = "text", max_invalid_share: float = 0.01, what: str = "file"
) -> Decoded:
    """A whole file's :class:`Decoded` text (raises ``empty_file``, ``binary``, ``not_utf8``, ``undecodable``)."""
    if not data.strip():
        raise ReaderError(
            "empty_file", f"the {what} is empty" if not data else f"the {what} is only whitespace"
        )
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text, bad = decode_counting(data[len(bom) :], encoding)
            decoded = Decoded(text, encoding, "bom", bad)
            break
    else:
        check_binary(data)
        try:
            return Decoded(data.decode("utf-8"), "utf-8", "default")
        except UnicodeDecodeError:
            pass
        encoding, source, text, bad = _choose(data, kind=kind)
        decoded = Decoded(text, encoding, source, bad)
    check_share(
        decoded.num_invalid_bytes,
        len(data),
        encoding=decoded.encoding,
        share=max_invalid_share,
        text=decoded.text,
    )
    return decoded


def check_share(num_invalid: int, num_bytes: int, *, encoding: str, share: float, text: str = "") -> None:
    """``not_utf8`` / ``undecodable`` when invalid bytes are more than ``share`` of ``num_bytes``."""
    if num_invalid and num_invalid > share * num_bytes:
        reason = "not_utf8" if encoding == "utf-8" else "undecodable"
        first = text.find("\ufffd")
        raise ReaderError(
            reason,
            f"{num_invalid} of {num_bytes} bytes invalid in {encoding} (over {share:.2%})",
            text=text[max(0, first - 40) : first + 40] if first >= 0 else None,
        )


class Utf8Sanitizer:
    """A binary stream that passes UTF-8 through with invalid sequences replaced by U+FFFD (counted).

    For streamed XML (MEDLINE): one bad byte would otherwise end the parse, and the rest of the file with
    it. A stream whose XML declaration names another encoding, or that starts with a UTF-16/32 byte-order
    mark, passes through unchanged (the parser honours them).
    """

    def __init__(self, raw: BinaryIO, *, block: int = 1 << 20):
        self.raw, self.block = raw, block
        self.decoder = codecs.getincrementaldecoder("utf-8")("clinray.count")
        self.num_invalid_bytes = 0
        self.num_bytes = 0
        self.passthrough: bool | None = None

    def read(self, size: int = -1) -> bytes:
        """Up to about ``size`` bytes of sanitized UTF-8; ``b""`` only at the end of the stream."""
        while True:
            chunk = self.raw.read(self.block if size is None or size < 0 else max(size, 4))
            if self.passthrough is None:  # another encoding declared, or a UTF-16/32 BOM: the parser's job
                declared = declared_encoding(chunk, kind="xml") if chunk else None
                wide = chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))  # UTF-32 LE too
                self.passthrough = (
                    wide
                    or chunk.startswith(codecs.BOM_UTF32_BE)
                    or (declared is not None and declared[0] != "utf-8")
                )
            if self.passthrough:
                return chunk
            self.num_bytes += len(chunk)
            if not self.decoder.getstate()[0]:  # nothing pending: a clean block passes as is
                try:
                    chunk.decode("utf-8")
                    return chunk
                except UnicodeDecodeError:
                    pass
            _count.value = 0
            text = self.decoder.decode(chunk, final=not chunk)
            self.num_invalid_bytes += _count.value
            if text or not chunk:  # an empty text from a chunk: only a partial character, read on
                return text.encode("utf-8")
