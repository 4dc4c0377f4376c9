"""Suffix-array substring dedup: repeats go on word boundaries, the first occurrence stays, UTF-8
survives, thresholds hold, and real PMC articles come out without seam fragments."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinray.data import dedup_substring_cross as cross
from clinray.data.dedup_substring import (
    MEMORY_BYTES_PER_INPUT_BYTE,
    SubstringConfig,
    concat_docs,
    remove_repeats,
    repeat_mask,
    word_spans,
)
from clinray.data.dedup_substring_shards import (
    MAX_SHARDS,
    REDUCER_BYTES,
    boundaries_from_sample,
    build_shard,
    concat_column,
    partition_count,
    sample_block,
    shard_count,
    split_block,
    suffix_array_memory,
)
from clinray.data.text import word_tokens

PASSAGE = (
    "This passage about the émigré café and its naïveté is repeated verbatim across several documents "
    "of the corpus, long enough for the hundred byte pass."
)


def _filler(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(
        f"{rng.choice(['alpha', 'beta', 'gamma', 'delta'])}{rng.randint(0, 99999)}" for _ in range(n)
    )


def test_repeats_removed_first_occurrence_kept():
    texts = [
        _filler(0) + " " + PASSAGE + " end",
        PASSAGE + " " + _filler(1),
        _filler(2),
        _filler(3) + " " + PASSAGE,
    ]
    out, removed = remove_repeats(texts, min_len=100)
    assert PASSAGE in out[0] and removed[0] == 0
    assert PASSAGE not in out[1] and PASSAGE not in out[3]
    assert out[2] == texts[2] and removed[2] == 0
    assert removed[1] >= len(PASSAGE.encode()) and removed[3] >= len(PASSAGE.encode())
    # the filler around each removed span survives intact, words not merged
    assert out[1] == _filler(1)
    assert out[3] == _filler(3)


def test_remove_all_mode_removes_first_copy_too():
    texts = [_filler(0) + " " + PASSAGE, _filler(1) + " " + PASSAGE]
    out, removed = remove_repeats(texts, min_len=100, keep_first=False)
    assert all(PASSAGE not in o for o in out)
    assert all(r >= len(PASSAGE.encode()) for r in removed)


def test_threshold_is_respected():
    short = PASSAGE[:60]  # 60 bytes: below a 100-byte threshold, above a 50-byte one
    texts = [_filler(0) + " " + short + " " + _filler(5), _filler(1) + " " + short + " " + _filler(6)]
    assert remove_repeats(texts, min_len=100)[1] == [0, 0]
    out, removed = remove_repeats(texts, min_len=50)
    assert removed[0] == 0 and removed[1] >= 50 and short not in out[1]


def test_no_match_crosses_document_boundary():
    # doc 0 ends with the first half of a string, doc 1 starts with the second half: not a repeat.
    a, b = "x" * 30 + PASSAGE[:70], PASSAGE[70:] + "y" * 30
    texts = [a, b, PASSAGE]
    _, removed = remove_repeats(texts, min_len=100)
    assert removed[2] == 0


def _spans(text: str, covered: str, *, min_len: int = 1) -> list[str]:
    """The removed spans of ``text`` when the bytes of its substring ``covered`` are marked."""
    data = np.frombuffer(text.encode(), dtype=np.uint8).copy()
    cover = np.zeros(len(data), dtype=bool)
    at = text.encode().index(covered.encode())
    cover[at : at + len(covered.encode())] = True
    starts, ends, _ = word_spans(data, cover, min_len=min_len)
    return [data[s:e].tobytes().decode() for s, e in zip(starts, ends)]


def test_spans_shrink_inward_to_whole_words():
    assert _spans("alpha beta gamma delta", "pha beta gam") == [" beta "]
    assert _spans("alpha beta gamma delta", "alpha beta ") == ["alpha beta "]  # edges on boundaries stay
    assert _spans("alpha beta, gamma.", "a beta, gamma.") == [" beta, gamma."]  # punctuation goes with it
    assert _spans("alpha beta gamma", "ha beta gam", min_len=7) == []  # " beta " is under 7 bytes: kept
    assert _spans("a naïveté b", "\u00efvet") == []  # inside one word: nothing
    assert _spans("a naïveté b", "ïveté b") == [" b"]  # the cut word stays whole, never half a character
    assert _spans("café naïveté crème brûlée", "é naïveté crè") == [" naïveté "]


def test_span_under_threshold_after_shrinking_is_kept():
    shared = "abc def ghi jkl mno"
    texts = [f"111q{shared}q222 one two", f"333q{shared}q444 three four"]
    # "q" + shared + "q" repeats (21 bytes), but its edges cut "qabc" and "mnoq": 13 whole-word bytes remain
    assert remove_repeats(texts, min_len=19) == (texts, [0, 0])
    out, removed = remove_repeats(texts, min_len=10)
    assert out[1] == "333qabc mnoq444 three four" and removed[1] == len(texts[1]) - len(out[1])


def test_seam_is_a_newline_when_the_removed_text_held_one():
    passage = "First repeated line of the passage.\nSecond repeated line of the passage."
    texts = [f"Intro one; {passage} Outro one.", f"Preface two: {passage} End two."]
    out, removed = remove_repeats(texts, min_len=40)
    assert out == [texts[0], "Preface two:\nEnd two."]
    assert removed == [0, len(texts[1].encode()) - len(out[1].encode())]


def test_removed_bytes_leave_valid_utf8_in_random_multibyte_text():
    rng = random.Random(7)
    alphabet = "aéü€中文😀 "
    base = "".join(rng.choice(alphabet) for _ in range(300))
    texts = ["".join(rng.choice(alphabet) for _ in range(50)) + base[i * 7 :] for i in range(5)]
    out, removed = remove_repeats(texts, min_len=40)
    assert removed[0] == 0 and sum(removed) > 0
    for o in out:
        o.encode("utf-8")  # strict: no lone surrogates, no split characters


def test_mask_matches_brute_force_on_small_input():
    rng = random.Random(3)
    texts = ["".join(rng.choice("ab") for _ in range(rng.randint(5, 40))) for _ in range(6)]
    data, starts = concat_docs(texts)
    n, min_len = len(data), 6
    mask = repeat_mask(data, min_len=min_len)
    raw = data.tobytes()
    expected = np.zeros(n, dtype=bool)
    for q in range(n):
        sub = raw[q : q + min_len]
        if len(sub) == min_len and 0xFF not in sub and raw.find(sub) < q:
            expected[q : q + min_len] = True
    assert mask.tolist() == expected.tolist()


def test_config_errors_are_actionable():
    with pytest.raises(ValueError, match="thresholds"):
        SubstringConfig(thresholds=[])
    with pytest.raises(ValueError, match="shard_bytes"):
        SubstringConfig(shard_bytes=10)
    with pytest.raises(ValueError, match="min_shard_bytes"):
        SubstringConfig(shard_bytes=4096, min_shard_bytes=8192)
    with pytest.raises(ValueError, match="num_shards"):
        SubstringConfig(num_shards=-1)


# --- whole words on realistic text ----------------------------------------------------------------------

_VOCAB_TEXT = """
patient presents with fever cough dyspnea chest pain abdominal tenderness hypertension diabetes mellitus
serum creatinine elevated decreased normal range biopsy reveals granulomas lymphocytes neutrophils
treatment therapy first-line dose daily weekly months years history smoking alcohol examination shows
bilateral crackles murmur heard apex radiating axilla edema ankles jaundice sclera hepatomegaly palpable
spleen laboratory studies hemoglobin platelets leukocyte count sodium potassium bicarbonate glucose
temperature pulse respirations oxygen saturation room air blood pressure 98% 17/min 37°C 120/80 mmHg
Sjögren naïve café β-blocker warfarin heparin aspirin metformin insulin statin cohort trial randomized
placebo outcome mortality survival ratio confidence interval significant association incidence prevalence
women men children adults elderly infants clinic hospital emergency department admitted discharged
visual quality average fortunately however therefore although because whereas moreover
"""
_WORDS = sorted(set(_VOCAB_TEXT.split()))
# Keep only words none of whose tokens is part of another token: then any fragment of a word is no word
# of the vocabulary, and "every output token is an input token" detects every cut inside a word.
_TOKENS = {t for w in _WORDS for t in word_tokens(w)}
WORDS = [w for w in _WORDS if not any(t != u and t in u for t in word_tokens(w) for u in _TOKENS)]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
    for i in range(1, len(words) - 1):
        if rng.random() < 0.12:
            words[i] += rng.choice([",", ";", ":", " —", " (Table 2)"])
    return words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice([".", ".", ".", "?", "!"])


def _paragraphs(rng: random.Random, num_sentences: int) -> str:
    parts = [_sentence(rng)]
    for _ in range(num_sentences - 1):
        parts += [rng.choice([" ", " ", " ", "\n", "\n\n"]), _sentence(rng)]
    return "".join(parts)


def _planted_corpus(seed: int, min_len: int, num_docs: int, num_passages: int):
    """Documents of vocabulary sentences with passages (>= ``min_len`` bytes) planted in several of them."""
    rng = random.Random(seed)
    docs = [[_paragraphs(rng, rng.randint(1, 8))] for _ in range(num_docs)]
    passages = []
    for _ in range(num_passages):
        passage = _paragraphs(rng, 1)
        while len(passage.encode()) < min_len:  # no slack needed: a passage starts and ends on a boundary
            passage += " " + _sentence(rng)
        holders = sorted(rng.sample(range(num_docs), rng.randint(2, min(4, num_docs))))
        for d in holders:  # a fresh sentence after each copy: two passages are never adjacent
            docs[d].insert(rng.randint(0, len(docs[d])), f"{passage} {_sentence(rng)}")
        passages.append((passage, holders))
    texts = [rng.choice([" ", "\n"]).join(parts) for parts in docs]
    return texts, passages


def _squash_tokens(text: str) -> str:
    return " " + " ".join(word_tokens(text)) + " "


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    min_len=st.sampled_from([50, 80, 100, 160, 400]),
    num_docs=st.integers(2, 7),
    num_passages=st.integers(1, 4),
)
def test_removal_keeps_whole_words_and_removes_every_planted_repeat(seed, min_len, num_docs, num_passages):
    texts, passages = _planted_corpus(seed, min_len, num_docs, num_passages)
    out, removed = remove_repeats(texts, min_len=min_len)
    for before, after, num in zip(texts, out, removed):
        assert set(word_tokens(after)) <= set(word_tokens(before))  # no fragment of a longer word
        assert num == len(before.encode()) - len(after.encode())
    for passage, holders in passages:
        first, *later = holders
        assert passage in out[first]
        for d in later:
            assert _squash_tokens(passage) not in _squash_tokens(out[d]), (passage, out[d])


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(token in it for token in part)


def _pmc_texts(shared_data: Path) -> list[str]:
    """The real PMC articles through the JATS reader and normalization, in id order."""
    from clinray.data.normalize import normalize_document_text
    from clinray.data.readers import InputSpec, ReadersConfig, parse_file

    spec = InputSpec(glob="*.nxml", source="pmc", domain="clinical", format="jats")
    rows = [
        r
        for p in sorted((shared_data / "pmc").glob("*.nxml"))
        for r in parse_file(str(p), spec=spec, cfg=ReadersConfig())
    ]
    assert len(rows) == 3 and not any(r["_reason"] for r in rows)
    return [normalize_document_text(r["text"]) for r in sorted(rows, key=lambda r: r["id"])]


@pytest.mark.parametrize("thresholds", [(400, 100), (400, 100, 40, 30)])
def test_real_pmc_articles_come_out_without_seam_fragments(shared_data, thresholds):
    """Abstract sentences repeated in the body are removed; what is left is whole words of the input.

    The paper's 400/100 passes remove one span from these three articles; the 40- and 30-byte passes
    remove many more (common phrases), so the seams are exercised on real text.
    """
    texts = _pmc_texts(shared_data)
    out, total = list(texts), 0
    for min_len in thresholds:
        out, removed = remove_repeats(out, min_len=min_len)
        total += sum(removed)
    assert total == sum(len(t.encode()) for t in texts) - sum(len(t.encode()) for t in out)
    assert total >= (100 if len(thresholds) == 2 else 3000)
    for before, after in zip(texts, out):
        words_before, words_after = word_tokens(before), word_tokens(after)
        assert set(words_after) <= set(words_before), sorted(set(words_after) - set(words_before))
        assert _is_subsequence(words_after, words_before)


# --- across shards --------------------------------------------------------------------------------------


def _cuts(rng: random.Random, num_docs: int) -> list[tuple[int, int]]:
    """Random contiguous shards (1 to ``num_docs``) of ``num_docs`` documents."""
    num = rng.randint(1, num_docs)
    bounds = [0, *sorted(rng.sample(range(1, num_docs), num - 1)), num_docs]
    return list(zip(bounds[:-1], bounds[1:]))


def _sharded_cover(texts: list[str], cuts, *, min_len: int, keep_first: bool, num_parts: int) -> set[int]:
    """Marked bytes (positions in the whole corpus's concatenation): each shard's suffix array plus its
    cross marks, as the stage computes them."""
    shards = [concat_docs(texts[a:b])[0] for a, b in cuts]
    extra = cross.cross_marks_local(shards, min_len=min_len, keep_first=keep_first, num_parts=num_parts)
    marked, offset = set(), 0
    for data, marks in zip(shards, extra):
        cover = repeat_mask(data, min_len=min_len, keep_first=keep_first, extra_runs=marks)
        marked |= {int(q) + offset for q in np.flatnonzero(cover)}
        offset += len(data) + 1
    return marked


def _brute_cover(texts: list[str], min_len: int, keep_first: bool) -> set[int]:
    raw = concat_docs(texts)[0].tobytes()
    cover = set()
    for q in range(len(raw) - min_len + 1):
        sub = raw[q : q + min_len]
        if 0xFF in sub:
            continue
        first = raw.find(sub)
        if first < q or (not keep_first and raw.find(sub, q + 1) >= 0):
            cover |= set(range(q, q + min_len))
    return cover


@pytest.mark.parametrize("collide", [False, True])
def test_cross_shard_marks_equal_a_brute_force_scan_of_the_whole_corpus(monkeypatch, collide):
    """Byte for byte, for any shard cut: a byte is marked iff it lies in an L-gram that occurs earlier in
    the corpus (``remove_all``: anywhere else). With ``collide`` every L-gram hash is cut to 2 bits, so
    almost every group is a collision and the exact regrouping on bytes decides."""
    if collide:
        entries = cross._lgram_entries
        monkeypatch.setattr(
            cross, "_lgram_entries", lambda rec, n: (lambda e: (e[0] & np.uint64(3), *e[1:]))(entries(rec, n))
        )
    rng = random.Random(11)
    for _ in range(50):
        alphabet = rng.choice(["ab", "abc", "the cat sat. "])
        base = "".join(rng.choice(alphabet) for _ in range(120))
        texts = []
        for _ in range(rng.randint(2, 9)):
            a = rng.randint(0, 100)
            fresh = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            texts.append(rng.choice([base[a : a + rng.randint(0, 60)] + fresh, fresh]))
        min_len, keep_first = rng.randint(1, 30), rng.random() < 0.7
        cuts = _cuts(rng, len(texts))
        parts = rng.randint(1, 4)
        got = _sharded_cover(texts, cuts, min_len=min_len, keep_first=keep_first, num_parts=parts)
        assert got == _brute_cover(texts, min_len, keep_first), (texts, cuts, min_len, keep_first)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    min_len=st.sampled_from([50, 100, 160, 400]),
    num_docs=st.integers(2, 14),
    num_passages=st.integers(1, 5),
)
def test_sharded_removal_equals_one_suffix_array_over_the_corpus(seed, min_len, num_docs, num_passages):
    """The stage's result does not depend on the shard count: every shard's texts, with its cross marks,
    come out exactly as one suffix array over the whole corpus leaves them."""
    texts, _ = _planted_corpus(seed, min_len, num_docs, num_passages)
    whole, removed = remove_repeats(texts, min_len=min_len)
    cuts = _cuts(random.Random(seed), num_docs)
    shards = [concat_docs(texts[a:b])[0] for a, b in cuts]
    extra = cross.cross_marks_local(shards, min_len=min_len, num_parts=1 + seed % 3)
    out, num = [], []
    for (a, b), marks in zip(cuts, extra):
        o, r = remove_repeats(texts[a:b], min_len=min_len, extra_runs=marks)
        out += o
        num += r
    assert out == whole and num == removed


def test_winnowing_charges_every_copy_of_an_lgram_at_the_same_offset():
    """The property the cross-shard method rests on: an L-gram, whatever surrounds it, is charged to a
    selected fingerprint at the same offset inside it, so two shards holding it share that hash."""
    rng = random.Random(5)
    for min_len in (6, 40, 100):
        t, _ = cross.window_params(min_len)
        gram = bytes(rng.choice(b"abcd ") for _ in range(min_len))
        common = None
        for _ in range(5):
            left = bytes(rng.choice(b"abcd ") for _ in range(rng.randint(0, 50)))
            right = bytes(rng.choice(b"abcd ") for _ in range(rng.randint(0, 50)))
            fp = cross.winnow(np.frombuffer(left + gram + right, dtype=np.uint8), min_len)
            j = len(left) - (fp.pos - (t - 1))  # the L-gram's index among each fingerprint's windows
            charged = {int(q) - len(left) for q in fp.pos[(fp.jlo <= j) & (j <= fp.jhi)]}
            assert charged, min_len
            common = charged if common is None else common & charged
        assert common, min_len


def test_concat_column_matches_concat_docs():
    texts = ["alpha", "", "naïve café €", None, "x" * 300]
    col = pa.chunked_array([pa.array(texts[:2]), pa.array(texts[2:])])
    assert concat_column(col).tobytes() == concat_docs([t or "" for t in texts])[0].tobytes()
    big = pa.chunked_array([pa.array(texts, type=pa.large_string())])
    assert concat_column(big).tobytes() == concat_column(col).tobytes()
    assert len(concat_column(pa.chunked_array([], type=pa.string()))) == 0


def test_shards_are_cut_by_text_bytes_and_stay_contiguous_id_ranges():
    """Ids ``a-*`` hold 100-byte documents, ``z-*`` 10 kB ones: a cut by rows would give the last shard
    almost all the text; the byte-weighted sample gives each shard its share, in id order."""
    rows = [{"id": f"a-{i:05d}", "text": "w" * 100} for i in range(3000)]
    rows += [{"id": f"z-{i:05d}", "text": "v " * 5000} for i in range(100)]
    random.Random(0).shuffle(rows)
    blocks = [pa.Table.from_pylist(rows[i : i + 700]) for i in range(0, len(rows), 700)]
    total = 3000 * 100 + 100 * 10_000
    sampled = [sample_block(b, step=total // 5000, seed=i) for i, b in enumerate(blocks)]
    assert sum(n for n, _ in sampled) == total
    bounds = boundaries_from_sample([i for _, ids in sampled for i in ids], 4)
    assert len(bounds) == 3
    pieces = [split_block(b, bounds) for b in blocks]
    shards = [build_shard(*[p[s] for p in pieces]) for s in range(4)]
    sizes = [info["text_bytes"] for _, info in shards]
    rows_per = [info["rows"] for _, info in shards]
    assert sum(sizes) == total and sum(rows_per) == len(rows)
    assert max(sizes) < 1.2 * total / 4, sizes
    assert max(rows_per) > 5 * min(rows_per), rows_per  # rows are far from even: bytes are
    ids = [t.column("id").to_pylist() for t, _ in shards]
    assert all(i == sorted(i) for i in ids)
    assert all(a[-1] < b[0] for a, b in zip(ids[:-1], ids[1:]))


def test_shard_count_follows_the_data_and_the_cluster():
    cfg, MB = SubstringConfig(), 1_000_000
    assert shard_count(1 * MB, cfg, cpus=8) == 1  # under min_shard_bytes: one task is cheapest
    assert shard_count(50 * MB, cfg, cpus=8) == 8  # every core gets a shard
    assert shard_count(50 * MB, cfg, cpus=2) == 6  # ceil(50 MB / 8 MiB) > the CPUs
    assert shard_count(200 * MB, cfg, cpus=2) == 24  # the shard size stays: the count follows the data
    # a 256 MiB node fits a 6.7 MB shard (32 B/B, 80%): more, smaller shards
    assert shard_count(200 * MB, cfg, cpus=2, node_memory=256 << 20) == 30
    # past MAX_SHARDS x shard_bytes the shards grow instead (200 GB: 2,048 shards of ~98 MB)
    assert shard_count(200_000 * MB, cfg, cpus=600) == MAX_SHARDS == 2048
    assert shard_count(50 * MB, SubstringConfig(num_shards=3), cpus=8) == 3  # the override wins


def test_shuffle_partitions_keep_pieces_large_and_reducers_small():
    MB = 1_000_000
    assert partition_count(1 * MB, 2) == 1  # small rounds: one reducer, no piece in the driver's heap
    assert partition_count(460 * MB, 24) == 18  # tiny world, scale 160: pieces of about 1 MiB
    assert partition_count(30 * MB, 100) == 1
    # 123 GB of hashes over 2,048 shards: pieces of 1 MiB would mean 57 reducers of 2 GB each; the
    # reducer cap wins (459 reducers of 256 MiB, pieces of ~131 KB, still above Ray's inline size)
    parts = partition_count(123_000 * MB, MAX_SHARDS)
    assert parts == 459 and 123_000 * MB / parts <= REDUCER_BYTES
    assert 123_000 * MB / (parts * MAX_SHARDS) > 100_000


_MEASURE = """
import json, random, sys, tempfile
sys.path.insert(0, {tests!r})
from test_substring import _paragraphs
from clinray.data.dedup_substring import SubstringConfig, SubstringStage
from clinray.data.dedup_substring_shards import mark_shard
from clinray.data.stage import rows_to_table

rng = random.Random(0)
passages = [_paragraphs(rng, 3) for _ in range(40)]
rows, size = [], 0
while size < {size}:
    text = _paragraphs(rng, rng.randint(5, 40))
    if rng.random() < 0.5:
        text += " " + rng.choice(passages)
    rows.append({{"id": f"d{{len(rows):07d}}", "text": text, "source": "s", "input_file": "f"}})
    size += len(text.encode())
table = rows_to_table(rows)
del rows
stage = SubstringStage(SubstringConfig(thresholds=[100]), sink_root=tempfile.mkdtemp())
mark_shard(stage, rows_to_table([{{"id": "w", "text": "warm up " * 40}}]), 0, None)  # imports, first allocations
_, info = mark_shard(stage, table, 0, None)
print(json.dumps({{"text_bytes": size, **info}}))
"""


def test_suffix_array_task_memory_request_covers_its_measured_peak(tmp_path):
    """A 4 MB shard's suffix-array pass in a fresh process: its peak RSS (above the process's size once
    the shard is loaded) fits in the factor the planner asks Ray for, and is not far below it."""
    import json
    import subprocess
    import sys

    script = _MEASURE.format(tests=str(Path(__file__).parent), size=4_000_000)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    num, peak = info["text_bytes"], info["peak_rss_bytes"]
    print(f"suffix-array pass of {num / 1e6:.1f} MB: peak {peak / 1e6:.0f} MB = {peak / num:.1f} B/B")
    assert info["bytes_in"] == num
    assert peak <= MEMORY_BYTES_PER_INPUT_BYTE * num <= suffix_array_memory(num)
    assert peak >= MEMORY_BYTES_PER_INPUT_BYTE * num / 3  # the factor is a measurement, not a guess
