"""The one place lfvila connects to Ray: an existing cluster at an address, or a local one it starts.

Used by ``build --engine ray`` (shard tasks) and ``download --engine ray`` (download tasks). Outputs
are written by Ray workers straight into the output folder, so every node must see it (a shared
filesystem), as for the videos folder.

Network exposure. Ray's servers run whatever code a client sends them. A local Ray that lfvila starts
itself (no address given) is bound to loopback: its GCS, raylets, workers and agents listen on
127.0.0.1 only, and it starts no dashboard. Ray turns a ``127.0.0.1`` node address into the machine's
outward address and listens on all interfaces unless it runs as a single-machine Ray, which it
does when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is in its environment (its name notwithstanding, this
is Ray's switch for a local-only instance on any OS); lfvila sets it for the processes of that local
Ray only. Ray also enables its token authentication for such a local instance unless ``RAY_AUTH_MODE``
says otherwise. A cluster given by address is the user's: lfvila joins it as it is, and how far it
listens and whether it asks for a token (``RAY_AUTH_MODE=token``) is set where it was started.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"
# --ray-address's help, the same for every command with --engine ray
RAY_ADDRESS_HELP = ("with --engine ray: the cluster's address HOST:PORT, joined as it is (its network exposure and "
                    "authentication are set where it was started); default: start a local Ray listening on "
                    "127.0.0.1 only, without dashboard")
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def ray_session(address: str | None, num_cpus: int):
    """Connect to ``address`` (``HOST:PORT``, or ``auto``) or start a local Ray with ``num_cpus``, bound to
    loopback; a Ray already initialised in this process is used as it is. Shuts down only what it started."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            with _local_only():
                ray.init(num_cpus=max(1, num_cpus), include_dashboard=False, log_to_driver=False,
                         _node_ip_address=LOOPBACK)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


@contextmanager
def _local_only():
    """Make the Ray started inside a single-machine one (see the module docstring); restored afterwards.

    Ray's processes inherit the variable when they are started; this process's Ray read it when it was
    imported, so its constant is set too (and put back, so that a later ``ray.init(address=...)`` in
    the same process joins a cluster with the machine's real address).
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = saved_env
