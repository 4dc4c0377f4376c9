"""Readers and encodings: declared encodings honoured, undeclared ones detected, a few bad bytes kept;
and a mutation fuzz over every format that must end every file as documents or rejects with a reason."""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
import time

import pytest

from clinray.data.readers import InputSpec, ReadersConfig, parse_file
from clinray.data.readers.encoding import decode_document

CFG = ReadersConfig()
WORDS = "Fièvre chez l’adulte : le paracétamol est le traitement “de première intention”; coût 4 €."


def parse(path, fmt="auto", cfg=CFG):
    return list(parse_file(str(path), spec=InputSpec(glob="*", source="src", format=fmt), cfg=cfg))


def one_doc(path, fmt="auto", cfg=CFG) -> tuple[dict, dict]:
    [row] = parse(path, fmt, cfg)
    assert row["_reason"] is None, (row["_reason"], row["_detail"])
    return row, json.loads(row["metadata"])


def page(head: str = "") -> str:
    return (
        f"<!DOCTYPE html><html><head>{head}<title>Fièvre – guide</title></head><body>"
        f"<main><h1>Fièvre chez l’adulte</h1><p>{WORDS}</p>"
        "<p>Consultez un médecin si la fièvre dure plus de trois jours.</p></main></body></html>"
    )


@pytest.mark.parametrize(
    ("head", "source"),
    [
        ('<meta charset="windows-1252">', "meta"),
        ('<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">', "meta"),  # = 1252
        ("", "detected"),
    ],
)
def test_windows_1252_html_page(tmp_path, head, source):
    (tmp_path / "p.html").write_bytes(page(head).encode("cp1252"))
    doc, meta = one_doc(tmp_path / "p.html")
    assert WORDS in doc["text"] and "médecin" in doc["text"] and "\ufffd" not in doc["text"]
    assert (meta["encoding"], meta["encoding_source"], meta["title"]) == ("cp1252", source, "Fièvre – guide")


def test_xhtml_page_with_an_xml_declaration(tmp_path):
    xhtml = '<?xml version="1.0" encoding="windows-1252"?>\n' + page()
    (tmp_path / "x.xhtml").write_bytes(xhtml.encode("cp1252"))
    doc, meta = one_doc(tmp_path / "x.xhtml")
    assert WORDS in doc["text"] and meta["encoding_source"] == "xml_declaration"
    (tmp_path / "u.html").write_bytes(xhtml.replace("windows-1252", "UTF-8").encode())  # lxml refused these
    assert WORDS in one_doc(tmp_path / "u.html")[0]["text"]


def test_latin1_text_file(tmp_path):
    text = (
        "Résumé des recommandations thérapeutiques. La patiente âgée présente une fièvre élevée et une "
        "toux sèche; naïve au traitement, elle reçoit du paracétamol.\n"
    )
    (tmp_path / "notes.txt").write_bytes(text.encode("latin-1"))
    doc, meta = one_doc(tmp_path / "notes.txt")
    assert doc["text"] == text and meta["encoding"] == "cp1252" and meta["encoding_source"] == "detected"
    (tmp_path / "short.txt").write_bytes("Café au lait, naïve patients".encode("latin-1"))
    assert one_doc(tmp_path / "short.txt")[0]["text"] == "Café au lait, naïve patients"


def test_byte_order_marks(tmp_path):
    for encoding in ("utf-16", "utf-8-sig", "utf-32"):
        (tmp_path / "bom.txt").write_bytes(WORDS.encode(encoding))
        doc, meta = one_doc(tmp_path / "bom.txt")
        assert doc["text"] == WORDS, encoding
        assert meta.get("encoding_source", "bom") == "bom"


def jats_article(num_paragraphs: int) -> str:
    paragraphs = "".join(
        f"<p>Paragraph {i}: the patient’s creatinine rose to 2.1 mg/dl (β-blocker held; “stable” at day {i}).</p>"
        for i in range(num_paragraphs)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<article><front><article-meta>'
        '<article-id pub-id-type="pmc">777</article-id><title-group><article-title>Renal función'
        "</article-title></title-group></article-meta></front>"
        f"<body><sec><title>Results</title>{paragraphs}</sec></body></article>"
    )


def test_utf8_article_with_one_invalid_byte_is_kept_with_its_count(tmp_path):
    data = jats_article(1000).encode()
    assert len(data) > 100_000
    at = data.index(b"Paragraph 500:") + len(b"Paragraph 500")
    (tmp_path / "a.nxml").write_bytes(data[:at] + b"\xff" + data[at:])
    doc, meta = one_doc(tmp_path / "a.nxml")
    assert meta["num_invalid_bytes"] == 1 and "encoding" not in meta
    assert "Paragraph 500\ufffd: the patient’s" in doc["text"] and "Renal función" in doc["text"]
    assert doc["text"].count("β-blocker") == 1000
    # above the share: every 50th byte invalid is 2% of the file, over the default 1%
    (tmp_path / "w.nxml").write_bytes(bytes(b if i % 50 else 0xFF for i, b in enumerate(data)))
    [row] = parse(tmp_path / "w.nxml")
    assert row["_reason"] == "not_utf8" and "over 1.00%" in row["_detail"]
    strict = ReadersConfig(max_invalid_byte_share=0)
    assert parse(tmp_path / "a.nxml", cfg=strict)[0]["_reason"] == "not_utf8"
    with pytest.raises(ValueError, match="max_invalid_byte_share"):
        ReadersConfig(max_invalid_byte_share=1.5)


def test_declared_legacy_xml_and_undecodable(tmp_path):
    xml = jats_article(3).replace('encoding="UTF-8"', 'encoding="ISO-8859-1"').replace("’", "'")
    xml = xml.replace("β-blocker", "blocker").replace("“", '"').replace("”", '"')
    (tmp_path / "l.nxml").write_bytes(xml.encode("latin-1"))
    doc, meta = one_doc(tmp_path / "l.nxml")
    assert "Renal función" in doc["text"] and meta["encoding_source"] == "xml_declaration"
    with pytest.raises(Exception, match="undecodable"):  # shift_jis declared, bytes that are not
        decode_document(
            b'<?xml version="1.0" encoding="shift_jis"?><a>' + b"\x81\xff" * 100 + b"</a>", kind="xml"
        )


def test_jsonl_line_and_medline_citation_with_an_invalid_byte(tmp_path):
    record = json.dumps({"id": "r1", "text": "Fever and cough. " * 20})
    bad = record.encode().replace(b"cough", b"cou\xffgh", 1)
    (tmp_path / "r.jsonl").write_bytes(bad + b"\n" + b'{"id": "r2", "text": "\xff\xfe\xff"}\n')
    rows = parse(tmp_path / "r.jsonl")
    assert rows[0]["_reason"] is None and json.loads(rows[0]["metadata"]) == {"num_invalid_bytes": 1}
    assert rows[0]["text"].startswith("Fever and cou\ufffdgh.")
    assert (rows[1]["_reason"], rows[1]["locator"]) == ("not_utf8", "2")
    citation = (
        "<MedlineCitation><PMID>{p}</PMID><Article><ArticleTitle>Title {p}</ArticleTitle><Abstract>"
        "<AbstractText>{body}</AbstractText></Abstract></Article></MedlineCitation>"
    )
    body = "Renal function declined in older patients. " * 10
    xml = (
        "<MedlineCitationSet>"
        + "".join(citation.format(p=p, body=body) for p in (1, 2, 3))
        + "</MedlineCitationSet>"
    )
    data = xml.encode().replace(b"Title 2", b"Title\xff 2")
    (tmp_path / "m.xml.gz").write_bytes(gzip.compress(data))
    rows = parse(tmp_path / "m.xml.gz")
    assert [(r["id"], r["_reason"]) for r in rows] == [
        ("1", None),
        ("2", None),
        ("3", None),
    ]  # one byte ended it
    assert json.loads(rows[1]["metadata"])["num_replaced_chars"] == 1


# --- mutation fuzz --------------------------------------------------------------------------------

JATS = (
    '<?xml version="1.0" encoding="UTF-8"?><article><front><article-meta><article-id pub-id-type="pmc">5'
    "</article-id><title-group><article-title>Caf&eacute; workers’ asthma</article-title></title-group>"
    "<abstract><p>Abstract text about asthma.</p></abstract></article-meta></front><body><sec><title>Intro"
    "</title><p>Body text cites <xref ref-type='bibr'>[1]</xref> a study.</p></sec></body></article>"
)
CITATION = (
    '<MedlineCitation><PMID Version="1">{p}</PMID><Article><ArticleTitle>Title {p}.</ArticleTitle><Abstract>'
    '<AbstractText Label="RESULTS">Renal function declined in older patients given the drug.</AbstractText>'
    "</Abstract></Article></MedlineCitation>"
)
MEDLINE = '<?xml version="1.0"?><MedlineCitationSet>{}</MedlineCitationSet>'
#: Billion laughs: ten levels of ten references each (10^9 characters if expanded).
BOMB = (
    '<!DOCTYPE {root} [<!ENTITY a "lollollollol">'
    + "".join(
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefghi", "bcdefghij", strict=True)
    )
    + "]>"
)


def _pdf() -> bytes:
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    c.drawString(72, 760, "Metformin is first-line therapy for type 2 diabetes.")
    c.save()
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _seeds() -> dict[str, tuple[bytes, str, str]]:
    medline = MEDLINE.format("".join(CITATION.format(p=p) for p in range(100, 140))).encode()
    jsonl = "".join(
        json.dumps({"id": f"r{i}", "text": f"Record {i}: fever in naïve patients, treated with paracetamol."})
        + "\n"
        for i in range(30)
    ).encode()
    html = page('<meta charset="windows-1252">').encode("cp1252")
    return {  # name: (bytes, format, file name)
        "html": (page().encode(), "html", "p.html"),
        "html1252": (html, "html", "q.html"),
        "jats": (JATS.encode(), "jats", "a.nxml"),
        "medline": (gzip.compress(medline), "medline", "m.xml.gz"),
        "text": (("Les patients âgés reçoivent une dose réduite. " * 50).encode(), "text", "t.txt"),
        "jsonl": (jsonl, "jsonl", "r.jsonl"),
        "jsonlgz": (gzip.compress(jsonl), "jsonl", "r.jsonl.gz"),
        "pdf": (_pdf(), "pdf", "l.pdf"),
        "tar": (_tar([("x/a.nxml", JATS.encode()), ("x/b.nxml", JATS.encode())]), "jats", "pkg.tar.gz"),
    }


def _mutations(name: str, data: bytes) -> list[tuple[str, bytes]]:
    rng = random.Random(name)
    out = [(f"truncated{i}", data[: rng.randrange(1, len(data))]) for i in range(4)]
    for i, num in enumerate((1, 1, 3, 10, 30, 100, 300)):
        flipped = bytearray(data)
        for _ in range(num):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        out.append((f"flipped{num}_{i}", bytes(flipped)))
    for i in range(2):
        at = rng.randrange(len(data))
        out.append((f"inserted{i}", data[:at] + rng.randbytes(rng.randrange(1, 300)) + data[at:]))
    out.append(("doubled", data + data))
    return out


def _structural() -> list[tuple[str, bytes, str, str]]:
    jats_body = JATS.split("?>", 1)[1]
    medline_one = MEDLINE.format(CITATION.format(p=1).replace("Renal function", "&j;")).split("?>", 1)[1]
    nested = b"<MedlineCitationSet><MedlineCitation><PMID>1</PMID><Article><ArticleTitle>"
    return [
        (
            "jats_bomb",
            (BOMB.format(root="article") + jats_body.replace("Abstract text", "&j;")).encode(),
            "jats",
            "b.nxml",
        ),
        (
            "medline_bomb",
            gzip.compress((BOMB.format(root="MedlineCitationSet") + medline_one).encode()),
            "medline",
            "b.xml.gz",
        ),
        (
            "html_bomb",
            (BOMB.format(root="html") + "<html><body><main><p>&j; text</p></main></body></html>").encode(),
            "html",
            "b.html",
        ),
        (
            "jats_nested_1500",
            b"<article><body>" + b"<sec>" * 1500 + b"<p>deep</p>" + b"</sec>" * 1500 + b"</body></article>",
            "jats",
            "d.nxml",
        ),
        (
            "jats_nested_100k",
            b"<article><body>"
            + b"<sec>" * 100_000
            + b"<p>x</p>"
            + b"</sec>" * 100_000
            + b"</body></article>",
            "jats",
            "e.nxml",
        ),
        (
            "medline_nested",
            gzip.compress(
                nested
                + b"<i>" * 100_000
                + b"x"
                + b"</i>" * 100_000
                + b"</ArticleTitle></Article></MedlineCitation></MedlineCitationSet>"
            ),
            "medline",
            "d.xml.gz",
        ),
        (
            "html_nested",
            b"<html><body>" + b"<div>" * 100_000 + b"deep text" + b"</div>" * 100_000 + b"</body></html>",
            "html",
            "d.html",
        ),
        (
            "jsonl_nested",
            b'{"id": "x", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            "jsonl",
            "d.jsonl",
        ),
        ("text_control_bytes", bytes(range(32)) * 100, "text", "c.txt"),
    ]


def _fuzz_files() -> list[tuple[str, bytes, str, str]]:
    files = []
    for name, (data, fmt, file_name) in _seeds().items():
        for seed in (f"{name}:0", f"{name}:1"):
            files += [(f"{seed}-{kind}", m, fmt, file_name) for kind, m in _mutations(seed, data)]
            if data[:2] == b"\x1f\x8b":  # also damage what is inside the gzip
                inner = [(k, gzip.compress(m)) for k, m in _mutations(seed, gzip.decompress(data))]
                files += [(f"{seed}-inner-{kind}", m, fmt, file_name) for kind, m in inner]
        if data[:2] == b"\x1f\x8b":
            files.append((f"{name}-truncated_gzip", data[: len(data) // 2], fmt, file_name))
    return files + _structural()


@pytest.mark.timeout(90)
def test_mutation_fuzz_ends_every_file_as_documents_or_rejects(tmp_path):
    """Truncation, flipped and inserted bytes, entity bombs, deep nesting and truncated gzip over HTML,
    JATS (loose and tar.gz), MEDLINE .xml.gz, text, JSONL (plain and gzip) and PDF."""
    files = _fuzz_files()
    assert len(files) > 340
    reasons, slowest, started = {}, (0.0, ""), time.perf_counter()
    for n, (label, data, fmt, file_name) in enumerate(files):
        folder = tmp_path / f"{n:03d}"
        folder.mkdir()
        (folder / file_name).write_bytes(data)
        start = time.perf_counter()
        rows = parse(folder / file_name, fmt)
        slowest = max(slowest, (time.perf_counter() - start, label))
        assert rows, f"{label}: no row at all"  # ParseFiles would make it a no_records reject
        for row in rows:
            if row["_reason"] is None:
                assert isinstance(row["text"], str) and row["text"].strip(), label
            else:
                assert isinstance(row["_reason"], str) and row["_reason"] != "parse_error", (
                    label,
                    row["_detail"],
                )
                reasons[row["_reason"]] = reasons.get(row["_reason"], 0) + 1
    assert slowest[0] < 20, f"{slowest[1]} took {slowest[0]:.1f} s"
    assert time.perf_counter() - started < 30
    for expected in ("xml_syntax_error", "truncated_gzip", "not_utf8", "bad_json", "pdf_error"):
        assert expected in reasons, (expected, reasons)
