"""One execution the runner is responsible for, as the runner and its parts (``supervise``, ``settle``,
``service``, ``_recover``) share it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from haddock.executor.driver import ContainerHandle
from haddock.executor.logstore import LogWriter
from haddock.executor.protocol import PreparedInputs
from haddock.executor.records import ExecutionRecord, RunCommandResult
from haddock.executor.request import RunCommandRequest
from haddock.executor.stats import StatsAccumulator


@dataclass
class Execution:
    """One execution the runner is responsible for until it ends."""

    record: ExecutionRecord
    done: asyncio.Future[RunCommandResult]
    writer: LogWriter | None  # None: a recovered execution whose output was all captured before
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    handle: ContainerHandle | None = None
    leave_container: bool = False  # a shutdown lets go of the container (a restart reattaches)
    prepared_inputs: PreparedInputs | None = None
    output_cap_message: str = ""  # the job wrote past its output cap
    timed_out: bool = False  # its deadline passed before the node saw the container exit (settle.decide_status)
    stats: StatsAccumulator = field(default_factory=StatsAccumulator)  # resource use, summed up as sampled
    stdout_body: bytes | None = None  # a batch job's answer: the results' stdout (its output is the stderr)
    output_offset: int = 0  # where the container's output starts in the log (after a job's build output)
    run_request: RunCommandRequest | None = None  # what the container is made from, when not the request (a job's)
