"""The toy Table 2: accuracy of base, F, N, P, P+F and P+N, with intervals and the paper's ordering in words.

The paper's claims (Table 2) are comparisons: continued pretraining then instruction tuning beats
instruction tuning alone (P+F > F), NEFTune helps (N vs F, P+N vs P+F). On the tiny world each test
set has 100 questions, so a 95% interval is about +-9 points: this module says for each comparison
whether the ordering held and whether the gap is beyond that noise (Wilson intervals per row, a
two-proportion z-test per pair), rather than reading a 3-point difference as a finding.
"""

from __future__ import annotations

import math

__all__ = ["ROWS", "COMPARISONS", "wilson", "two_proportion_z", "compare", "table2_markdown"]

#: The rows of the toy Table 2, in the paper's order.
ROWS = ("base", "F", "N", "P", "P+F", "P+N")
#: (higher in the paper, lower in the paper, what the comparison tests).
COMPARISONS = (
    ("P+F", "F", "continued pretraining before instruction tuning"),
    ("N", "F", "NEFTune on the starting model"),
    ("P+N", "P+F", "NEFTune on the pretrained model"),
)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` (0-1) over ``n`` trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z(p1: float, p2: float, n: int) -> float:
    """z of the difference of two accuracies over the same ``n`` questions (pooled, unpaired)."""
    pooled = (p1 + p2) / 2
    se = math.sqrt(max(pooled * (1 - pooled) * 2 / n, 1e-12))
    return (p1 - p2) / se


def compare(acc: dict[str, float | None], n: int) -> list[str]:
    """One sentence per comparison of :data:`COMPARISONS` (accuracies in %, ``n`` questions)."""
    lines = []
    for hi, lo, what in COMPARISONS:
        a, b = acc.get(hi), acc.get(lo)
        if a is None or b is None:
            lines.append(f"{hi} vs {lo} ({what}): not measured.")
            continue
        z = two_proportion_z(a / 100, b / 100, n)
        gap = a - b
        if abs(z) < 1.96:
            verdict = f"within the noise (|z| = {abs(z):.1f} < 1.96 over {n} questions): " + (
                "the ordering points the paper's way but is not shown" if gap > 0 else "no ordering shown"
            )
        elif gap > 0:
            verdict = f"the paper's ordering holds, beyond the noise (z = {z:.1f})"
        else:
            verdict = f"the paper's ordering is reversed, beyond the noise (z = {z:.1f})"
        lines.append(f"{hi} vs {lo} ({what}): {a:.1f}% vs {b:.1f}% ({gap:+.1f} points); {verdict}.")
    return lines


def table2_markdown(acc: dict[str, float | None], n: int, *, column: str) -> str:
    """The rows with their accuracy and 95% Wilson interval on one column."""
    lines = [f"| model | {column} (%) | 95% interval |", "|---|---|---|"]
    for row in ROWS:
        value = acc.get(row)
        if value is None:
            lines.append(f"| {row} | - | - |")
            continue
        lo, hi = wilson(value / 100, n)
        lines.append(f"| {row} | {value:.1f} | [{100 * lo:.0f}, {100 * hi:.0f}] |")
    return "\n".join(lines) + "\n"
