"""The Docker backend: a driver behind :class:`haddock.executor.driver.Driver`, one concern a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haddock.executor.docker.config import DockerConfig
from haddock.executor.docker.driver import DockerDriver
from haddock.executor.docker.spec import LABEL_EXECUTION, LABEL_JOB, LABEL_NODE, container_name
from haddock.executor.runner import Runner, RunnerConfig

__all__ = [
    "LABEL_EXECUTION",
    "LABEL_JOB",
    "LABEL_NODE",
    "DockerConfig",
    "DockerDriver",
    "DockerExecutor",
    "container_name",
]


class DockerExecutor(Runner):
    """The Executor contract on a Docker engine: the runner over a :class:`DockerDriver`."""

    driver: DockerDriver

    def __init__(
        self,
        config: DockerConfig,
        *,
        node_id: str,
        log_dir: Path,
        max_finished_records: int = 10_000,
        stats_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            DockerDriver(config, node_id=node_id),
            RunnerConfig(
                log_dir=log_dir,
                default_output_cap=config.output_cap,
                max_finished_records=max_finished_records,
                stats_interval=stats_interval,
            ),
            **kwargs,
        )
