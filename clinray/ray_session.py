"""One way for every job to reach Ray: the job's cluster when there is one, else a private local one.

Under ``ray job submit`` (``RAY_ADDRESS`` set) or with an explicit address, connect to that cluster;
run by hand, start a private local cluster (``address="local"``), never attaching to somebody else's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_session(
    *, num_cpus: int | None = None, address: str | None = None, log_to_driver: bool = False
) -> Iterator[None]:
    """Initialize Ray for the duration of a job and shut it down afterwards.

    Args:
        num_cpus: CPUs of a private local cluster (ignored when connecting to a cluster).
        address: an explicit cluster address; default: ``RAY_ADDRESS`` if set, else a local cluster.
        log_to_driver: show the workers' standard output on a private local cluster (training's
            rank-0 step lines); a cluster's own job logs always keep them.
    """
    import ray

    if ray.is_initialized():  # the caller owns Ray (tests, the demo)
        yield
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
    try:
        yield
    finally:
        ray.shutdown()
