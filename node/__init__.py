"""The haddock daemon, and (in ``haddock.node.client``) the requester side.

The daemon's modules are imported where they are used, never here: importing ``haddock.node.client``
(the async client, the CLI's client commands) must not load the daemon, docker-py or the store.
Daemon modules: ``config``, ``server``, ``api`` (servicers), ``service`` (the Node), ``admission``,
``events``, ``housekeeping``, ``bidding``, ``capacity``, ``store``, ``telemetry``, ``cli`` (the app), and
``cluster`` (joining a Bacalhau network over NATS).
"""

from __future__ import annotations

__all__: list[str] = []
