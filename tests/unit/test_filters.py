"""Filters, normalization, exact dedup and the stage accounting contract (no Ray: the UDFs are called
directly on Arrow batches, as Ray Data's workers call them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinray.config import ConfigError, load
from clinray.data.dedup_exact import (
    DedupBlock,
    ExactDedupConfig,
    add_hash,
    content_hash,
    mark_duplicates,
    num_partitions,
)
from clinray.data.filters import (
    LengthFilter,
    LengthFilterConfig,
    PIIFilter,
    PIIFilterConfig,
    find_pii,
)
from clinray.data.normalize import Normalize, NormalizeConfig, normalize_document_text
from clinray.data.pipeline import CurateConfig
from clinray.data.report import check_identities
from clinray.data.stage import WORK_SCHEMA, Filter, collect_stats, read_rejects, rows_to_table

ROOT = Path(__file__).resolve().parents[2]
WORDS = " ".join(f"word{i}" for i in range(30))


def batch(*texts, sources=None, ids=None):
    rows = [
        {
            "id": (ids or [f"d{i}" for i in range(len(texts))])[i],
            "text": t,
            "source": (sources or ["s"] * len(texts))[i],
            "domain": "clinical",
            "format": "text",
            "metadata": "{}",
            "input_file": f"/in/f{i}.txt",
            "locator": None,
        }
        for i, t in enumerate(texts)
    ]
    return rows_to_table(rows)


def test_length_filter_counts_and_rejects(tmp_path):
    f = LengthFilter(LengthFilterConfig(min_words=20, min_chars=50), sink_root=tmp_path)
    out = f(batch(WORDS, "too short", "x" * 60, WORDS + " more"))
    assert out.schema == WORK_SCHEMA and out.column("id").to_pylist() == ["d0", "d3"]
    [stats] = collect_stats(tmp_path).values()
    assert (stats.stage, stats.num_rows_in, stats.num_rows_out) == ("length_filter", 4, 2)
    assert stats.dropped == {"too_few_chars": 1, "too_few_words": 1} and stats.balanced()
    assert stats.num_bytes_in == sum(len(t) for t in (WORDS, "too short", "x" * 60, WORDS + " more"))
    rejects = read_rejects(tmp_path).to_pylist()
    assert {(r["id"], r["reason"], r["stage"], r["input_file"]) for r in rejects} == {
        ("d1", "too_few_chars", "length_filter", "/in/f1.txt"),
        ("d2", "too_few_words", "length_filter", "/in/f2.txt"),
    }


def test_a_retried_batch_is_not_counted_twice(tmp_path):
    f = LengthFilter(LengthFilterConfig(min_words=20), sink_root=tmp_path)
    data = batch(WORDS, "short")
    f(data)
    f(data)  # Ray retried the task: same rows, same files
    [stats] = collect_stats(tmp_path).values()
    assert (stats.num_rows_in, stats.num_batches) == (2, 1)
    assert read_rejects(tmp_path).num_rows == 1


class VowelFilter(Filter):
    name = "vowels"

    def keep(self, row):
        return (True, None) if any(c in "aeiou" for c in row["text"]) else (False, "no_vowel")


def test_filter_base_contract(tmp_path):
    out = VowelFilter(sink_root=tmp_path)(batch("rhythm", "apple", "crwth"))
    assert out.column("text").to_pylist() == ["apple"]
    assert collect_stats(tmp_path, order=["vowels", "later"])["vowels"].dropped == {"no_vowel": 2}
    assert collect_stats(tmp_path, order=["vowels", "later"])["later"].num_rows_in == 0


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Contact jane.doe@hospital.org for the results.", "email"),
        ("Call the ward at (555) 123-4567 tonight.", "phone"),
        ("Call +1 555.123.4567.", "phone"),
        ("SSN 123-45-6789 on file.", "ssn"),
        ("Patient MRN: 00123456 admitted.", "mrn"),
        ("Medical record number 4455667 was used.", "mrn"),
        ("DOB: 03/14/1962, male.", "dob"),
        ("Date of birth 1962-03-14.", "dob"),
        ("born on March 3, 1954 in Ohio", "dob"),
    ],
)
def test_pii_kinds_found(text, kind):
    assert kind in find_pii(text)


@pytest.mark.parametrize(
    "text",
    [
        "Give 5-10 mg twice daily for 3-4 weeks; BP 120/80 mmHg; HbA1c 7.2%.",
        "In 1962 the trial enrolled 1234 patients; follow-up at 12-24 months.",
        "Reference ranges 135-145 mmol/L and 3.5-5.0 mmol/L; ISBN 978-3-16-148410-0.",
        "The study (n = 2021) ran from 2019-2021 at 3 sites.",
        "Refer on 03/14/2020 if symptoms persist.",  # a date without a birth label is not a DOB
    ],
)
def test_pii_clinical_numbers_are_not_pii(text):
    assert find_pii(text) == {}


def test_pii_drop_and_redact(tmp_path):
    texts = (
        "Email me at a.b@c.com please. " + WORDS,
        "Clean text " + WORDS,
        "SSN 123-45-6789 and DOB: 1/2/1960",
    )
    dropped = PIIFilter(PIIFilterConfig(mode="drop"), sink_root=tmp_path / "drop")(batch(*texts))
    assert dropped.column("id").to_pylist() == ["d1"]
    assert collect_stats(tmp_path / "drop")["pii_filter"].dropped == {"pii_email": 1, "pii_ssn": 1}
    redacted = PIIFilter(PIIFilterConfig(mode="redact"), sink_root=tmp_path / "red")(batch(*texts))
    got = redacted.column("text").to_pylist()
    assert (
        got[0].startswith("Email me at [EMAIL] please.") and got[2] == "SSN [SSN] and DOB: [DOB]"[:0] + got[2]
    )
    assert "123-45-6789" not in got[2] and "[SSN]" in got[2] and "[DOB]" in got[2]
    stats = collect_stats(tmp_path / "red")["pii_filter"]
    assert (
        stats.num_rows_out == 3
        and stats.extra["num_docs_redacted"] == 2
        and stats.extra["num_redacted_ssn"] == 1
    )
    with pytest.raises(ValueError, match="unknown kinds"):
        PIIFilterConfig(kinds=["email", "passport"])


def test_normalize_stage(tmp_path):
    assert (
        normalize_document_text("Cafe\u0301 &amp; &#233;t&eacute;\x07  \r\n\n\n\nend")
        == "Caf\u00e9 & \u00e9t\u00e9\n\nend"
    )
    assert normalize_document_text("AT&amp;amp;T") == "AT&T"  # double-escaped input
    assert normalize_document_text("a &amp; b", decode_entities=False) == "a &amp; b"
    out = Normalize(NormalizeConfig(max_chars=100), sink_root=tmp_path)(
        batch("  ok\u00a0text ", " \x00\x01 ", "y" * 101)
    )
    assert out.column("text").to_pylist() == ["ok text"]
    assert collect_stats(tmp_path)["normalize"].dropped == {"empty_text": 1, "text_too_long": 1}


def test_exact_dedup_keep_one_rule(tmp_path):
    assert content_hash("a  b\nc") == content_hash(" a b c ") != content_hash("a b d")
    texts = ["same text", "same  text", "other", "same text\n", "other"]
    sources = ["articles", "pmc", "slimpajama", "unknown", "slimpajama"]
    ids = ["z1", "y9", "b2", "a0", "a1"]
    table = add_hash(batch(*texts, sources=sources, ids=ids))
    marked = mark_duplicates(table.to_pylist(), source_priority=["pmc", "pubmed", "articles", "slimpajama"])
    kept = [r["id"] for r in marked if not r["_reason"]]
    assert kept == ["y9", "a1"]  # pmc beats articles beats unknown; same source: smallest id
    assert next(r for r in marked if r["id"] == "a0")["_detail"] == "duplicate of y9 (pmc)"
    out = DedupBlock(ExactDedupConfig(), sink_root=tmp_path)(table)
    assert sorted(out.column("id").to_pylist()) == ["a1", "y9"] and "_hash" not in out.column_names
    assert collect_stats(tmp_path)["exact_dedup"].dropped == {"exact_duplicate": 3}


def test_exact_dedup_partitions_follow_the_input():
    MB = 1 << 20
    cfg = ExactDedupConfig()
    assert num_partitions(cfg, 1 * MB, cpus=1) == 1
    assert num_partitions(cfg, 1 * MB, cpus=8) == 8  # every core gets a partition
    assert num_partitions(cfg, 222 * MB, cpus=2) == 14  # world scale 160: 16 MiB of input files each
    assert num_partitions(ExactDedupConfig(num_partitions=2000), 1 * MB, cpus=2) == 2000  # the override wins
    with pytest.raises(ValueError, match="num_partitions"):
        ExactDedupConfig(num_partitions=-1)


def test_identity_check_reports_violations(tmp_path):
    VowelFilter(sink_root=tmp_path)(batch("apple", "xyz"))
    stats = collect_stats(tmp_path, order=["vowels"])
    assert check_identities(stats) == []
    stats["vowels"].num_rows_out += 1
    assert "vowels: rows in 2 != out 2 + dropped 1" in check_identities(stats)[0]


def test_recipes_load_and_bad_values_are_explained():
    tiny = load(CurateConfig, "tiny/curate")
    assert [i.source for i in tiny.inputs][:2] == ["pmc", "pubmed"]
    paper = load(CurateConfig, "paper/curate")
    assert paper.readers.concurrency > tiny.readers.concurrency
    with pytest.raises(ConfigError, match="domain"):
        load(CurateConfig, None, {"inputs": [{"glob": "*.txt", "source": "x", "domain": "legal"}]})
    with pytest.raises(ConfigError, match="at least one entry in 'inputs'"):
        load(CurateConfig, None, [])
    with pytest.raises(ConfigError, match="did you mean 'min_words'"):
        load(CurateConfig, "tiny/curate", ["length.min_word=3"])
    assert json.loads(json.dumps(tiny.exact_dedup.source_priority))[0] == "pmc"


def test_chained_row_stages_account_like_separate_ones(tmp_path):
    from clinray.data.stage import RowStageChain

    texts = ("  " + WORDS + "  ", "\x00\x01", "tiny text", WORDS + " &amp;")
    separate = tmp_path / "sep"
    mid = Normalize(NormalizeConfig(), sink_root=separate)(batch(*texts))
    out_sep = LengthFilter(LengthFilterConfig(min_words=20), sink_root=separate)(mid)
    chained = tmp_path / "chain"
    stages = [
        Normalize(NormalizeConfig(), sink_root=chained),
        LengthFilter(LengthFilterConfig(), sink_root=chained),
    ]
    out_chain = RowStageChain(stages)(batch(*texts))
    assert out_chain.equals(out_sep) and out_chain.column("text").to_pylist()[1] == WORDS + " &"
    sep_stats, chain_stats = collect_stats(separate), collect_stats(chained)
    for name in ("normalize", "length_filter"):
        a, b = sep_stats[name].to_dict(), chain_stats[name].to_dict()
        for key in ("num_rows_in", "num_rows_out", "num_bytes_in", "num_bytes_out", "dropped"):
            assert a[key] == b[key], (name, key)
    assert read_rejects(chained).num_rows == read_rejects(separate).num_rows == 2


_PIECES = (
    list("ab é\u0301\t\n\r\f\v\u00a0\u2002\u200b\u3000\x00\x07\x85&;#x")
    + list("\x1c\x1f\x7f\x9f\u1680\u2028\u2029\u202f\u205f")
    + ["a b", "\n\n", "cd e\nf"]  # clean prose pieces: the fast path
)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_fast_normalize_equals_the_reference(text):
    from clinray.data import normalize
    from clinray.data import text as reference

    assert normalize.normalize_text(text) == reference.normalize_text(text)
