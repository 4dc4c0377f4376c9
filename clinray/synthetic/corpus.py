"""Write the world's documents to ``corpus/`` and place the corrupt inputs among them.

Returns the manifest's ``documents`` (path, locator, format, source, domain, num_words, fact_ids) and
``corrupt`` lists. Documents are written grouped by folder and sorted by id, so the tree is the same
whatever order the planting steps created them in. Corrupt inputs get real ids from the same counters
as normal documents and sit in the same folders, as a reader would meet them in the wild.
"""

from __future__ import annotations

import random
from pathlib import Path

from tqdm import tqdm

from clinray.synthetic import plant, render
from clinray.synthetic.filler import clinical_background
from clinray.synthetic.render import Doc


def _entry(doc: Doc, path: str, locator) -> dict:
    return {
        "doc_id": doc.doc_id,
        "path": path,
        "locator": locator,
        "format": doc.fmt,
        "source": doc.source,
        "domain": doc.domain,
        "num_words": doc.num_words(),
        "fact_ids": list(doc.fact_ids),
    }


class _Writer:
    def __init__(self, out: Path, ids, cfg, bar: tqdm) -> None:
        self.out, self.ids, self.cfg, self.bar = out, ids, cfg, bar
        self.rng = random.Random(f"corrupt:{cfg.seed}:{cfg.scale}")
        self.documents: list[dict] = []
        self.corrupt: list[dict] = []
        self.num_bytes = 0
        self.num_corrupt = max(1, round(cfg.scale))

    def put(self, rel: str, data: bytes) -> None:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.num_bytes += len(data)
        self.bar.update(len(data))

    def one_file_docs(self, docs: list[Doc], folder: str, suffix: str, render_fn) -> None:
        for doc in docs:
            rel = f"{folder}/{doc.doc_id}{suffix}"
            self.put(rel, render_fn(doc).encode("utf-8"))
            self.documents.append(_entry(doc, rel, None))

    def _filler_doc(self, fmt: str) -> Doc:
        return Doc(
            doc_id=self.ids.next(fmt),
            fmt=fmt,
            domain="clinical",
            title="Notes from the clinic",
            paragraphs=[clinical_background(self.rng, num_sentences=4) for _ in range(4)],
        )

    def jats(self, docs: list[Doc], seed: int) -> None:
        folder = "corpus/clinical/jats"
        self.one_file_docs(
            docs, folder, ".nxml", lambda d: render.jats_article(d, random.Random(f"jats:{seed}:{d.doc_id}"))
        )
        for _ in range(self.num_corrupt):
            doc = self._filler_doc("jats")
            doc.pmid = "1"
            rel = f"{folder}/{doc.doc_id}.nxml"
            self.put(rel, plant.corrupt_truncated_xml(render.jats_article(doc, self.rng)))
            self.corrupt.append({"path": rel, "kind": "truncated_xml", "locator": None})

    def medline(self, docs: list[Doc]) -> None:
        folder = "corpus/clinical/medline"
        k = render.CITATIONS_PER_FILE
        num_files = 0
        for num_files, start in enumerate(range(0, len(docs), k)):
            chunk = docs[start : start + k]
            rel = f"{folder}/medline_{num_files:03d}.xml.gz"
            xml = render.medline_file([render.medline_citation(d) for d in chunk])
            self.put(rel, render.gzip_bytes(xml.encode("utf-8")))
            self.documents += [_entry(d, rel, d.doc_id) for d in chunk]
        for n in range(self.num_corrupt):
            chunk = [self._filler_doc("medline") for _ in range(3)]
            xml = render.medline_file([render.medline_citation(d) for d in chunk])
            rel = f"{folder}/medline_{num_files + 1 + n:03d}.xml.gz"
            self.put(rel, plant.corrupt_truncated_gzip(render.gzip_bytes(xml.encode("utf-8"))))
            self.corrupt.append({"path": rel, "kind": "truncated_gzip", "locator": None})

    def text_corrupt(self) -> None:
        for _ in range(self.num_corrupt):
            for kind, domain in (("binary", "clinical"), ("non_utf8", "clinical"), ("empty", "general")):
                rel = f"corpus/{domain}/text/{self.ids.next('text', domain)}.txt"
                if kind == "binary":
                    data = plant.corrupt_binary(self.rng)
                elif kind == "non_utf8":
                    data = plant.corrupt_non_utf8(clinical_background(self.rng, num_sentences=6))
                else:
                    data = b""
                self.put(rel, data)
                self.corrupt.append({"path": rel, "kind": kind, "locator": None})

    def jsonl(self, docs: list[Doc], domain: str) -> None:
        folder = f"corpus/{domain}/jsonl"
        per_part = render.JSONL_PER_PART[domain]
        parts = [docs[i : i + per_part] for i in range(0, len(docs), per_part)]
        bad_parts: dict[int, int] = {}
        if domain == "clinical" and parts:
            full = max(1, len(parts) - 1)  # the last part may be short: keep bad lines in full parts
            for n in range(self.num_corrupt):
                p = (n * 7 + full // 2) % full
                bad_parts[p] = bad_parts.get(p, 0) + 1
        for p, part in enumerate(parts):
            rel = f"{folder}/part_{p:03d}.jsonl"
            lines: list[str] = []
            bad_at = set(self.rng.sample(range(len(part)), min(len(part), bad_parts.get(p, 0))))
            for i, doc in enumerate(part):
                if i in bad_at:
                    lines.append('{"id": "broken", "text": "this line was cut in the middle of a str')
                    self.corrupt.append({"path": rel, "kind": "bad_json_line", "locator": len(lines)})
                lines.append(render.jsonl_record(doc))
                self.documents.append(_entry(doc, rel, len(lines)))
            self.put(rel, ("\n".join(lines) + "\n").encode("utf-8"))


def write_corpus(out: Path, docs: list[Doc], ids, cfg) -> tuple[list[dict], list[dict], int]:
    """Write every document and corrupt input; return (documents, corrupt, total bytes written)."""
    groups: dict[tuple[str, str], list[Doc]] = {}
    for doc in docs:
        groups.setdefault((doc.fmt, doc.domain), []).append(doc)
    for group in groups.values():
        group.sort(key=lambda d: d.doc_id)
    # a progress bar only for big worlds (scale 1 writes in well under a second)
    bar = tqdm(desc="writing world", unit="B", unit_scale=True, disable=len(docs) < 5000)
    w = _Writer(out, ids, cfg, bar)
    w.one_file_docs(groups.get(("html", "clinical"), []), "corpus/clinical/html", ".html", render.html_page)
    w.jats(groups.get(("jats", "clinical"), []), cfg.seed)
    w.medline(groups.get(("medline", "clinical"), []))
    for domain in ("clinical", "general"):
        w.one_file_docs(
            groups.get(("text", domain), []), f"corpus/{domain}/text", ".txt", lambda d: d.text() + "\n"
        )
        w.jsonl(groups.get(("jsonl", domain), []), domain)
    w.text_corrupt()
    bar.close()
    return w.documents, w.corrupt, w.num_bytes
