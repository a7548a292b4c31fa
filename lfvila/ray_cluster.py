"""The one place lfvila connects to Ray: an existing cluster at an address, or a local one it starts.

Used by ``build --engine ray`` (shard tasks) and ``download --engine ray`` (download tasks). Outputs
are written by Ray workers straight into the output folder, so every node must see it (a shared
filesystem), as for the videos folder.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def ray_session(address: str | None, num_cpus: int):
    """Connect to ``address`` (``HOST:PORT``, or ``auto``) or start a local Ray with ``num_cpus``;
    a Ray already initialised in this process is used as it is. Shuts down only what it started."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, num_cpus), include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
