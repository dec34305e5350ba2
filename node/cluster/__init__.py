"""The node as a compute node of a Bacalhau network: NCL over NATS.

Modules, one concern each:

- :mod:`.envelope` — the wire envelope (version byte, CRC-32, JSON), pure;
- :mod:`.messages` — typed models of the NCL messages and the Bacalhau models they carry; every field
  name taken from Bacalhau's source lives there, so a check against a newer release changes one module;
- :mod:`.translate` — a Bacalhau execution into a haddock :class:`RunCommandRequest` (or a refusal with
  the reason), and a haddock result into Bacalhau's ``RunCommandResult``;
- :mod:`.ledger` — the durable cluster state (``<data_dir>/cluster.db``): bids, the outbox of
  sequence-numbered messages, checkpoints;
- :mod:`.compute` — what each data-plane message means to the node (it asks :class:`Node`, which decides);
- :mod:`.transport` — the NATS connection, the control plane and the inbound data plane;
- :mod:`.outbound` — the outbound data plane: the outbox sent in order, each message until acknowledged
  or given up;
- :mod:`.logstream` — the orchestrator's log requests, served from the node's log store.
"""
