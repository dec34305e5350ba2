"""The executor's storage hooks: an execution's ``input_sources`` are fetched (by the storage
registry) into ``<executions_dir>/<id>/inputs`` and mounted at their targets; after the run its
results dir is published as its ``publishers`` ask."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from haddock.executor.publishers import S3PublisherSpec
from haddock.storage.config import S3Settings
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.provider import PreparedVolume, StorageRegistry
from haddock.storage.publish import PublishContext, Publisher, publish_all

if TYPE_CHECKING:
    from haddock.executor.request import InputVolume, RunCommandRequest
    from haddock.storage.publish_s3 import S3Publisher


@dataclass
class RegistryPreparedInputs:
    registry: StorageRegistry
    prepared: list[PreparedVolume]
    work_dir: Path
    volumes: list[InputVolume] = field(default_factory=list)

    async def cleanup(self) -> None:
        await self.registry.cleanup_all(self.prepared)
        await asyncio.to_thread(shutil.rmtree, self.work_dir, True)


class RegistryPreparer:
    """Implements ``executor.protocol.InputPreparer`` with a :class:`StorageRegistry`."""

    def __init__(self, registry: StorageRegistry, work_dir_for: Callable[[str], Path]) -> None:
        self.registry = registry
        self._work_dir_for = work_dir_for

    async def prepare(self, request: RunCommandRequest) -> RegistryPreparedInputs:
        work_dir = self._work_dir_for(request.execution_id)
        await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
        try:
            prepared = await self.registry.prepare_all(request.input_sources, work_dir)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work_dir, True)
            raise
        return RegistryPreparedInputs(
            registry=self.registry,
            prepared=prepared,
            work_dir=work_dir,
            volumes=[v.as_input_volume() for v in prepared],
        )

    async def discard(self, execution_id: str) -> None:
        """Remove the input work dir an earlier life of the node left (its cache references died with it)."""
        await asyncio.to_thread(shutil.rmtree, self._work_dir_for(execution_id), True)


class RegistryPublisher:
    """Implements ``executor.protocol.ResultPublisher`` with the publishers of :mod:`storage.publish`.
    The S3 publisher (and boto3) is made when an execution first publishes to S3, then kept."""

    def __init__(self, node_id: str, s3: S3Settings | None = None, *, policy: AddressPolicy | None = None) -> None:
        self.node_id = node_id
        self.s3 = s3 or S3Settings()
        self.policy = policy or AddressPolicy()
        self._s3: S3Publisher | None = None

    def _s3_publisher(self) -> S3Publisher:
        if self._s3 is None:
            from haddock.storage.publish_s3 import S3Publisher

            self._s3 = S3Publisher(self.s3, policy=self.policy)
        return self._s3

    async def publish(self, request: RunCommandRequest) -> tuple[list[str], list[str]]:
        assert request.results_dir is not None
        ctx = PublishContext(
            job_id=request.job_id,
            execution_id=request.execution_id,
            node_id=self.node_id,
            results_dir=request.results_dir,
            when=datetime.now(UTC),
        )
        publishers: dict[str, Publisher] = {}
        if any(isinstance(p, S3PublisherSpec) for p in request.publishers):
            publishers["s3"] = self._s3_publisher()
        done, errors = await publish_all(request.publishers, ctx, publishers=publishers)
        return [p.location for p in done], errors

    async def aclose(self) -> None:
        s3, self._s3 = self._s3, None
        if s3 is not None:
            await s3.aclose()
