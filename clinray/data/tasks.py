"""Plain Ray tasks of the global stages: one remote function per Python function, and what a task
measures of itself (its peak resident memory), and the two list reshapes between waves of tasks.

MinHash's waves (:func:`clinray.data.dedup_minhash_graph.run_wave`) and the substring rounds
(:mod:`clinray.data.dedup_substring_shards`) run as tasks, not Ray Data operators; both go through
:func:`remote_task`. :class:`PeakRSS` is how the shard tasks report their memory next to their Ray
request, and how the benchmarks and tests read the driver's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

_REMOTES: dict = {}


def remote_task(fn, **options):
    """``fn`` as a Ray task with ``options`` (one remote function per ``fn``, exported once)."""
    import ray

    if fn not in _REMOTES:
        _REMOTES[fn] = ray.remote(fn)
    return _REMOTES[fn].options(**options) if options else _REMOTES[fn]


def transpose(outs: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Outputs per sending task -> inputs per receiving task (receiver ``j`` gets every sender's ``j``)."""
    return [[o[j] for o in outs] for j in range(width)]


def chunks(items: Sequence[Any], num_groups: int) -> list[list[Any]]:
    """``items`` in ``num_groups`` contiguous groups of nearly equal size."""
    num_groups = max(1, min(num_groups, len(items)))
    bounds = np.linspace(0, len(items), num_groups + 1).astype(int)
    return [list(items[s:e]) for s, e in zip(bounds[:-1], bounds[1:])]


class PeakRSS:
    """This process's resident memory while the ``with`` body runs, sampled every ``interval`` s.

    ``start``: the RSS at entry; ``max``: the highest RSS seen; ``peak``: ``max - start``, the growth.
    A thread reads the RSS while the body runs, so a short spike between samples can be missed.
    """

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        import psutil

        self._proc = psutil.Process()
        self.start = self.max = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        self.max = max(self.max, self._proc.memory_info().rss)
        self.peak = self.max - self.start

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
