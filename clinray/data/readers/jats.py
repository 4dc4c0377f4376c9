"""JATS / NXML (PMC Open Access): title, abstract, body sections in order.

References (``ref-list`` and bibliographic ``xref`` markers), affiliations (the front matter beyond
title and abstract), figures, tables, formulas and supplementary material are kept out of the body;
figure and table captions are appended at the end when ``jats_captions`` is on. Entities are decoded
(HTML named entities included, see :mod:`xmlutil`). A truncated or invalid file is an
``xml_syntax_error`` reject: a JATS file is one article, so there is nothing partial worth keeping.
PMC Open Access packages (``.tar.gz`` of ``.nxml``) are read member by member in streaming mode.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from clinray.data.readers._io import (
    STREAM_ERRORS,
    ReaderError,
    doc_row,
    file_stem,
    gzip_error,
    open_tar,
    read_all,
    reject_row,
)
from clinray.data.readers.encoding import decode_document
from clinray.data.readers.xmlutil import (
    decode_named_entities,
    drop_keep_tail,
    element_text,
    local,
    safe_parser,
)

_DROP_ALWAYS = {
    "ref-list",
    "fig",
    "fig-group",
    "table-wrap",
    "table-wrap-group",
    "supplementary-material",
    "disp-formula",
    "inline-formula",
    "math",
    "graphic",
    "media",
    "fn-group",
    "alternatives",
    "table-wrap-foot",
    "inline-graphic",
    "chem-struct-wrap",
    "object-id",
}
_EMPTY_BRACKETS = re.compile(r"\s*[\[(][\s,;–—-]*[\])]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:)])")
_PUNCT_RUN = re.compile(r"([,;])(?:\s*[,;])+")  # "lipase,,,, 7": what is left of a run of citations


def _clean(text: str) -> str:
    text = _PUNCT_RUN.sub(r"\1", _EMPTY_BRACKETS.sub("", text))
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip()


def _strip(root, *, captions: bool) -> list[str]:
    """Remove non-body-text elements in place; return figure/table captions (when wanted)."""
    found = []
    for el in list(root.iter()):
        name = local(el.tag)
        if name in ("fig", "table-wrap") and captions:
            cap = next((c for c in el if local(c.tag) == "caption"), None)
            label = next((c for c in el if local(c.tag) == "label"), None)
            if cap is not None:
                found.append(
                    _clean(f"{element_text(label) + ' ' if label is not None else ''}{element_text(cap)}")
                )
    for el in list(root.iter()):
        name = local(el.tag)
        if not name:
            drop_keep_tail(el)  # comments, processing instructions
        elif name in _DROP_ALWAYS or (name == "xref" and el.get("ref-type") in ("bibr", "fn", "table-fn")):
            drop_keep_tail(el)
    return found


def _blocks(node, sections: list[str], depth: int = 0) -> Iterator[str]:
    """Paragraph-level text blocks of a body/abstract/sec in document order."""
    if node.text and node.text.strip() and local(node.tag) not in ("sec", "body", "abstract"):
        yield _clean(node.text)
    for child in node:
        name = local(child.tag)
        if name == "sec":
            title = next((c for c in child if local(c.tag) == "title"), None)
            inner_sections: list[str] = []
            inner = list(_blocks(child, inner_sections, depth + 1))
            if not inner:  # a section left empty (e.g. only supplementary files): no orphan heading
                continue
            if title is not None and element_text(title):
                sections.append(element_text(title))
                yield element_text(title)
            sections.extend(inner_sections)
            yield from inner
        elif name in ("title", "label") and local(node.tag) == "sec":
            continue
        elif name in ("p", "list-item", "disp-quote", "def-item", "statement", "boxed-text", "speech"):
            text = _clean(element_text(child))
            if text:
                yield text
        elif name in ("list", "def-list", "abstract"):
            yield from _blocks(child, sections, depth + 1)
        else:
            text = _clean(element_text(child))
            if text:
                yield text


def _article_id(meta, path: str) -> str:
    ids = {}
    for el in meta.findall("{*}article-id") if meta is not None else []:
        ids.setdefault(el.get("pub-id-type"), (el.text or "").strip())
    pmc = ids.get("pmc") or ids.get("pmcid")
    if pmc:
        return pmc if pmc.upper().startswith("PMC") else f"PMC{pmc}"
    return ids.get("pmid") or file_stem(path)


def parse_jats(
    data: bytes, *, path: str, captions: bool, encoding: str | None = None
) -> tuple[str, str, dict]:
    """``(id, text, metadata)`` of one JATS article (raises :class:`ReaderError`).

    ``encoding`` overrides the file's XML declaration (the reader hands over re-encoded UTF-8).
    """
    from lxml import etree

    try:
        root = etree.fromstring(decode_named_entities(data), safe_parser(encoding=encoding))
    except etree.XMLSyntaxError as exc:
        raise ReaderError("xml_syntax_error", str(exc)) from exc
    if local(root.tag) != "article":
        raise ReaderError("not_jats", f"root element is <{local(root.tag)}>, not <article>")
    meta = root.find("{*}front/{*}article-meta")
    doc_id = _article_id(meta, path)
    caption_texts = _strip(root, captions=captions)
    title_el = meta.find("{*}title-group/{*}article-title") if meta is not None else None
    title = _clean(element_text(title_el)) if title_el is not None else ""
    abstracts = meta.findall("{*}abstract") if meta is not None else []
    abstract = next(
        (a for a in abstracts if a.get("abstract-type") is None), abstracts[0] if abstracts else None
    )
    sections: list[str] = []
    body = root.find("{*}body")
    try:
        abstract_blocks = list(_blocks(abstract, [])) if abstract is not None else []
        body_blocks = list(_blocks(body, sections)) if body is not None else []
    except RecursionError as exc:  # sections nested about a thousand deep: no real article
        raise ReaderError("xml_too_deep", "sections nested deeper than Python's recursion limit") from exc
    parts = [title, *abstract_blocks, *body_blocks, *caption_texts]
    text = "\n\n".join(p for p in parts if p)
    pmid = next(
        (
            el.text
            for el in (meta.findall("{*}article-id") if meta is not None else [])
            if el.get("pub-id-type") == "pmid"
        ),
        None,
    )
    metadata = {
        "title": title,
        "sections": sections,
        "pmid": pmid,
        "has_abstract": bool(abstract_blocks),
        "num_captions": len(caption_texts),
    }
    return doc_id, text, metadata


def jats_document(data: bytes, *, path: str, cfg) -> tuple[str, str, dict]:
    """``(id, text, metadata)`` of a JATS file's bytes: decoded (see ``encoding``), then parsed."""
    decoded = decode_document(data, kind="xml", max_invalid_share=cfg.max_invalid_byte_share)
    clean = decoded.encoding == "utf-8" and not decoded.num_invalid_bytes and decoded.source != "bom"
    xml = data if clean else decoded.text.encode("utf-8")
    doc_id, text, metadata = parse_jats(xml, path=path, captions=cfg.jats_captions, encoding="utf-8")
    if not text.strip():
        raise ReaderError("no_text", "no title, abstract or body text")
    return doc_id, text, {**metadata, **decoded.metadata()}


def read_jats(path: str, *, spec, cfg) -> Iterator[dict]:
    if path.lower().endswith(TAR_SUFFIXES):
        yield from read_jats_tar(path, spec=spec, cfg=cfg)
        return
    doc_id = file_stem(path)
    try:
        data = read_all(path, max_bytes=cfg.max_file_bytes)
        doc_id, text, metadata = jats_document(data, path=path, cfg=cfg)
        yield doc_row(doc_id=doc_id, text=text, spec=spec, fmt="jats", path=path, metadata=metadata)
    except ReaderError as err:
        yield reject_row(err, spec=spec, fmt="jats", path=path, doc_id=doc_id)


TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def read_jats_tar(path: str, *, spec, cfg) -> Iterator[dict]:
    """Every ``.nxml``/``.xml`` member of a PMC Open Access package, streamed (``r|*``: no extraction,
    no seek; members in archive order), each a document with locator ``archive.tar.gz!member``.

    Other members (images, PDFs of per-article packages) are skipped. A bad member is one reject and the
    archive goes on; a truncated or broken archive keeps the members before the break and adds one reject.
    """
    import tarfile

    archive, last, num = os.path.basename(path), None, 0
    try:
        with open_tar(path) as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith((".nxml", ".xml")):
                    continue
                num += 1
                locator, doc_id = f"{archive}!{member.name}", file_stem(member.name)
                try:
                    if member.size > cfg.max_file_bytes:
                        raise ReaderError("file_too_large", f"member of {member.size} bytes")
                    data = tar.extractfile(member).read()
                    doc_id, text, meta = jats_document(data, path=member.name, cfg=cfg)
                    yield doc_row(
                        doc_id=doc_id,
                        text=text,
                        spec=spec,
                        fmt="jats",
                        path=path,
                        locator=locator,
                        metadata=meta,
                    )
                except ReaderError as err:
                    err.locator = locator
                    yield reject_row(err, spec=spec, fmt="jats", path=path, doc_id=doc_id)
                last = member.name
    except (tarfile.TarError, *STREAM_ERRORS) as exc:
        err = gzip_error(exc) or _tar_error(exc)
        err.locator = f"after {archive}!{last}" if last else "before the first member"
        yield reject_row(err, spec=spec, fmt="jats", path=path)
        return
    if num == 0:
        err = ReaderError("no_records", "no .nxml or .xml member in the archive")
        yield reject_row(err, spec=spec, fmt="jats", path=path)


def _tar_error(exc: BaseException) -> ReaderError:
    text = str(exc)
    if "unexpected end" in text or "truncated" in text:
        return ReaderError("truncated_tar", text)
    return ReaderError("bad_tar", text or type(exc).__name__)
