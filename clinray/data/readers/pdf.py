"""PDF: the text layer of every page with pypdf; a PDF without one is a ``pdf_no_text_layer`` reject.

Scanned PDFs would need OCR, which this platform deliberately does not do (the paper's corpora are
text); they are recorded so that a user can see how many there were.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

from clinray.data.readers._io import ReaderError, doc_row, file_stem, read_all, reject_row


def read_pdf(path: str, *, spec, cfg) -> Iterator[dict]:
    doc_id = file_stem(path)
    try:
        data = read_all(path, max_bytes=cfg.max_file_bytes)
        if not data:
            raise ReaderError("empty_file", "the file is empty")
        if not data.lstrip()[:5] == b"%PDF-":
            raise ReaderError("not_a_pdf", "no %PDF- header")
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        logging.getLogger("pypdf").setLevel(logging.ERROR)
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise ReaderError("pdf_encrypted", "the PDF needs a password")
            pages = [page.extract_text() or "" for page in reader.pages]
            title = (reader.metadata or {}).get("/Title") if reader.metadata else None
        except (PdfReadError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ReaderError("pdf_error", f"{type(exc).__name__}: {exc}") from exc
        text = "\n\n".join(p.strip() for p in pages if p.strip())
        if not text.strip():
            raise ReaderError("pdf_no_text_layer", f"{len(pages)} pages, no extractable text (scanned?)")
        meta = {"title": str(title) if title else None, "num_pages": len(pages)}
        yield doc_row(doc_id=doc_id, text=text, spec=spec, fmt="pdf", path=path, metadata=meta)
    except ReaderError as err:
        yield reject_row(err, spec=spec, fmt="pdf", path=path, doc_id=doc_id)
