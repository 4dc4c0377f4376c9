"""Sizes that follow the data and the cluster: partition counts, shard counts, task memory requests.

Every global curation stage sizes its work here instead of from fixed numbers, so the same recipe
runs on a laptop's 14 MB and a cluster's 200 GB: a count is the input bytes over a target size per
task, at least the cluster's CPUs (every core gets work), at most a cap, and a config value overrides
it. Memory requests come from a measured bytes-per-input-byte factor (documented where it is used).
"""

from __future__ import annotations

import math

MiB = 1 << 20
GiB = 1 << 30


def cluster_cpus(default: int = 1) -> int:
    """CPUs of the connected Ray cluster (``default`` when Ray is not initialized)."""
    import ray

    if not ray.is_initialized():
        return default
    return max(1, int(ray.cluster_resources().get("CPU", default)))


def count_for(
    num_bytes: int,
    *,
    target_bytes: int,
    cpus: int | None = None,
    minimum: int = 1,
    maximum: int = 100_000,
    override: int | None = None,
) -> int:
    """How many partitions/shards for ``num_bytes`` of input.

    ``ceil(num_bytes / target_bytes)``, raised to ``cpus`` (when given, so every core has a task) and to
    ``minimum``, capped at ``maximum``; ``override`` (a config value > 0) wins over all of it.
    """
    if override:
        return int(override)
    if target_bytes <= 0:
        raise ValueError("target_bytes must be > 0")
    n = math.ceil(max(0, num_bytes) / target_bytes)
    n = max(n, minimum, cpus or 0)
    return max(1, min(n, maximum))


def memory_request(num_bytes: int, *, bytes_per_byte: float, floor: int = 256 * MiB) -> int:
    """The Ray ``memory=`` request of a task over ``num_bytes`` of input (at least ``floor``)."""
    return int(max(floor, math.ceil(num_bytes * bytes_per_byte)))


#: Smallest piece a task-based shuffle should send. Ray keeps a task result under 100 KB
#: (``max_direct_call_object_size``) in the heap of the process that submitted the task, here the
#: driver; above it the result goes to the object store. A shuffle whose pieces stay above this size
#: therefore holds nothing per document on the driver, only one reference per piece.
MIN_SHUFFLE_PIECE = 256 * 1024


def senders_for(num_bytes: int, *, receivers: int, maximum: int, piece_bytes: int = MIN_SHUFFLE_PIECE) -> int:
    """How many tasks may send ``num_bytes`` to ``receivers`` tasks with pieces of ``piece_bytes`` or more.

    ``floor(num_bytes / (receivers * piece_bytes))``, between 1 and ``maximum`` (the number of inputs
    there are to group): small data gets one sender, so no piece of it lands in the driver's heap.
    """
    n = int(max(0, num_bytes) // (max(1, receivers) * piece_bytes))
    return max(1, min(n, max(1, maximum)))


def square_shuffle_cap(num_bytes: int, *, piece_bytes: int = MIN_SHUFFLE_PIECE) -> int:
    """The most partitions an all-to-all shuffle of ``num_bytes`` between ``n`` and ``n`` tasks may use
    so that its ``n * n`` pieces keep ``piece_bytes`` each: ``floor(sqrt(num_bytes / piece_bytes))``, >= 1."""
    return max(1, math.isqrt(int(max(0, num_bytes) // piece_bytes)))
