"""XML helpers for JATS and MEDLINE: safe parsing with HTML named entities decoded, text of elements.

Publisher XML (JATS/NXML) often uses HTML named entities (``&nbsp;``, ``&eacute;``) that are only
defined in a DTD we never fetch; they are rewritten to numeric references before parsing, so the
parser stays offline (no DTD, no network, no external entities) and every entity is decoded.
"""

from __future__ import annotations

import html.entities
import re

_XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}
_NAMED = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")


def _numeric(match: re.Match) -> bytes:
    name = match.group(1).decode("ascii")
    if name in _XML_ENTITIES:
        return match.group(0)
    codepoint = html.entities.name2codepoint.get(name)
    return f"&#{codepoint};".encode() if codepoint else match.group(0)


def decode_named_entities(data: bytes) -> bytes:
    """Replace HTML named entities with numeric character references (XML's own five are kept)."""
    return _NAMED.sub(_numeric, data) if b"&" in data else data


def safe_parser(*, encoding: str | None = None):
    """An offline parser (no DTD, no network, no entity expansion); ``encoding`` overrides the declaration."""
    from lxml import etree

    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=True,
        recover=False,
        encoding=encoding,
    )


def local(tag) -> str:
    """Tag without namespace (``{ns}p`` -> ``p``); '' for comments and processing instructions."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def element_text(el) -> str:
    """All text under ``el``, whitespace collapsed."""
    return " ".join("".join(el.itertext()).split())


def drop_keep_tail(el) -> None:
    """Remove ``el`` from its tree but keep the text that follows it."""
    parent = el.getparent()
    if parent is None:
        return
    tail = el.tail or ""
    prev = el.getprevious()
    if tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    parent.remove(el)
