"""MEDLINE / PubMed XML: one document per citation keyed by PMID; title plus abstract.

Structured-abstract labels are kept (``PURPOSE: ...``). Files are streamed with ``iterparse`` and each
citation is freed once read, so a 150 MB baseline file never sits whole in memory. A file that breaks
part-way (truncated gzip, invalid XML) keeps the citations read before the break and adds one reject
for the rest, with the last good PMID as its locator.

Bytes that are not UTF-8 (in a file that declares no other encoding) are replaced with U+FFFD before
parsing, so one bad byte does not end the file; a citation that holds such replacements records their
number in ``metadata.num_replaced_chars`` and is a ``not_utf8`` reject above ``max_invalid_byte_share``
of its text. PubMed update files: citations that a later file deletes (``<DeleteCitation>``) or cites
again arrive as ``replaced`` (see :mod:`clinray.data.readers.pubmed_updates`) and become
``deleted_by_update`` / ``superseded_by_update`` rejects; a file of deletions only is one
``deletions_only`` reject.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from clinray.data.readers._io import STREAM_ERRORS, ReaderError, doc_row, gzip_error, open_stream, reject_row
from clinray.data.readers.encoding import Utf8Sanitizer, check_share
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


_TAGS = ("MedlineCitation", "DeleteCitation", "PubmedArticle", "PubmedBookArticle")


def _citation_row(el, *, num: int, spec, cfg, path: str, replaced, sanitizer) -> dict:
    """The document (or reject) row of one ``MedlineCitation`` element."""
    pmid, text, meta = citation_record(el)
    if pmid is None:
        err = ReaderError("missing_id", "citation without PMID", locator=f"citation {num}")
        return reject_row(err, spec=spec, fmt="medline", path=path)
    if replaced and pmid in replaced:
        reason, by = replaced[pmid]
        what = "deleted by" if reason == "deleted_by_update" else "replaced by its version in"
        err = ReaderError(reason, f"{what} {by}", locator=pmid, text=text)
        return reject_row(err, spec=spec, fmt="medline", path=path, doc_id=pmid)
    if sanitizer.num_invalid_bytes and "\ufffd" in text:
        meta["num_replaced_chars"] = num_bad = text.count("\ufffd")
        try:
            check_share(num_bad, len(text), encoding="utf-8", share=cfg.max_invalid_byte_share, text=text)
        except ReaderError as err:
            err.locator = pmid
            return reject_row(err, spec=spec, fmt="medline", path=path, doc_id=pmid)
    return doc_row(doc_id=pmid, text=text, spec=spec, fmt="medline", path=path, locator=pmid, metadata=meta)


def read_medline(
    path: str, *, spec, cfg, replaced: Mapping[str, Sequence[str]] | None = None
) -> Iterator[dict]:
    """Documents of a MEDLINE/PubMed file; ``replaced``: PMIDs a later file deletes or replaces
    (``{pmid: (reason, file name)}``, from :func:`clinray.data.readers.pubmed_updates.plan_updates`)."""
    from lxml import etree

    last, num, num_deleted = None, 0, 0
    try:
        with open_stream(path) as stream:
            sanitizer = Utf8Sanitizer(stream)
            context = etree.iterparse(
                sanitizer,
                events=("end",),
                tag=_TAGS,
                resolve_entities=False,
                no_network=True,
                load_dtd=False,
                huge_tree=True,
            )
            for _, el in context:
                if el.tag == "MedlineCitation":
                    num += 1
                    row = _citation_row(
                        el, num=num, spec=spec, cfg=cfg, path=path, replaced=replaced, sanitizer=sanitizer
                    )
                    last = row["id"] or last
                    yield row
                elif el.tag == "DeleteCitation":
                    num_deleted += len(el.findall("PMID"))
                el.clear(keep_tail=False)  # free what was read: a PubmedArticle holds its references
                while el.getprevious() is not None:
                    del el.getparent()[0]
        if num == 0:
            err = (
                ReaderError(
                    "deletions_only", f"no citation; {num_deleted} PMIDs deleted (applied to earlier files)"
                )
                if num_deleted
                else ReaderError("no_records", "no MedlineCitation element")
            )
            yield reject_row(err, spec=spec, fmt="medline", path=path)
    except etree.XMLSyntaxError as exc:
        where = f"after PMID {last}" if last else "before the first citation"
        reason = "empty_file" if "Document is empty" in str(exc) and num == 0 else "xml_syntax_error"
        yield reject_row(ReaderError(reason, str(exc), locator=where), spec=spec, fmt="medline", path=path)
    except STREAM_ERRORS as exc:
        err = gzip_error(exc) or ReaderError("io_error", str(exc))
        err.locator = f"after PMID {last}" if last else "before the first citation"
        yield reject_row(err, spec=spec, fmt="medline", path=path)
