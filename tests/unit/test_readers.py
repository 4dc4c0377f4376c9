"""Readers: every format parses to its text, and every broken input becomes a reject with a reason."""

from __future__ import annotations

import gzip
import io
import json
import re
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinray.data.readers import InputSpec, ReadersConfig, infer_format, parse_file
from clinray.data.readers._io import file_stem

CFG = ReadersConfig()
TAG = re.compile(
    r"</?(p|sec|xref|italic|bold|sup|sub|title|fig|table|td|tr|ref|label|caption|abstract|body)\b[^>]*>"
)
ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")


def parse(path, fmt="auto", **kw):
    spec = InputSpec(glob="*", source="src", domain="clinical", format=fmt, **kw)
    return list(parse_file(str(path), spec=spec, cfg=kw.pop("cfg", CFG) if "cfg" in kw else CFG))


def docs_and_rejects(rows):
    return [r for r in rows if not r["_reason"]], [r for r in rows if r["_reason"]]


def test_jsonl_records_and_bad_lines(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "first text", "title": "T"}),
        "{not json",
        json.dumps({"id": "b"}),
        json.dumps(["a list"]),
        "",
        json.dumps({"text": "no id here"}),
        json.dumps({"id": 7, "text": "second text"}),
    ]
    path = tmp_path / "part.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    docs, rejects = docs_and_rejects(parse(path))
    assert [(d["id"], d["locator"], d["text"]) for d in docs] == [
        ("a", "1", "first text"),
        ("7", "7", "second text"),
    ]
    assert json.loads(docs[0]["metadata"]) == {"title": "T"}
    assert [(r["_reason"], r["locator"]) for r in rejects] == [
        ("bad_json", "2"),
        ("missing_text", "3"),
        ("not_an_object", "4"),
        ("missing_id", "6"),
    ]


def test_jsonl_custom_fields_and_truncated_gzip_keeps_prefix(tmp_path):
    data = "".join(json.dumps({"doc": f"d{i}", "body": "word " * 50}) + "\n" for i in range(2000)).encode()
    path = tmp_path / "cut.jsonl.gz"
    full = gzip.compress(data)
    path.write_bytes(full[: len(full) // 2])
    docs, rejects = docs_and_rejects(parse(path, text_field="body", id_field="doc"))
    assert 0 < len(docs) < 2000 and docs[0]["id"] == "d0"
    assert [r["_reason"] for r in rejects] == ["truncated_gzip"]
    assert rejects[0]["locator"].startswith("after line")


def test_jsonl_without_ids_gets_derived_ids(tmp_path):
    (tmp_path / "chunk1").mkdir()
    path = tmp_path / "chunk1" / "train_0.jsonl"
    path.write_text('{"text": "general text one"}\n{"text": "general text two", "meta": {"set": "cc"}}\n')
    docs = parse(path, id_field="")
    assert [d["id"] for d in docs] == ["chunk1/train_0:1", "chunk1/train_0:2"]


def test_a_50mb_single_line_is_rejected_without_holding_it(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps({"id": "ok1", "text": "before"}).encode() + b"\n")
        f.write(b'{"id": "huge", "text": "' + b"x" * 50_000_000 + b'"}\n')
        f.write(json.dumps({"id": "ok2", "text": "after"}).encode() + b"\n")
    tracemalloc.start()
    rows = parse(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    docs, rejects = docs_and_rejects(rows)
    assert [d["id"] for d in docs] == ["ok1", "ok2"]
    assert [(r["_reason"], r["locator"]) for r in rejects] == [("line_too_long", "2")]
    assert peak < 30_000_000, f"peak {peak / 1e6:.0f} MB: the line was held whole"
    text = tmp_path / "oneline.txt"
    text.write_bytes(b"y" * 50_000_000)
    assert [r["_reason"] for r in parse(text)] == ["line_too_long"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty_file"),
        (b"  \n\t\n", "empty_file"),
        (bytes(range(256)) * 40, "binary"),
        (
            bytes(b if i % 20 else 0xFF for i, b in enumerate("Caf\u00e9 cr\u00e8me, ".encode() * 30)),
            "not_utf8",
        ),
    ],
)
def test_text_rejects(tmp_path, content, reason):
    path = tmp_path / "doc.txt"
    path.write_bytes(content)
    rows = parse(path)
    assert [(r["_reason"], r["id"]) for r in rows] == [(reason, "doc")]


def test_text_and_markdown_ids_and_gzip(tmp_path):
    (tmp_path / "chap-1.txt.gz").write_bytes(gzip.compress(b"Chapter one\n\nBody text."))
    (tmp_path / "notes.md").write_text("# Heading\n\nSome *markdown* text.")
    [doc] = parse(tmp_path / "chap-1.txt.gz")
    assert (doc["id"], doc["text"], doc["format"]) == ("chap-1", "Chapter one\n\nBody text.", "text")
    [md] = parse(tmp_path / "notes.md")
    assert md["format"] == "markdown" and json.loads(md["metadata"])["title"] == "Heading"
    assert file_stem("a.html.gz") == "a" and file_stem("v1.2.report.txt") == "v1.2.report"


def test_parquet_with_configured_fields(tmp_path):
    table = pa.table({"pid": ["p1", "p2", None], "content": ["alpha text", "", "gamma"], "lang": ["en"] * 3})
    pq.write_table(table, tmp_path / "x.parquet")
    docs, rejects = docs_and_rejects(parse(tmp_path / "x.parquet", text_field="content", id_field="pid"))
    assert [(d["id"], d["locator"]) for d in docs] == [("p1", "0")]
    assert json.loads(docs[0]["metadata"]) == {"lang": "en"}
    assert [r["_reason"] for r in rejects] == ["missing_text", "missing_id"]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert [r["_reason"] for r in parse(tmp_path / "bad.parquet")] == ["bad_parquet"]


PAGE = """<!DOCTYPE html><html><head><title>Asthma guideline | Portal</title>
<style>.cookie{color:red}</style><script>var tracker = "TRACKME";</script></head><body>
<div id="cookie-banner" class="cookie"><p>We use cookies. Accept all cookies to continue browsing.</p></div>
<header class="site-header"><a href="/">Portal home</a></header>
<nav><ul><li><a href="/a">Drug index</a></li><li><a href="/b">Contact us</a></li></ul></nav>
<main><article><h1>Asthma guideline</h1>
<p>Inhaled corticosteroids are the first-line controller therapy for persistent asthma in adults.</p>
<p>Short-acting beta agonists relieve acute symptoms &amp; should be carried at all times by patients.</p>
<p>Review the inhaler technique at every visit, because poor technique is a common cause of failure.</p>
</article></main>
<aside class="related"><h2>Related pages</h2><a href="/x">Allergy alerts</a></aside>
<footer class="site-footer"><p>Terms of use. Privacy policy. Accessibility statement.</p></footer>
</body></html>"""


@pytest.mark.parametrize("extractor", ["trafilatura", "lxml", "auto"])
def test_html_main_content_only(tmp_path, extractor):
    (tmp_path / "page.html").write_text(PAGE)
    cfg = ReadersConfig(html_extractor=extractor)
    [doc] = list(parse_file(str(tmp_path / "page.html"), spec=InputSpec(glob="*", source="g"), cfg=cfg))
    assert doc["_reason"] is None and doc["id"] == "page"
    text = doc["text"]
    assert "first-line controller therapy" in text and "poor technique" in text
    assert "relieve acute symptoms & should" in text
    for boilerplate in (
        "cookies",
        "TRACKME",
        "color:red",
        "Drug index",
        "Portal home",
        "Privacy policy",
        "Allergy",
    ):
        assert boilerplate not in text, (extractor, boilerplate)
    meta = json.loads(doc["metadata"])
    assert meta["title"] == "Asthma guideline | Portal"
    assert meta["extractor"] == ("lxml" if extractor == "auto" else extractor)  # the page has <main>


def test_html_auto_uses_trafilatura_where_the_page_does_not_mark_its_content(tmp_path):
    """Without <main> (or with two <article>s, a listing page) the rules would not know where to look."""
    unmarked = PAGE.replace("<main><article>", '<div class="content">').replace("</article></main>", "</div>")
    listing = PAGE.replace(
        "</article></main>", "</article><article><p>Teaser of another page.</p></article></main>"
    )
    listing = listing.replace("<main>", "").replace("</main>", "")
    cfg = ReadersConfig(html_extractor="auto")
    for name, page in (("unmarked", unmarked), ("listing", listing)):
        (tmp_path / f"{name}.html").write_text(page)
        [doc] = list(
            parse_file(str(tmp_path / f"{name}.html"), spec=InputSpec(glob="*", source="g"), cfg=cfg)
        )
        assert json.loads(doc["metadata"])["extractor"] == "trafilatura", name
        assert "first-line controller therapy" in doc["text"] and "Drug index" not in doc["text"]


def test_pdf_text_layer_and_no_text_layer(tmp_path):
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(tmp_path / "leaflet.pdf"), pagesize=A4)
    c.drawString(72, 760, "Metformin is first-line therapy for type 2 diabetes.")
    c.showPage()
    c.drawString(72, 760, "Check renal function before starting treatment.")
    c.save()
    [doc] = parse(tmp_path / "leaflet.pdf")
    assert doc["_reason"] is None and doc["id"] == "leaflet" and doc["format"] == "pdf"
    assert "Metformin is first-line therapy" in doc["text"] and "Check renal function" in doc["text"]
    assert json.loads(doc["metadata"])["num_pages"] == 2
    c = canvas.Canvas(str(tmp_path / "scan.pdf"), pagesize=A4)
    c.rect(100, 100, 200, 300, fill=1)  # an image-like page: drawing, no text
    c.save()
    assert [r["_reason"] for r in parse(tmp_path / "scan.pdf")] == ["pdf_no_text_layer"]
    (tmp_path / "fake.pdf").write_bytes(b"%PDF-1.4 garbage")
    assert parse(tmp_path / "fake.pdf")[0]["_reason"] in ("pdf_error", "pdf_no_text_layer")


JATS = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE article PUBLIC "-//NLM//DTD JATS//EN" "JATS-archivearticle1.dtd">
<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
<article-id pub-id-type="pmid">123</article-id><article-id pub-id-type="pmc">555</article-id>
<title-group><article-title>Ca&#x000b2;&#x0207a; channels in caf&eacute; workers</article-title></title-group>
<aff id="a1">Department of Affiliations, Nowhere University</aff>
<abstract><p>Abstract&nbsp;text here.</p></abstract></article-meta></front>
<body><sec><title>Introduction</title><p>Body one cites work <xref ref-type="bibr" rid="B1">[1]</xref>.</p>
<fig id="f1"><label>Figure 1</label><caption><p>A caption text.</p></caption></fig>
<sec><title>Subsection</title><p>Nested paragraph.</p></sec></sec>
<sec><title>Supplementary files</title><supplementary-material><p>Data S1</p></supplementary-material></sec>
<table-wrap><label>Table 1</label><caption><p>Table caption.</p></caption><table><tr><td>CELL99</td></tr></table></table-wrap>
</body><back><ref-list><ref id="B1"><mixed-citation>Cited Reference Title 2001.</mixed-citation></ref></ref-list></back>
</article>"""


def test_jats_sections_without_references_figures_or_affiliations(tmp_path):
    (tmp_path / "a.nxml").write_text(JATS)
    [doc] = parse(tmp_path / "a.nxml")
    assert doc["id"] == "PMC555" and doc["format"] == "jats"
    assert doc["text"].split("\n\n") == [
        "Ca\u00b2\u207a channels in caf\u00e9 workers",
        "Abstract text here.",  # &nbsp; decoded, then whitespace collapsed
        "Introduction",
        "Body one cites work.",
        "Subsection",
        "Nested paragraph.",
    ]
    for gone in ("Cited Reference", "Nowhere University", "CELL99", "caption", "Data S1", "Supplementary"):
        assert gone not in doc["text"]
    meta = json.loads(doc["metadata"])
    assert meta["pmid"] == "123" and meta["sections"] == ["Introduction", "Subsection"]
    cfg = ReadersConfig(jats_captions=True)
    [with_caps] = list(parse_file(str(tmp_path / "a.nxml"), spec=InputSpec(glob="*", source="pmc"), cfg=cfg))
    assert with_caps["text"].endswith("Figure 1 A caption text.\n\nTable 1 Table caption.")
    (tmp_path / "cut.nxml").write_text(JATS[: len(JATS) // 2])
    assert [(r["_reason"], r["id"]) for r in parse(tmp_path / "cut.nxml")] == [("xml_syntax_error", "cut")]


MEDLINE = """<?xml version="1.0"?><MedlineCitationSet>{}</MedlineCitationSet>"""
CITATION = """<MedlineCitation><PMID Version="1">{pmid}</PMID><Article><ArticleTitle>Title {pmid}.</ArticleTitle>
<Abstract><AbstractText Label="BACKGROUND">Why &lt;it&gt; matters.</AbstractText>
<AbstractText Label="RESULTS">What we found.</AbstractText></Abstract></Article></MedlineCitation>"""


def test_medline_one_doc_per_citation_with_labels(tmp_path):
    xml = MEDLINE.format("".join(CITATION.format(pmid=p) for p in (11, 12, 13)))
    (tmp_path / "m.xml.gz").write_bytes(gzip.compress(xml.encode()))
    assert infer_format(str(tmp_path / "m.xml.gz")) == "medline"
    docs = parse(tmp_path / "m.xml.gz")
    assert [(d["id"], d["locator"]) for d in docs] == [("11", "11"), ("12", "12"), ("13", "13")]
    assert docs[0]["text"] == "Title 11.\n\nBACKGROUND: Why <it> matters.\n\nRESULTS: What we found."
    assert json.loads(docs[0]["metadata"])["labels"] == ["BACKGROUND", "RESULTS"]
    big = MEDLINE.format("".join(CITATION.format(pmid=p) for p in range(1000, 3000)))
    full = gzip.compress(big.encode())
    (tmp_path / "cut.xml.gz").write_bytes(full[: len(full) // 2])
    docs, rejects = docs_and_rejects(parse(tmp_path / "cut.xml.gz", fmt="medline"))
    assert docs and docs[0]["id"] == "1000" and len(docs) < 2000
    assert [r["_reason"] for r in rejects] == ["truncated_gzip"]
    assert rejects[0]["locator"] == f"after PMID {docs[-1]['id']}"


@pytest.mark.parametrize("fmt", ["jsonl", "text", "html", "jats", "medline", "pdf", "parquet"])
def test_no_parser_raises_on_garbage(tmp_path, fmt):
    import random

    rng = random.Random(fmt)
    blobs = [b"\x1f\x8b" + bytes(rng.randrange(256) for _ in range(300)), b"\xff\xfe\x00", b"<", b"{}\n[1]\n"]
    for i, blob in enumerate(blobs):
        path = tmp_path / f"g{i}.bin"
        path.write_bytes(blob)
        rows = parse(path, fmt=fmt)  # never raises
        if i < 2:  # random compressed bytes, binary: never a document, and the reject says why
            assert rows and all(isinstance(r["_reason"], str) and r["_reason"] for r in rows), rows
        else:  # "<" is a valid text file; for structured formats these are rejects
            assert all(r["_reason"] or r["text"] for r in rows)


def test_real_medline_file(shared_data):
    rows = parse(shared_data / "medline16n0902.xml.gz", fmt="medline")
    docs, rejects = docs_and_rejects(rows)
    assert not rejects and len(docs) == 604
    assert len({d["id"] for d in docs}) == 604 and all(d["id"].isdigit() for d in docs)
    first = next(d for d in docs if d["id"] == "17942999")
    assert first["text"].startswith("Neuroplasticity in the processing of pitch dimensions")
    assert "PURPOSE: An auditory electrophysiological study" in first["text"]
    assert "CONCLUSIONS: The MMN can serve" in first["text"]
    assert sum(json.loads(d["metadata"])["has_abstract"] for d in docs) > 500


@pytest.mark.parametrize("name", ["1471-2180-11-174.nxml", "pone.0000217.nxml", "pone.0046493.nxml"])
def test_real_pmc_articles(shared_data, name):
    path = shared_data / "pmc" / name
    [doc] = parse(path, fmt="jats")
    assert doc["_reason"] is None and doc["id"].startswith("PMC")
    meta = json.loads(doc["metadata"])
    text = doc["text"]
    assert (
        meta["title"]
        and text.startswith(meta["title"])
        and meta["has_abstract"]
        and len(meta["sections"]) >= 3
    )
    assert len(text) > 20_000
    assert not TAG.search(text) and not ENTITY.search(text)
    raw = path.read_text()
    ref_titles = re.findall(r"<ref-list>.*?<article-title>([^<]{25,})</article-title>", raw, re.S)
    assert ref_titles, "the test needs a reference title to look for"
    assert ref_titles[0] not in text  # the reference list stays out of the body
    aff = re.search(r"<aff[^>]*>.*?</aff>", raw, re.S).group(0)
    aff_words = re.sub(r"<[^>]+>", " ", aff).split()
    assert " ".join(aff_words[-4:]) not in text
    assert "Introduction" in meta["sections"] or "Background" in meta["sections"]


def test_generated_world_inputs_parse_to_manifest_ids(world_dir, world_manifest):
    """Ids, sources and domains the readers produce are exactly the manifest's documents."""
    import yaml

    from clinray.data.readers import expand_inputs

    recipe = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "clinray/configs/tiny/curate.yaml").read_text()
    )
    specs = [InputSpec(**d) for d in recipe["inputs"]]
    got, rejects = {}, []
    for item in expand_inputs(specs, root=world_dir / "corpus"):
        for row in parse_file(item["path"], spec=specs[item["spec"]], cfg=CFG):
            (rejects.append(row) if row["_reason"] else got.__setitem__(row["id"], row))
    want = {d["doc_id"]: d for d in world_manifest["documents"]}
    assert set(got) == set(want)
    for doc_id, d in want.items():
        assert (got[doc_id]["source"], got[doc_id]["domain"]) == (d["source"], d["domain"])
    assert len(rejects) == len(world_manifest["corrupt"])


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 70), max_size=12),
    last_newline=st.booleans(),
    cap=st.integers(5, 40),
)
def test_block_reader_agrees_with_the_line_reader(lengths, last_newline, cap):
    """read_capped_lines (text files, block at a time) gives the verdict the line-by-line reader gives."""
    from clinray.data.readers._io import ReaderError, iter_capped_lines, read_capped_lines

    data = b"\n".join(b"x" * n for n in lengths) + (b"\n" if last_newline and lengths else b"")
    too_long = next(
        (n for n, line in iter_capped_lines(io.BytesIO(data), max_line_bytes=cap) if line is None), 0
    )
    try:
        out = read_capped_lines(io.BytesIO(data), max_line_bytes=cap, max_bytes=10_000)
    except ReaderError as err:
        assert err.reason == "line_too_long" and too_long and f"line {too_long} " in err.detail
    else:
        assert not too_long and out == data
    if len(data) > 10:
        with pytest.raises(ReaderError, match="file_too_large"):
            read_capped_lines(io.BytesIO(data), max_line_bytes=10_000, max_bytes=10)


def test_interleave_mixes_formats_into_every_batch():
    """Files are listed spec by spec; the parse batches must each get a share of every format."""
    from clinray.data.readers import interleave

    files = [
        {"path": f"/w/{kind}/{i}.{kind}", "spec": s}
        for s, kind in enumerate(("html", "txt"))
        for i in range(400)
    ]
    mixed = interleave(files)
    assert sorted(f["path"] for f in mixed) == sorted(f["path"] for f in files)
    assert mixed == interleave(list(reversed(files)))  # deterministic, whatever the listing order
    for start in range(0, 800, 100):
        assert 25 <= sum(f["spec"] == 0 for f in mixed[start : start + 100]) <= 75
