"""OpenTelemetry: traces and metrics, exported nowhere by default, to the console or OTLP by config.

With ``metrics_listen`` the node's own metrics are on a meter provider of the node's, read both by the
Prometheus exporter (``metrics.py``) and by a reader of the ``[telemetry]`` exporter (:func:`metric_readers`).

The executor creates a span per execution with child spans per phase (pull, run,
write-results); the gRPC server interceptor creates one per call; the node records metrics
(executions by status, duration, bytes of output).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from haddock.node.config import Exporter, Settings

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def _otlp_exporters(endpoint: str | None) -> tuple[SpanExporter, Any]:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "telemetry.exporter = 'otlp' needs the OTLP exporter: pip install opentelemetry-exporter-otlp-proto-grpc"
        ) from exc
    return OTLPSpanExporter(endpoint=endpoint), OTLPMetricExporter(endpoint=endpoint)


def telemetry_resource(settings: Settings) -> Resource:
    return Resource.create({"service.name": "haddock", "service.instance.id": settings.node_id})


def _exporters(settings: Settings) -> tuple[SpanExporter, Any]:
    cfg = settings.telemetry
    if cfg.exporter is Exporter.CONSOLE:
        # The stdout of now (the exporters' default is the one when they were imported).
        return ConsoleSpanExporter(out=sys.stdout), ConsoleMetricExporter(out=sys.stdout)
    return _otlp_exporters(cfg.otlp_endpoint)


def metric_readers(settings: Settings) -> list[MetricReader]:
    """The readers that export metrics as ``[telemetry]`` says (none by default); new ones each call (a reader
    belongs to one meter provider: the node's own, when it serves ``metrics_listen``, takes one too)."""
    cfg = settings.telemetry
    if cfg.exporter is Exporter.NONE:
        return []
    _, metric_exporter = _exporters(settings)
    return [
        PeriodicExportingMetricReader(metric_exporter, export_interval_millis=int(cfg.metrics_interval_seconds * 1000))
    ]


def setup_telemetry(settings: Settings) -> Telemetry:
    """Install global tracer and meter providers as configured (none: the API's no-op providers)."""
    cfg = settings.telemetry
    if cfg.exporter is Exporter.NONE:
        return Telemetry(None, None)
    resource = telemetry_resource(settings)
    span_exporter, _ = _exporters(settings)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=metric_readers(settings))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    log.info("telemetry exporting to %s", cfg.exporter.value)
    return Telemetry(tracer_provider, meter_provider)
