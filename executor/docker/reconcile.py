"""Reconciliation with the engine after a restart: the node's containers found again, and the dangling
ones (a container with this node's label that no execution knows) removed, the way Fn cleans up leaked
containers and Nomad reaps dangling ones.

Built from injected functions (list, remove, what is known), not from the whole driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["reap_orphans"]

log = logging.getLogger(__name__)


async def reap_orphans(
    list_containers: Callable[[], Awaitable[dict[str, dict[str, Any]]]],
    remove: Callable[[str], Awaitable[bool]],
    *,
    keep: set[str],
    grace: float,
    now: Callable[[], float] = time.time,
) -> list[str]:
    """Remove the containers (by execution id) that are not in ``keep`` and older than ``grace`` seconds.

    ``remove`` gets the container id and answers False when it was gone already. Returns the execution
    ids whose containers were removed.
    """
    removed = []
    at = now()
    for exec_id, c in (await list_containers()).items():
        if exec_id in keep:
            continue
        if at - float(c.get("Created") or 0) < grace:
            continue
        if not await remove(str(c["Id"])):
            continue
        name = (c.get("Names") or ["?"])[0].lstrip("/")
        log.warning("removed container %s of execution %r: no execution on this node knows it", name, exec_id)
        removed.append(exec_id)
    return removed
