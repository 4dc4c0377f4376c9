"""Sort-based set operations on numpy arrays.

numpy 2.4's ``np.unique`` without ``return_counts`` takes a hash-table path that is 10-100x slower
than sorting for integer arrays (measured here: 3.9 s against 0.05 s for 3.7M uint64; 55 against 5 us
for 800 uint32). These helpers give the same results by sorting; the dedup stages use them on their
hot paths.
"""

from __future__ import annotations

import numpy as np


def _starts(s: np.ndarray) -> np.ndarray:
    """Where each run of equal values of the sorted ``s`` starts (a boolean mask)."""
    new = np.empty(len(s), dtype=bool)
    if len(s):
        new[0] = True
        np.not_equal(s[1:], s[:-1], out=new[1:])
    return new


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique(x)`` for a 1-d array: its distinct values, sorted."""
    s = np.sort(x)
    return s[_starts(s)]


def unique_first_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_index=True, return_inverse=True)[1:]`` for a 1-d array: the index of the
    first occurrence of each distinct value (in sorted value order) and each element's value number."""
    order = np.argsort(x, kind="stable")
    new = _starts(x[order])
    inverse = np.empty(len(x), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse
