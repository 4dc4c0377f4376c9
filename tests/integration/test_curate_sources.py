"""Curation of real-source layouts on local Ray: PubMed baseline + update files (the DeleteCitation
pre-pass as Ray tasks), a PMC Open Access .tar.gz, a Latin-1 text file; and a run without any reject,
whose rejects folder still exists."""

from __future__ import annotations

import gzip
import io
import tarfile

import pyarrow.parquet as pq

from clinray.config import load
from clinray.data.pipeline import CurateConfig, run_curation
from clinray.data.stage import REJECT_SCHEMA, read_rejects

SENTENCE = "Renal function declined in older patients given the drug, so the dose was reduced by half. "
#: Only the first half of the pipeline (parse to exact dedup): the global stages have their own tests.
GLOBAL_OFF = {stage: {"enabled": False} for stage in ("minhash", "substring", "decontaminate")}


def _curate(root, out, inputs: list[dict]):
    overrides = {"input_root": str(root), "inputs": inputs, "output": {"dir": str(out)}, **GLOBAL_OFF}
    return run_curation(load(CurateConfig, None, overrides))


def _citation(pmid: int, words: str) -> str:
    return (
        f'<MedlineCitation><PMID Version="1">{pmid}</PMID><Article><ArticleTitle>Citation {pmid}'
        f"</ArticleTitle><Abstract><AbstractText>{words} {SENTENCE * 3}</AbstractText></Abstract>"
        "</Article></MedlineCitation>"
    )


def test_a_run_without_rejects_still_has_its_rejects_folder(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"note{i}.txt").write_text(f"Note {i}. " + SENTENCE * (3 + i))
    result = _curate(tmp_path / "in", tmp_path / "out", [{"glob": "*.txt", "source": "notes"}])
    assert result.ok, result.problems
    assert result.rejects_dir.is_dir()
    table = pq.read_table(result.rejects_dir)
    assert table.num_rows == 0 and table.schema.equals(REJECT_SCHEMA)
    assert read_rejects(result.out_dir / "accounting").num_rows == 0
    assert pq.read_table(result.docs_dir).num_rows == 3


def test_pubmed_updates_pmc_package_and_legacy_text(ray_local, tmp_path, monkeypatch):
    import clinray.data.readers.pubmed_updates as updates

    monkeypatch.setattr(updates, "LOCAL_SCAN_BYTES", 0)  # the pre-pass as Ray tasks, as at scale
    root = tmp_path / "in"
    (root / "pubmed").mkdir(parents=True)
    citations = "".join(_citation(p, f"baseline {p}") for p in (101, 102, 103))
    baseline = f"<MedlineCitationSet>{citations}</MedlineCitationSet>"
    (root / "pubmed/pubmed25n0001.xml.gz").write_bytes(gzip.compress(baseline.encode()))
    update = (
        f"<PubmedArticleSet><PubmedArticle>{_citation(102, 'revised')}</PubmedArticle>"
        '<DeleteCitation><PMID Version="1">103</PMID></DeleteCitation></PubmedArticleSet>'
    )
    (root / "pubmed/pubmed25n0002.xml.gz").write_bytes(gzip.compress(update.encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for n in (1, 2):
            xml = (
                f'<article><front><article-meta><article-id pub-id-type="pmc">{n}</article-id>'
                f"<title-group><article-title>Article {n}</article-title></title-group></article-meta>"
                f"</front><body><p>Body of article {n}. {SENTENCE * 4}</p></body></article>"
            ).encode()
            info = tarfile.TarInfo(f"PMC00/PMC{n}.nxml")
            info.size = len(xml)
            tar.addfile(info, io.BytesIO(xml))
    (root / "oa_comm.PMC00.tar.gz").write_bytes(buf.getvalue())
    (root / "guide.txt").write_bytes(("Résumé des thérapeutiques, fièvre élevée. " * 10).encode("latin-1"))
    inputs = [
        {"glob": "pubmed/*.xml.gz", "source": "pubmed", "format": "medline"},
        {"glob": "*.tar.gz", "source": "pmc"},
        {"glob": "*.txt", "source": "guidelines"},
    ]
    result = _curate(root, tmp_path / "out", inputs)
    assert result.ok, result.problems
    docs = {d["id"]: d for d in pq.read_table(result.docs_dir).to_pylist()}
    assert set(docs) == {"101", "102", "PMC1", "PMC2", "guide"}
    assert "revised" in docs["102"]["text"] and docs["102"]["input_file"].endswith("pubmed25n0002.xml.gz")
    assert docs["PMC1"]["locator"] == "oa_comm.PMC00.tar.gz!PMC00/PMC1.nxml"
    assert docs["guide"]["text"].startswith("Résumé des thérapeutiques, fièvre élevée.")
    rejects = sorted((r["id"], r["reason"]) for r in read_rejects(result.out_dir / "accounting").to_pylist())
    assert rejects == [("102", "superseded_by_update"), ("103", "deleted_by_update")]
