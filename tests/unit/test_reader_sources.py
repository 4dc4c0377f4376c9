"""Real-source ingestion without Ray: PubMed baseline + update files (DeleteCitation, revised citations)
and PMC Open Access packages (.tar.gz of .nxml, streamed)."""

from __future__ import annotations

import gzip
import io
import tarfile

import pyarrow as pa
import pytest

from clinray.data.readers import InputSpec, ParseFiles, ReadersConfig, file_groups, parse_file
from clinray.data.readers.pubmed_updates import scan_pmids, updates_plan
from clinray.data.stage import read_rejects

CITATION = (
    '<MedlineCitation Owner="NLM" Status="MEDLINE">\n<PMID Version="1">{pmid}</PMID>\n<Article>'
    "<ArticleTitle>{title}</ArticleTitle><Abstract><AbstractText>Renal function declined in older "
    "patients given the drug for {title}.</AbstractText></Abstract></Article></MedlineCitation>\n"
)


def medline_file(citations: list[tuple[int, str]], *, deleted: list[int] = (), pubmed: bool = False) -> bytes:
    """A MEDLINE (or PubmedArticleSet) file with these citations and a DeleteCitation list."""
    body = "".join(
        (f"<PubmedArticle>{CITATION.format(pmid=p, title=t)}<PubmedData/></PubmedArticle>" if pubmed else "")
        or CITATION.format(pmid=p, title=t)
        for p, t in citations
    )
    if deleted:
        body += "<DeleteCitation>\n" + "".join(f'<PMID Version="1">{p}</PMID>\n' for p in deleted)
        body += "</DeleteCitation>\n"
    root = "PubmedArticleSet" if pubmed else "MedlineCitationSet"
    return gzip.compress(f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n{body}</{root}>\n'.encode())


def run_parse(inputs: list[InputSpec], root, sink, cfg=None) -> tuple[list[dict], list[dict]]:
    """The parse stage as a Ray task runs it (file_groups, then ParseFiles), in this process."""
    cfg = cfg or ReadersConfig()
    parse = ParseFiles(inputs, cfg, sink_root=str(sink))
    docs = []
    for group in file_groups(inputs, cfg, root=root):
        docs += parse(pa.Table.from_pylist([group])).to_pylist()
    return docs, read_rejects(sink).to_pylist()


def test_update_files_delete_and_replace_earlier_citations(tmp_path):
    (tmp_path / "baseline").mkdir()
    (tmp_path / "updates").mkdir()
    (tmp_path / "baseline/pubmed25n0001.xml.gz").write_bytes(
        medline_file([(11, "first"), (12, "second"), (13, "third")])
    )
    (tmp_path / "baseline/pubmed25n0002.xml.gz").write_bytes(medline_file([(21, "fourth"), (22, "fifth")]))
    # update 3 revises 12 and deletes 21; update 4 deletes 12 (its revised version too) and 13
    (tmp_path / "updates/pubmed25n0003.xml.gz").write_bytes(
        medline_file([(12, "second, revised"), (31, "new")], deleted=[21, 999], pubmed=True)
    )
    (tmp_path / "updates/pubmed25n0004.xml.gz").write_bytes(medline_file([], deleted=[12, 13], pubmed=True))
    inputs = [
        InputSpec(glob="baseline/*.xml.gz", source="pubmed", format="medline"),
        InputSpec(glob="updates/*.xml.gz", source="pubmed"),  # auto: sniffed as MEDLINE
    ]
    docs, rejects = run_parse(inputs, tmp_path, tmp_path / "sink")
    assert sorted(d["id"] for d in docs) == ["11", "22", "31"]
    by = sorted((r["id"] or "", r["reason"], r["detail"], r["locator"]) for r in rejects)
    assert by == [
        ("", "deletions_only", "no citation; 2 PMIDs deleted (applied to earlier files)", None),
        ("12", "deleted_by_update", "deleted by pubmed25n0004.xml.gz", "12"),  # the baseline version
        ("12", "deleted_by_update", "deleted by pubmed25n0004.xml.gz", "12"),  # and the revised one
        ("13", "deleted_by_update", "deleted by pubmed25n0004.xml.gz", "13"),
        ("21", "deleted_by_update", "deleted by pubmed25n0003.xml.gz", "21"),
    ]
    assert {r["input_file"].rsplit("/", 1)[-1] for r in rejects if r["id"] == "12"} == {
        "pubmed25n0001.xml.gz",
        "pubmed25n0003.xml.gz",
    }
    assert next(r for r in rejects if r["id"] == "13")["text"].startswith("third")
    off = ReadersConfig(medline_updates=False)
    docs, _ = run_parse(inputs, tmp_path, tmp_path / "sink_off", cfg=off)
    assert sorted(d["id"] for d in docs) == ["11", "12", "12", "13", "21", "22", "31"]


def test_updates_plan_orders_events():
    import numpy as np

    a = np.array
    scans = [(a([1, 2, 3]), a([])), (a([2]), a([3])), (a([3]), a([]))]  # 3 deleted, then cited again
    plan = updates_plan(["f1", "f2", "f3"], scans)
    assert plan == [
        {"2": ["superseded_by_update", "f2"], "3": ["superseded_by_update", "f3"]},
        {},
        {},
    ]
    same_file = updates_plan(["f1"], [(a([5]), a([5]))])  # a file deleting its own citation
    assert same_file == [{"5": ["deleted_by_update", "f1"]}]


def test_real_update_file_deletes_a_baseline_citation(shared_data, tmp_path):
    """medline16n0902 (a 2016 update file) deletes PMID 26432306 and carries PMID 17942999."""
    real = shared_data / "medline16n0902.xml.gz"
    cited, deleted = scan_pmids(str(real))
    assert len(cited) == 604 and deleted.tolist() == [26432306]
    (tmp_path / "medline16n0001.xml.gz").write_bytes(
        medline_file([(26432306, "withdrawn"), (17942999, "old version"), (1, "kept")])
    )
    (tmp_path / "medline16n0902.xml.gz").symlink_to(real)
    inputs = [InputSpec(glob="*.xml.gz", source="pubmed", format="medline")]
    docs, rejects = run_parse(inputs, tmp_path, tmp_path / "sink")
    assert len(docs) == 605 and "1" in {d["id"] for d in docs}
    assert next(d for d in docs if d["id"] == "17942999")["text"].startswith("Neuroplasticity")
    assert sorted((r["id"], r["reason"], r["detail"]) for r in rejects) == [
        ("17942999", "superseded_by_update", "replaced by its version in medline16n0902.xml.gz"),
        ("26432306", "deleted_by_update", "deleted by medline16n0902.xml.gz"),
    ]


def pmc_tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_pmc_package_streamed_member_by_member(tmp_path):
    def article(n: int) -> bytes:
        return (
            f'<article><front><article-meta><article-id pub-id-type="pmc">{n}</article-id><title-group>'
            f"<article-title>Article {n}</article-title></title-group></article-meta></front>"
            f"<body><p>Body {n} {'text ' * 4000}</p></body></article>"
        ).encode()

    members = [(f"PMC00/PMC{n}.xml", article(n)) for n in range(1, 6)]
    members.insert(2, ("PMC00/figure.jpg", b"\xff\xd8 not text"))
    members.insert(3, ("PMC00/broken.nxml", b"<article><body><p>cut"))
    data = pmc_tar(members)
    (tmp_path / "oa_comm_xml.PMC00.tar.gz").write_bytes(data)
    rows = list(
        parse_file(
            str(tmp_path / "oa_comm_xml.PMC00.tar.gz"),
            spec=InputSpec(glob="*", source="pmc"),
            cfg=ReadersConfig(),
        )
    )
    assert [(r["id"], r["_reason"]) for r in rows] == [
        ("PMC1", None),
        ("PMC2", None),
        ("broken", "xml_syntax_error"),
        ("PMC3", None),
        ("PMC4", None),
        ("PMC5", None),
    ]
    assert rows[0]["locator"] == "oa_comm_xml.PMC00.tar.gz!PMC00/PMC1.xml" and rows[0]["format"] == "jats"
    (tmp_path / "cut.tgz").write_bytes(data[: len(data) // 2])
    rows = list(
        parse_file(str(tmp_path / "cut.tgz"), spec=InputSpec(glob="*", source="pmc"), cfg=ReadersConfig())
    )
    assert rows[0]["id"] == "PMC1" and rows[-1]["_reason"] in ("truncated_tar", "truncated_gzip")
    assert rows[-1]["locator"].startswith("after cut.tgz!PMC00/")


def test_pmc_tar_gz_of_the_real_articles_matches_the_loose_files(shared_data, tmp_path):
    loose = sorted((shared_data / "pmc").glob("*.nxml"))
    assert len(loose) == 3
    with tarfile.open(tmp_path / "oa_bulk.tar.gz", "w:gz") as tar:
        for path in loose:
            tar.add(path, arcname=f"PMC000xxxxxx/{path.name}")
    spec, cfg = InputSpec(glob="*", source="pmc"), ReadersConfig()
    packed = list(parse_file(str(tmp_path / "oa_bulk.tar.gz"), spec=spec, cfg=cfg))
    singles = [row for path in loose for row in parse_file(str(path), spec=spec, cfg=cfg)]
    key = ("id", "text", "metadata", "format", "source", "_reason")
    assert [{k: r[k] for k in key} for r in packed] == [{k: r[k] for k in key} for r in singles]
    assert [r["locator"] for r in packed] == [f"oa_bulk.tar.gz!PMC000xxxxxx/{p.name}" for p in loose]
    assert all(len(r["text"]) > 20_000 for r in packed)


def test_a_tar_of_nothing_readable_is_one_reject(tmp_path):
    (tmp_path / "images.tar.gz").write_bytes(pmc_tar([("a.jpg", b"\xff\xd8")]))
    (tmp_path / "junk.tar.gz").write_bytes(gzip.compress(b"not a tar " * 100))
    spec, cfg = InputSpec(glob="*", source="pmc"), ReadersConfig()
    assert [r["_reason"] for r in parse_file(str(tmp_path / "images.tar.gz"), spec=spec, cfg=cfg)] == [
        "no_records"
    ]
    assert [r["_reason"] for r in parse_file(str(tmp_path / "junk.tar.gz"), spec=spec, cfg=cfg)] == [
        "bad_tar"
    ]


@pytest.mark.parametrize("name", ["a.tar.gz", "a.tgz", "a.tar"])
def test_archives_are_jats_packages(name):
    from clinray.data.readers import infer_format
    from clinray.data.readers._io import file_stem

    assert infer_format(name) == "jats" and file_stem(name) == "a"
