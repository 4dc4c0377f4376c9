"""HTML: the main content only, without navigation, headers, footers, scripts, styles or cookie banners.

Two extractors, by config. ``trafilatura`` (default) is the field-standard boilerplate remover used
to build web pretraining corpora (it is also what datatrove's extractor wraps); it is robust on real
pages and slower. ``lxml`` is a rule-based cleaner: it drops script/style/nav/header/footer/aside/form
elements and any element whose id or class names a cookie banner, consent box, menu or sidebar, then
takes the text of ``<main>``/``<article>`` (else ``<body>``). It is several times faster and exact on
well-structured pages (guidelines, publisher pages), and weaker on messy ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from clinray.data.readers._io import ReaderError, decode_text, doc_row, file_stem, read_all, reject_row

_BOILERPLATE_TAGS = (
    "script",
    "style",
    "noscript",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
    "iframe",
    "svg",
    "button",
    "template",
    "select",
)
_BOILERPLATE_ATTR = re.compile(
    r"(^|[\s_-])(cookie|consent|gdpr|banner|navbar|nav|menu|breadcrumb|sidebar|footer|header|share|social|"
    r"advert|ads|popup|modal|skip)([\s_-]|$)",
    re.IGNORECASE,
)
_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "blockquote",
    "pre",
    "table",
    "ul",
    "ol",
    "dd",
    "dt",
    "br",
    "figcaption",
}
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _lxml_extract(markup: str) -> str:
    import lxml.html

    root = lxml.html.document_fromstring(markup)
    for el in list(root.iter(*_BOILERPLATE_TAGS)):
        if el.getparent() is not None:
            el.drop_tree()
    for el in list(root.iter()):
        if not isinstance(el.tag, str) or el.getparent() is None:
            continue
        attrs = f"{el.get('id', '')} {el.get('class', '')} {el.get('role', '')}"
        if (
            attrs.strip()
            and _BOILERPLATE_ATTR.search(attrs)
            and el.tag not in ("html", "body", "main", "article")
        ):
            el.drop_tree()
    main = root.find(".//main") if root.find(".//main") is not None else root.find(".//article")
    node = main if main is not None else (root.find(".//body") if root.find(".//body") is not None else root)
    parts: list[str] = []
    for el in node.iter():
        if not isinstance(el.tag, str):
            if el.tail:
                parts.append(el.tail)
            continue
        if el.tag in _BLOCK_TAGS:
            parts.append("\n")
        if el.text:
            parts.append(el.text)
        if el.tail and el is not node:
            parts.append(el.tail)
    lines = (" ".join(line.split()) for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _trafilatura_extract(markup: str) -> str | None:
    import trafilatura

    return trafilatura.extract(
        markup,
        output_format="txt",
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        deduplicate=False,
        favor_precision=True,
        fast=True,
    )


def extract_main_text(markup: str, *, extractor: str = "trafilatura") -> str:
    """The main text of an HTML page (raises ``no_main_content`` when nothing is left)."""
    try:
        text = _lxml_extract(markup) if extractor == "lxml" else _trafilatura_extract(markup)
    except (ValueError, TypeError) as exc:
        raise ReaderError("html_error", f"{type(exc).__name__}: {exc}") from exc
    if not text or not text.strip():
        raise ReaderError("no_main_content", f"{extractor} found no main content")
    return text


def read_html(path: str, *, spec, cfg) -> Iterator[dict]:
    doc_id = file_stem(path)
    try:
        markup = decode_text(read_all(path, max_bytes=cfg.max_file_bytes))
        text = extract_main_text(markup, extractor=cfg.html_extractor)
        match = _TITLE.search(markup[:20000])
        title = " ".join(match.group(1).split()) if match else None
        meta = {"title": title, "extractor": cfg.html_extractor}
        yield doc_row(doc_id=doc_id, text=text, spec=spec, fmt="html", path=path, metadata=meta)
    except ReaderError as err:
        yield reject_row(err, spec=spec, fmt="html", path=path, doc_id=doc_id)
