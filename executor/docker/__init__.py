"""The Docker backend: a driver behind :class:`haddock.executor.driver.Driver`, one concern a file.

Names are imported lazily: the node's capture process (``python -m haddock.executor.docker.capture_proc``)
lives in this package and must not load docker-py or the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haddock.executor.docker.config import DockerConfig
    from haddock.executor.docker.driver import DockerDriver
    from haddock.executor.docker.executor import DockerExecutor
    from haddock.executor.docker.spec import LABEL_EXECUTION, LABEL_JOB, LABEL_NODE, container_name

__all__ = [
    "LABEL_EXECUTION",
    "LABEL_JOB",
    "LABEL_NODE",
    "DockerConfig",
    "DockerDriver",
    "DockerExecutor",
    "container_name",
]

_WHERE = {
    "LABEL_EXECUTION": "spec",
    "LABEL_JOB": "spec",
    "LABEL_NODE": "spec",
    "container_name": "spec",
    "DockerConfig": "config",
    "DockerDriver": "driver",
    "DockerExecutor": "executor",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
