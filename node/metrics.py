"""The node's metrics (OpenTelemetry instruments), and the optional Prometheus listener that serves them.

Without ``metrics_listen`` the instruments live on the global meter provider (exported as ``[telemetry]``
says, nowhere by default). With it, the node has a meter provider of its own whose reader is
OpenTelemetry's Prometheus exporter (``PrometheusMetricReader``), served by ``prometheus_client``'s HTTP
server on that address at ``/metrics``: no hand-written exposition format. Every metric, with its unit and
labels, is listed in README.md ("Metrics").

Gauges are observed when scraped, from a snapshot the node refreshes on its event loop
(:meth:`NodeMetrics.refresh`): a scrape runs on the HTTP server's thread and never touches the node's
state directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from haddock.executor.records import EventKind, ExecutionEvent, RunCommandResult
from haddock.executor.request import Resources

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource

__all__ = ["PHASES", "MetricsListener", "NodeGauges", "NodeMetrics", "phase_durations"]

log = logging.getLogger(__name__)

PHASES: dict[str, tuple[EventKind, EventKind]] = {
    "queue_wait": (EventKind.QUEUED, EventKind.ACCEPTED),
    "image_pull": (EventKind.PULLING, EventKind.IMAGE_READY),
    "input_fetch": (EventKind.ACCEPTED, EventKind.INPUTS_PREPARED),
    "run": (EventKind.STARTED, EventKind.EXITED),
    "results": (EventKind.EXITED, EventKind.RESULTS_WRITTEN),
    "publish": (EventKind.RESULTS_WRITTEN, EventKind.PUBLISHED),
}
"""Each phase of an execution, from the event that begins it to the one that ends it."""

_PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def phase_durations(events: Sequence[ExecutionEvent]) -> dict[str, float]:
    """Seconds each phase took, for the phases the execution went through (first begin, first end after)."""
    first: dict[EventKind, datetime] = {}
    for e in events:
        first.setdefault(e.kind, e.time)
    out: dict[str, float] = {}
    for phase, (begin, end) in PHASES.items():
        if begin in first and end in first and first[end] >= first[begin]:
            out[phase] = (first[end] - first[begin]).total_seconds()
    return out


@dataclass
class NodeGauges:
    """What the gauges report, refreshed by the node on its event loop."""

    capacity: Resources = field(default_factory=Resources)
    allocated: Resources = field(default_factory=Resources)
    running: int = 0
    queued: int = 0
    engine_up: bool = False


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is what we have
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class NodeMetrics:
    """The node's instruments on ``meter`` (the global one when None)."""

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or metrics.get_meter("haddock.node")
        self.gauges = NodeGauges()
        self._lock = threading.Lock()
        self.executions = meter.create_counter(
            "haddock.executions", unit="{execution}", description="executions ended, by status"
        )
        self.duration = meter.create_histogram(
            "haddock.execution.duration", unit="s", description="time from acceptance to the end"
        )
        self.phase_duration = meter.create_histogram(
            "haddock.execution.phase.duration",
            unit="s",
            description="time an execution spent in a phase: queue_wait, image_pull, input_fetch, run, results, "
            "publish",
            explicit_bucket_boundaries_advisory=_PHASE_BUCKETS,
        )
        self.output = meter.create_counter(
            "haddock.execution.output", unit="By", description="bytes the jobs wrote to stdout and stderr"
        )
        for resource, unit in (("cpu", "{cpu}"), ("memory", "By"), ("disk", "By"), ("gpu", "{gpu}")):
            meter.create_observable_gauge(
                f"haddock.capacity.{resource}",
                [self._observe("capacity", resource)],
                unit=unit,
                description=f"{resource} the node offers to jobs",
            )
            meter.create_observable_gauge(
                f"haddock.allocated.{resource}",
                [self._observe("allocated", resource)],
                unit=unit,
                description=f"{resource} held by running executions",
            )
        meter.create_observable_gauge(
            "haddock.executions.running", [self._count("running")], unit="{execution}", description="running now"
        )
        meter.create_observable_gauge(
            "haddock.executions.queued", [self._count("queued")], unit="{execution}", description="waiting now"
        )
        meter.create_observable_gauge(
            "haddock.engine.up",
            [self._engine_up],
            unit="1",
            description="1 when the container engine answers, else 0",
        )
        meter.create_observable_gauge(
            "haddock.process.memory.rss",
            [lambda options: [Observation(_rss_bytes())]],
            unit="By",
            description="resident memory of the node process",
        )

    def _observe(self, which: str, resource: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                value = getattr(getattr(self.gauges, which), resource)
            return [Observation(float(value))]

        return callback

    def _count(self, which: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                return [Observation(int(getattr(self.gauges, which)))]

        return callback

    def _engine_up(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [Observation(1 if self.gauges.engine_up else 0)]

    def refresh(self, gauges: NodeGauges) -> None:
        with self._lock:
            self.gauges = gauges

    async def keep_fresh(self, snapshot: Callable[[], Awaitable[NodeGauges]], every: float = 2.0) -> None:
        """Refresh the gauges from ``snapshot`` every ``every`` seconds, until cancelled."""
        while True:
            try:
                self.refresh(await snapshot())
            except Exception as exc:  # a gauge is not worth a crash
                log.warning("refreshing the node's gauges failed: %s", exc)
            await asyncio.sleep(every)

    def ended(self, result: RunCommandResult, events: Sequence[ExecutionEvent], seconds: float | None) -> None:
        """An execution ended with ``result``; ``events`` are its lifecycle events (empty when unknown)."""
        status = result.status.value
        self.executions.add(1, {"status": status})
        if seconds is not None:
            self.duration.record(seconds, {"status": status})
        for phase, took in phase_durations(events).items():
            self.phase_duration.record(took, {"phase": phase})
        for e in events:
            if e.kind is EventKind.RESULTS_WRITTEN:
                for stream in ("stdout", "stderr"):
                    self.output.add(int(e.details.get(f"{stream}_bytes", 0)), {"stream": stream})


class MetricsListener:
    """``/metrics`` for Prometheus on ``address`` (HOST:PORT; port 0 picks one): a meter provider of the
    node's own, read by OpenTelemetry's Prometheus exporter into a registry of its own, and by ``readers``
    (those of the ``[telemetry]`` exporter: the node's metrics go there too)."""

    def __init__(self, address: str, *, readers: Sequence[MetricReader] = (), resource: Resource | None = None) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import CollectorRegistry

        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        # A registry of its own, not prometheus_client's global one: two nodes in one process stay apart.
        self.registry = CollectorRegistry()
        self._reader = PrometheusMetricReader(registry=self.registry)
        self.provider = MeterProvider(resource=resource or Resource.create(), metric_readers=[self._reader, *readers])
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def meter(self) -> Meter:
        return self.provider.get_meter("haddock.node")

    def start(self) -> None:
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise RuntimeError(f"cannot listen for metrics on {self.host}:{self.port}: {exc}") from exc
        self.port = int(self._server.server_port)
        log.info("metrics for Prometheus at http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.provider.shutdown()
