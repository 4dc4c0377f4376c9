"""Suffix-array substring dedup: repeats go, the first occurrence stays, UTF-8 survives, thresholds hold."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clinray.data.dedup_substring import (
    SubstringConfig,
    concat_docs,
    remove_repeats,
    repeat_mask,
    snap_to_characters,
)

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


def test_masks_snap_to_utf8_characters():
    data = np.frombuffer("aé€b".encode(), dtype=np.uint8).copy()  # 1 + 2 + 3 + 1 bytes
    half = np.zeros(len(data), dtype=bool)
    half[2:5] = True  # second byte of é, first two bytes of €
    assert not snap_to_characters(data, half).any()
    whole = np.zeros(len(data), dtype=bool)
    whole[1:6] = True
    assert snap_to_characters(data, whole).tolist() == [False, True, True, True, True, True, False]


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
