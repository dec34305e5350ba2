"""Message sizes, set the same way on both sides of a connection: a node's answer always fits a client.

A node accepts requests up to :data:`MAX_REQUEST_BYTES`. Its answers are at most
:data:`MAX_RESPONSE_BYTES`: the largest holds a request echoed back (GetExecution), lifecycle events and a
result whose inline stdout and stderr are each at most :data:`MAX_INLINE_RETURN` bytes of output (an
invalid UTF-8 byte becomes U+FFFD, three bytes on the wire). The node's configuration refuses an inline
return limit above :data:`MAX_INLINE_RETURN`.
"""

from __future__ import annotations

__all__ = ["MAX_INLINE_RETURN", "MAX_REQUEST_BYTES", "MAX_RESPONSE_BYTES", "client_options", "server_options"]

_MiB = 1024 * 1024

MAX_REQUEST_BYTES = 4 * _MiB
MAX_INLINE_RETURN = 4 * _MiB
MAX_RESPONSE_BYTES = 2 * 3 * MAX_INLINE_RETURN + MAX_REQUEST_BYTES + 4 * _MiB  # 32 MiB


def client_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ]


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
    ]
