"""The Executor contract on a Docker engine: the runner over a :class:`DockerDriver`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haddock.executor.docker.config import DockerConfig
from haddock.executor.docker.driver import DockerDriver
from haddock.executor.runner import Runner, RunnerConfig

__all__ = ["DockerExecutor"]


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
        log_max_per_execution: int | None = None,
        log_max_live: int | None = None,
        stats_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            DockerDriver(config, node_id=node_id),
            RunnerConfig(
                log_dir=log_dir,
                default_output_cap=config.output_cap,
                max_finished_records=max_finished_records,
                log_max_per_execution=log_max_per_execution,
                log_max_live=log_max_live,
                stats_interval=stats_interval,
            ),
            **kwargs,
        )
        self.driver.bind_logs(self.logs)
