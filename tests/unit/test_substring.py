"""Suffix-array substring dedup: repeats go on word boundaries, the first occurrence stays, UTF-8
survives, thresholds hold, and real PMC articles come out without seam fragments."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinray.data.dedup_substring import (
    SubstringConfig,
    concat_docs,
    remove_repeats,
    repeat_mask,
    word_spans,
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
