"""Choice-shuffle ensemble arithmetic: distinct permutations, mapping answers back, plurality vote.

Medprompt asks the same question n times (the paper: 5, at temperature 0.2), each time with the
options and the few-shot examples in another order, maps each run's answer back to the option's
original position and takes the plurality; the winner's share of the votes is the confidence. Shuffling
cancels the position bias of a model (a preference for "A"), which is why the permutations of one
question are kept distinct whenever there are enough of them. A permutation ``perm`` lists, for each
shown position, the original index of the option shown there: ``shown = [options[i] for i in perm]``,
so mapping back is ``perm[shown_index]``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence

__all__ = ["distinct_permutations", "apply_permutation", "map_back", "plurality_vote"]


def distinct_permutations(num_runs: int, size: int, *, rng: random.Random) -> list[tuple[int, ...]]:
    """``num_runs`` random permutations of ``range(size)``, pairwise distinct while ``size!`` allows.

    When ``num_runs > size!`` every permutation is used and the rest repeat (shuffled); with ``size``
    0 or 1 all runs get the only (empty or identity) permutation.
    """
    if num_runs < 1:
        raise ValueError(f"num_runs must be at least 1, got {num_runs}")
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
    total = math.factorial(size)
    if total <= 720 and num_runs >= total:
        every = list(itertools.permutations(range(size)))
        rng.shuffle(every)
        return [every[i % total] for i in range(num_runs)]
    if num_runs > total:
        raise ValueError(f"{num_runs} runs cannot have distinct permutations of {size} items")
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < num_runs:
        perm = list(range(size))
        rng.shuffle(perm)
        key = tuple(perm)
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def apply_permutation(items: Sequence, perm: Sequence[int]) -> list:
    """Items in shown order: position ``j`` shows ``items[perm[j]]``."""
    if sorted(perm) != list(range(len(items))):
        raise ValueError(f"{list(perm)} is not a permutation of 0..{len(items) - 1}")
    return [items[i] for i in perm]


def map_back(perm: Sequence[int], shown_index: int) -> int:
    """Original index of the option shown at ``shown_index``."""
    if not 0 <= shown_index < len(perm):
        raise ValueError(f"shown_index {shown_index} is outside 0..{len(perm) - 1}")
    return perm[shown_index]


def plurality_vote(answers: Sequence[int]) -> tuple[int, dict[int, int], float]:
    """Winner, votes per original index and the winner's share of the votes.

    Ties go to the option that reached the top count first in run order, so the vote is deterministic.
    """
    if not answers:
        raise ValueError("cannot vote on zero answers")
    votes = Counter(answers)
    top = max(votes.values())
    winner = next(a for a in answers if votes[a] == top)
    return winner, dict(sorted(votes.items())), top / len(answers)
