"""MEDLINE / PubMed XML: one document per citation keyed by PMID; title plus abstract.

Structured-abstract labels are kept (``PURPOSE: ...``). Files are streamed with ``iterparse`` and each
citation is freed once read, so a 150 MB baseline file never sits whole in memory. A file that breaks
part-way (truncated gzip, invalid XML) keeps the citations read before the break and adds one reject
for the rest, with the last good PMID as its locator.
"""

from __future__ import annotations

from collections.abc import Iterator

from clinray.data.readers._io import STREAM_ERRORS, ReaderError, doc_row, gzip_error, open_stream, reject_row
from clinray.data.readers.xmlutil import element_text


def citation_record(el) -> tuple[str | None, str, dict]:
    """``(pmid, text, metadata)`` of a ``MedlineCitation`` element."""
    pmid_el = el.find("PMID")
    pmid = (pmid_el.text or "").strip() if pmid_el is not None else None
    article = el.find("Article")
    title = (
        element_text(article.find("ArticleTitle"))
        if article is not None and article.find("ArticleTitle") is not None
        else ""
    )
    paragraphs, labels = [], []
    abstract = article.find("Abstract") if article is not None else None
    if abstract is not None:
        for part in abstract.findall("AbstractText"):
            body = element_text(part)
            label = (part.get("Label") or "").strip()
            if label:
                labels.append(label)
                paragraphs.append(f"{label}: {body}" if body else label)
            elif body:
                paragraphs.append(body)
    journal = article.find("Journal/Title") if article is not None else None
    meta = {
        "title": title,
        "labels": labels,
        "has_abstract": bool(paragraphs),
        "journal": element_text(journal) if journal is not None else None,
    }
    return pmid or None, "\n\n".join(p for p in [title, *paragraphs] if p), meta


def read_medline(path: str, *, spec, cfg) -> Iterator[dict]:
    from lxml import etree

    last, num = None, 0
    try:
        with open_stream(path) as stream:
            context = etree.iterparse(
                stream,
                events=("end",),
                tag="MedlineCitation",
                resolve_entities=False,
                no_network=True,
                load_dtd=False,
                huge_tree=True,
            )
            for _, el in context:
                num += 1
                pmid, text, meta = citation_record(el)
                if pmid is None:
                    err = ReaderError("missing_id", "citation without PMID", locator=f"citation {num}")
                    yield reject_row(err, spec=spec, fmt="medline", path=path)
                else:
                    yield doc_row(
                        doc_id=pmid,
                        text=text,
                        spec=spec,
                        fmt="medline",
                        path=path,
                        locator=pmid,
                        metadata=meta,
                    )
                    last = pmid
                el.clear(keep_tail=False)
                while el.getprevious() is not None:
                    del el.getparent()[0]
        if num == 0:
            yield reject_row(
                ReaderError("no_records", "no MedlineCitation element"), spec=spec, fmt="medline", path=path
            )
    except etree.XMLSyntaxError as exc:
        where = f"after PMID {last}" if last else "before the first citation"
        reason = "empty_file" if "Document is empty" in str(exc) and num == 0 else "xml_syntax_error"
        yield reject_row(ReaderError(reason, str(exc), locator=where), spec=spec, fmt="medline", path=path)
    except STREAM_ERRORS as exc:
        err = gzip_error(exc) or ReaderError("io_error", str(exc))
        err.locator = f"after PMID {last}" if last else "before the first citation"
        yield reject_row(err, spec=spec, fmt="medline", path=path)
