"""The requester side: talk to a node without loading the node.

- :class:`NodeClient`, the async gRPC client (every node operation, typed), with :class:`NodeError`,
  :class:`ClientTls` and the values it returns;
- tasks files (:func:`load_tasks`, ``haddock submit --tasks``);
- :mod:`haddock.node.client.convert`, proto ⇄ domain translation, shared with the node's servicers;
- :mod:`haddock.node.client.cli`, the ``haddock`` commands that talk to a node (``run``, ``logs`` ...).

It depends on the generated contract (``haddock.v1``) and the domain models only, never on the daemon
(``haddock.node.service``, ``api``, ``server``, ``store`` ...), docker-py or boto3; ``tests/test_layers.py``
holds that.
"""

from __future__ import annotations

from haddock.node.client._client import (
    DEFAULT_NODE,
    ClientTls,
    ExecutionSummary,
    Finished,
    NodeClient,
    NodeError,
    Started,
)
from haddock.node.client._info import NodeInfo
from haddock.node.client._tasks import (
    MAX_TASKS,
    ColumnKind,
    Task,
    TaskInput,
    TaskOutput,
    TasksFileError,
    load_tasks,
    parse_tasks,
)
from haddock.node.client.convert import ConversionError, validation_message

__all__ = [
    "DEFAULT_NODE",
    "MAX_TASKS",
    "ClientTls",
    "ColumnKind",
    "ConversionError",
    "ExecutionSummary",
    "Finished",
    "NodeClient",
    "NodeError",
    "NodeInfo",
    "Started",
    "Task",
    "TaskInput",
    "TaskOutput",
    "TasksFileError",
    "load_tasks",
    "parse_tasks",
    "validation_message",
]
