"""Render the world's documents into real formats: HTML pages, JATS NXML, MEDLINE xml.gz, text, JSONL.

Markup is built with plain string joins (no DOM) so that ``--scale 100`` stays fast; every text is
escaped, and JATS escapes non-ASCII characters as numeric entities (``&#x003bb;``) as PMC files do.
Each renderer mirrors the real files in ``../shared/data`` closely enough for the real readers, while
the "main text" that a parser should extract stays equal to :meth:`Doc.text`.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import random
import re
from xml.sax.saxutils import escape

from clinray.data.text import word_tokens

SOURCE_BY_FORMAT = {
    "html": "guidelines",
    "jats": "pmc",
    "medline": "pubmed",
    "text": "textbooks",
    "jsonl": "articles",
}
JSONL_PER_PART = {"clinical": 40, "general": 60}
CITATIONS_PER_FILE = 10


@dataclasses.dataclass(kw_only=True, slots=True)
class Doc:
    """One document before rendering."""

    doc_id: str
    fmt: str
    domain: str
    title: str = ""
    paragraphs: list[str] = dataclasses.field(default_factory=list)
    fact_ids: list[str] = dataclasses.field(default_factory=list)
    raw: str | None = None
    """Exact extracted text (planted duplicates); overrides title + paragraphs for text and JSONL."""
    pmid: str = ""
    """JATS only: the article's PMID (the doc id is the PMC id)."""

    @property
    def source(self) -> str:
        return "slimpajama" if self.domain == "general" else SOURCE_BY_FORMAT[self.fmt]

    def text(self) -> str:
        """The text a parser extracts: for clinical JSONL the ``text`` field (no title)."""
        if self.raw is not None:
            return self.raw
        parts = self.paragraphs if self.source == "articles" else [self.title, *self.paragraphs]
        return "\n\n".join(p for p in parts if p)

    def num_words(self) -> int:
        return len(word_tokens(self.text()))


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def xml_text(text: str, *, ascii_entities: bool = False) -> str:
    out = escape(text)
    if ascii_entities:
        out = _NON_ASCII.sub(lambda m: f"&#x{ord(m.group()):05x};", out)
    return out


_COOKIE = (
    '<div id="cookie-banner" class="cookie"><p>We use cookies to improve your experience. '
    "By continuing to browse you agree to our cookie policy.</p><button>Accept all</button></div>"
)
_NAV = (
    '<nav class="site-nav"><ul><li><a href="/">Home</a></li><li><a href="/guidelines">Guidelines</a>'
    '</li><li><a href="/drugs">Drug index</a></li><li><a href="/contact">Contact</a></li></ul></nav>'
)
_STYLE = "<style>body{font-family:sans-serif;margin:0}.cookie{position:fixed;bottom:0}nav li{display:inline}</style>"
_SCRIPT = (
    "<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}"
    'gtag("js",0);gtag("config","G-TINYWORLD");</script>'
)


def html_page(doc: Doc) -> str:
    body = "\n".join(f"<p>{xml_text(p)}</p>" for p in doc.paragraphs)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{xml_text(doc.title)} | '
        f"Clinical Guidelines Portal</title>\n{_STYLE}\n{_SCRIPT}\n</head>\n<body>\n{_COOKIE}\n"
        f'<header class="site-header"><a class="logo" href="/">Clinical Guidelines Portal</a>'
        f'<form class="search"><input type="text" name="q" placeholder="Search guidelines"></form></header>\n'
        f"{_NAV}\n<main>\n<article>\n<h1>{xml_text(doc.title)}</h1>\n{body}\n</article>\n</main>\n"
        f'<aside class="related"><h2>Related pages</h2><ul><li><a href="/g/1">Prescribing in renal '
        f'impairment</a></li><li><a href="/g/2">Allergy alerts</a></li></ul></aside>\n'
        f'<footer class="site-footer"><p>Clinical Guidelines Portal. Terms of use. Privacy. Accessibility.'
        f"</p></footer>\n</body>\n</html>\n"
    )


def jats_article(doc: Doc, rng: random.Random) -> str:
    esc = lambda s: xml_text(s, ascii_entities=True)  # noqa: E731
    pmc = doc.doc_id.removeprefix("PMC")
    abstract, body = doc.paragraphs[0], doc.paragraphs[1:]
    half = max(1, len(body) // 2)
    sections = [("Background", body[:half]), ("Results", body[half:])]
    secs = "".join(
        f'<sec id="s{i}"><title>{t}</title>' + "".join(f"<p>{esc(p)}</p>" for p in ps) + "</sec>"
        for i, (t, ps) in enumerate(sections, 1)
        if ps
    )
    surname, given = (
        rng.choice(["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak"]),
        rng.choice(["A", "J", "M"]),
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal '
        'Archiving and Interchange DTD v1.0 20120330//EN" "JATS-archivearticle1.dtd">\n'
        '<article xmlns:xlink="http://www.w3.org/1999/xlink" article-type="research-article"><front>'
        '<journal-meta><journal-id journal-id-type="nlm-ta">Tiny Clin Med</journal-id><journal-title-group>'
        "<journal-title>Tiny Clinical Medicine</journal-title></journal-title-group></journal-meta>"
        f'<article-meta><article-id pub-id-type="pmid">{doc.pmid}</article-id><article-id pub-id-type="pmc">'
        f"{pmc}</article-id><title-group><article-title>{esc(doc.title)}</article-title></title-group>"
        f'<contrib-group><contrib contrib-type="author"><name><surname>{surname}</surname><given-names>{given}'
        '</given-names></name><xref ref-type="aff" rid="I1">1</xref></contrib></contrib-group>'
        '<aff id="I1"><label>1</label>Department of Invented Medicine, Tiny World University</aff>'
        f"<abstract><p>{esc(abstract)}</p></abstract></article-meta></front><body>{secs}"
        '<fig id="F1"><label>Figure 1</label><caption><p>Serum marker (&#x003bb; light chain) over 12 weeks; '
        "mean &#x000b1; SD.</p></caption></fig>"
        '<table-wrap id="T1"><label>Table 1</label><caption><p>Baseline characteristics.</p></caption><table>'
        "<thead><tr><th>Group</th><th>n</th><th>Age (years)</th></tr></thead><tbody>"
        f"<tr><td>Treated</td><td>{rng.randint(20, 90)}</td><td>{rng.randint(30, 70)}</td></tr>"
        f"<tr><td>Control</td><td>{rng.randint(20, 90)}</td><td>{rng.randint(30, 70)}</td></tr>"
        "</tbody></table></table-wrap></body><back><ref-list><title>References</title>"
        '<ref id="B1"><mixed-citation publication-type="journal">Invented A. A tiny study. '
        "<source>Tiny Clin Med</source>. 2020;<volume>1</volume>:1-9.</mixed-citation></ref></ref-list>"
        "</back></article>\n"
    )


_LABELS = [
    ("BACKGROUND", "BACKGROUND"),
    ("METHODS", "METHODS"),
    ("RESULTS", "RESULTS"),
    ("CONCLUSIONS", "CONCLUSIONS"),
]


def medline_citation(doc: Doc) -> str:
    texts = "".join(
        f'<AbstractText Label="{label}" NlmCategory="{cat}">{xml_text(p)}</AbstractText>\n'
        for (label, cat), p in zip(_LABELS, doc.paragraphs, strict=False)
    )
    return (
        f'<MedlineCitation Owner="NLM" Status="MEDLINE">\n<PMID Version="1">{doc.doc_id}</PMID>\n'
        "<DateCreated>\n<Year>2020</Year>\n<Month>01</Month>\n<Day>01</Day>\n</DateCreated>\n"
        '<Article PubModel="Print">\n<Journal>\n<Title>Tiny clinical reports</Title>\n</Journal>\n'
        f"<ArticleTitle>{xml_text(doc.title)}</ArticleTitle>\n<Abstract>\n{texts}</Abstract>\n"
        '<AuthorList CompleteYN="Y">\n<Author ValidYN="Y">\n<LastName>Invented</LastName>\n'
        "<ForeName>Author</ForeName>\n</Author>\n</AuthorList>\n<Language>eng</Language>\n</Article>\n"
        "</MedlineCitation>\n"
    )


def medline_file(citations: list[str]) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE MedlineCitationSet PUBLIC "-//NLM//DTD Medline '
        'Citation, 1st January, 2016//EN" "https://www.nlm.nih.gov/databases/dtd/nlmmedlinecitationset_160101.dtd">'
        "\n<MedlineCitationSet>\n" + "".join(citations) + "</MedlineCitationSet>\n"
    )


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: mtime 0 and no file name in the header."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as f:
        f.write(data)
    return buf.getvalue()


def jsonl_record(doc: Doc) -> str:
    if doc.domain == "general":
        record = {
            "id": doc.doc_id,
            "text": doc.text(),
            "meta": {"redpajama_set_name": "RedPajamaCommonCrawl"},
        }
    else:
        record = {"id": doc.doc_id, "text": doc.text(), "title": doc.title, "source": doc.source}
    return json.dumps(record, ensure_ascii=False)
