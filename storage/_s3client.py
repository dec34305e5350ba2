"""The boto3 clients of the S3 input provider and the S3 publisher, made one way for both.

A client per (region, endpoint), made on first use in a thread (boto3 sessions are not
thread-safe, so under a lock), with path-style addressing when an endpoint is named and the node's
address policy registered as a ``before-send`` hook (every request's endpoint address is checked
before botocore sends it). The two users differ only in botocore's retries and connection pool.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

from haddock.storage.config import S3Settings
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.provider import run_blocking

if TYPE_CHECKING:
    from botocore.config import _RetryDict
    from mypy_boto3_s3.client import S3Client

__all__ = ["S3Clients", "error_parts"]


class S3Clients:
    """boto3 S3 clients by (region, endpoint); :meth:`close` closes them all."""

    def __init__(
        self,
        config: S3Settings,
        policy: AddressPolicy,
        session: boto3.session.Session | None,
        *,
        retries: _RetryDict,
        max_pool_connections: int,
    ) -> None:
        self.config = config
        self.policy = policy
        self._session = session
        self._retries = retries
        self._max_pool_connections = max_pool_connections
        self._clients: dict[tuple[str | None, str | None], S3Client] = {}
        self._lock = threading.Lock()

    async def get(self, region: str | None, endpoint: str | None) -> S3Client:
        client = self._clients.get((region, endpoint))
        if client is None:
            client = await run_blocking(self._make, region, endpoint)
        return client

    def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _make(self, region: str | None, endpoint: str | None) -> S3Client:
        c = self.config
        with self._lock:  # boto3 sessions are not thread-safe
            existing = self._clients.get((region, endpoint))
            if existing is not None:
                return existing
            if self._session is None:
                self._session = boto3.session.Session()
            cfg = botocore.config.Config(
                region_name=region,
                retries=self._retries,
                connect_timeout=c.connect_timeout,
                read_timeout=c.read_timeout,
                max_pool_connections=self._max_pool_connections,
                s3={"addressing_style": "path"} if endpoint else {},
            )
            client = self._session.client("s3", endpoint_url=endpoint, config=cfg)
            client.meta.events.register("before-send", self.policy.boto_hook("S3 endpoint", c.trusted_endpoints()))
            self._clients[(region, endpoint)] = client
            return client


def error_parts(exc: botocore.exceptions.ClientError) -> tuple[str, str, int]:
    """(error code, message — the code when there is none, HTTP status — 0 when not known)."""
    err: dict[str, Any] = dict(exc.response.get("Error", {}))
    code = str(err.get("Code", ""))
    message = str(err.get("Message", "")) or code
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return code, message, status
