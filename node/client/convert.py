"""Translation between the wire contract (``haddock.v1``) and the executor's domain models.

Used by the servicers (proto → domain on the way in, domain → proto on the way out) and by the
client (the other way round): each message has its one pair of functions here. Validation happens in
the domain models: converting a bad proto raises ``pydantic.ValidationError`` with a message that names
the field, and :func:`validation_message` turns that into the one line both sides show.

This module is the one import point; the functions live in its private parts, by message family:
``_conv_core.py`` (enums, time, resources, errors), ``_conv_request.py`` (requests, services, input sources,
publishers), ``_conv_results.py`` (results, statistics, events, logs), ``_conv_node.py`` (node info).
"""

from __future__ import annotations

from haddock.node.client._conv_core import (
    ConversionError,
    duration,
    from_timestamp,
    kind_from_pb,
    kind_to_pb,
    resources_from_pb,
    resources_to_pb,
    state_from_pb,
    state_to_pb,
    status_from_pb,
    status_to_pb,
    stream_from_pb,
    stream_to_pb,
    timestamp,
    validation_message,
)
from haddock.node.client._conv_node import (
    info_from_pb,
    info_to_pb,
)
from haddock.node.client._conv_request import (
    limits_to_pb,
    port_from_pb,
    port_to_pb,
    publisher_from_pb,
    publisher_to_pb,
    request_from_pb,
    request_to_pb,
    service_from_pb,
    service_to_pb,
    source_from_pb,
    source_to_pb,
)
from haddock.node.client._conv_results import (
    event_from_pb,
    event_to_pb,
    log_entry_from_pb,
    log_entry_to_pb,
    log_query_from_pb,
    log_query_to_pb,
    result_from_pb,
    result_to_pb,
    stat_from_pb,
    stat_to_pb,
    summary_from_pb,
    summary_to_pb,
)

__all__ = [
    "ConversionError",
    "duration",
    "event_from_pb",
    "event_to_pb",
    "from_timestamp",
    "info_from_pb",
    "info_to_pb",
    "kind_from_pb",
    "kind_to_pb",
    "limits_to_pb",
    "log_entry_from_pb",
    "log_entry_to_pb",
    "log_query_from_pb",
    "log_query_to_pb",
    "port_from_pb",
    "port_to_pb",
    "publisher_from_pb",
    "publisher_to_pb",
    "request_from_pb",
    "request_to_pb",
    "resources_from_pb",
    "resources_to_pb",
    "result_from_pb",
    "result_to_pb",
    "service_from_pb",
    "service_to_pb",
    "source_from_pb",
    "source_to_pb",
    "stat_from_pb",
    "stat_to_pb",
    "state_from_pb",
    "state_to_pb",
    "status_from_pb",
    "status_to_pb",
    "stream_from_pb",
    "stream_to_pb",
    "summary_from_pb",
    "summary_to_pb",
    "timestamp",
    "validation_message",
]
