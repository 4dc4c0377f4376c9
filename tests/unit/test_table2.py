"""The toy Table 2's words: an ordering is claimed only beyond the noise of the question count."""

from __future__ import annotations

import pytest

from clinray.eval.table2 import compare, table2_markdown, two_proportion_z, wilson


def test_wilson_matches_the_known_intervals_at_100_questions():
    lo, hi = wilson(0.25, 100)
    assert (round(lo, 2), round(hi, 2)) == (0.18, 0.34)  # ../shared/notes/fidelity.md, Q4
    lo, hi = wilson(0.85, 100)
    assert (round(lo, 2), round(hi, 2)) == (0.77, 0.91)


def test_compare_says_held_reversed_or_noise():
    words = compare({"F": 22.0, "P+F": 71.0, "N": 25.0, "P+N": 50.0}, 100)
    assert "holds, beyond the noise" in words[0]  # P+F vs F: +49 points
    assert "within the noise" in words[1]  # N vs F: +3 points on 100 questions
    assert "reversed, beyond the noise" in words[2]  # P+N 50 vs P+F 71: z = -3.0
    assert two_proportion_z(0.60, 0.71, 100) == pytest.approx(-1.64, abs=0.01)  # 11 points: still noise
    assert "within the noise" in compare({"P+F": 71.0, "P+N": 60.0}, 100)[2]


def test_missing_rows_are_said_not_measured():
    words = compare({"F": 20.0}, 100)
    assert words[0].endswith("not measured.") and "| P+N | - | - |" in table2_markdown(
        {"F": 20.0}, 100, column="MedQA"
    )
