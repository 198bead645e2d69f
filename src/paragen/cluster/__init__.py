"""paragen past one process, on Ray: ``paragen batch --ray`` (Ray Data, ``batch.py``) and
``paragen serve --replicas`` (Ray Serve, ``serve.py``).

Ray is an optional extra (``pip install 'paragen[ray]'``): only these modules import it,
and only when a command asks for it. Every node of a cluster needs paragen installed and
the model reachable at the same name or path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

from paragen.errors import InvalidInputError, ParagenError


def import_ray() -> ModuleType:
    """Ray, or one clear error saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ParagenError(f"--ray and --replicas run on Ray ({e}): pip install 'paragen[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str) -> Iterator[ModuleType]:
    """Connected to Ray for the block.

    ``local`` starts a Ray instance on this machine, stopped when the block ends; ``auto``
    joins the cluster ``ray start --head`` made on this machine; anything else is a
    cluster's address (``host:6379``, ``ray://host:10001``). When this process is connected
    already (a test or a notebook called ``ray.init``), that connection is used and left open.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if not address:
        raise InvalidInputError("--ray takes local, auto, or a cluster address (host:port)")
    try:
        if address == "local":
            # a private instance: no dashboard (its web server and agents cost a core's worth of
            # start-up on a small machine), nothing listening beyond this machine
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
        else:
            ray.init(address=address, configure_logging=False)
    except ConnectionError as e:
        raise ParagenError(f"no Ray cluster at --ray {address} ({e}): start one with `ray start --head`, or use "
                           "--ray local") from None
    try:
        yield ray
    finally:
        ray.shutdown()  # stops a local instance; leaves a cluster running, disconnected
