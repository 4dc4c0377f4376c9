"""The sort-based set helpers give np.unique's results."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from clinray.data.arrays import sorted_unique, unique_first_inverse

ARRAYS = st.one_of(
    hnp.arrays(np.uint64, st.integers(0, 300), elements=st.integers(0, 20)),
    hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(-(2**62), 2**62)),
    hnp.arrays(np.uint32, st.integers(0, 300), elements=st.integers(0, 2**32 - 1)),
)


@settings(max_examples=200, deadline=None)
@given(ARRAYS)
def test_helpers_equal_np_unique(x):
    assert np.array_equal(sorted_unique(x), np.unique(x))
    assert sorted_unique(x).dtype == x.dtype
    _, first, inverse = np.unique(x, return_index=True, return_inverse=True)
    got_first, got_inverse = unique_first_inverse(x)
    assert np.array_equal(got_first, first)
    assert np.array_equal(got_inverse, inverse.ravel())
