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

from haddock.storage.provider import PreparedVolume, StorageRegistry
from haddock.storage.publish import PublishContext, S3Publisher, publish_all

if TYPE_CHECKING:
    from haddock.executor.models import InputVolume, RunCommandRequest


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
    """Implements ``executor.protocol.ResultPublisher`` with the publishers of :mod:`storage.publish`."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._s3 = S3Publisher()

    async def publish(self, request: RunCommandRequest) -> tuple[list[str], list[str]]:
        assert request.results_dir is not None
        ctx = PublishContext(
            job_id=request.job_id,
            execution_id=request.execution_id,
            node_id=self.node_id,
            results_dir=request.results_dir,
            when=datetime.now(UTC),
        )
        done, errors = await publish_all(request.publishers, ctx, publishers={"s3": self._s3})
        return [p.location for p in done], errors

    async def aclose(self) -> None:
        await self._s3.aclose()
