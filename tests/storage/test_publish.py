"""Output publishers: local (with archive) and S3 against moto's S3 server on 127.0.0.1, through boto3."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import logging
import os
import socket
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from haddock.executor.publishers import (
    DEFAULT_KEY,
    PUBLISHER_SPEC_ADAPTER,
    LocalPublisherSpec,
    S3PublisherSpec,
    parse_publisher,
)
from haddock.storage.config import S3PublishSettings, S3Settings
from haddock.storage.netpolicy import AddressPolicy
from haddock.storage.publish import (
    ARCHIVE_NAME,
    LocalPublisher,
    PublishContext,
    Published,
    PublishError,
    key_prefix,
    publish_all,
    render_key,
)
from haddock.storage.publish_s3 import S3Publisher

MiB = 1024**2
BIG = bytes(range(256)) * (5 * MiB // 256) + b"tail" * 31  # 5 MiB + 124 bytes: two parts of a multipart upload

LOOPBACK = AddressPolicy(allow_private=True)  # moto is on 127.0.0.1

FAST = S3Settings(
    attempts=3,
    connect_timeout=2,
    read_timeout=10,
    total_timeout=20,
    publish=S3PublishSettings(
        request_attempts=1,  # botocore does not retry by itself: every attempt is the publisher's
        backoff_initial=0.01,
        backoff_max=0.05,
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
    ),
)

WHEN = datetime(2024, 2, 29, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 2024-03-01 in UTC


def make_results(root: Path, *, big: bool = True) -> Path:
    """An execution dir with its results dir: the executor's three files and two named outputs."""
    results = root / "exec-1" / "results"
    (results / "outputs" / "a").mkdir(parents=True)
    (results / "outputs" / "empty").mkdir()
    (results / "stdout").write_bytes(b"hello\n")
    (results / "stderr").write_bytes(b"")
    (results / "exitCode").write_bytes(b"0")
    (results / "outputs" / "a" / "b.txt").write_bytes(b"bee\n")
    if big:
        (results / "outputs" / "big.bin").write_bytes(BIG)
    secret = root / "secret.txt"
    secret.write_bytes(b"outside the results dir")
    (results / "outputs" / "a" / "escape").symlink_to(secret)
    (results / "outputs" / "link-dir").symlink_to(root)
    return results


FILES = {
    "stdout": b"hello\n",
    "stderr": b"",
    "exitCode": b"0",
    "outputs/a/b.txt": b"bee\n",
    "outputs/big.bin": BIG,
}


def ctx_for(results: Path, **kw: Any) -> PublishContext:
    values: dict[str, Any] = {
        "job_id": "job-7",
        "execution_id": "exec-1",
        "node_id": "node-a",
        "results_dir": results,
        "when": WHEN,
    }
    values.update(kw)
    return PublishContext(**values)


def bucket_contents(s3_client: Any, bucket: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def tar_contents(data: bytes) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isdir():
                out[m.name] = "dir"
            else:
                assert m.isreg(), m.name
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


ARCHIVED = {**FILES, "outputs": "dir", "outputs/a": "dir", "outputs/empty": "dir"}


def leftovers_beside(results: Path) -> list[str]:
    return sorted(p.name for p in results.parent.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
async def publisher(s3_endpoint: str) -> AsyncIterator[S3Publisher]:
    p = S3Publisher(FAST, policy=LOOPBACK)
    yield p
    await p.aclose()


def s3_spec(endpoint: str, bucket: str, **kw: Any) -> S3PublisherSpec:
    return S3PublisherSpec(bucket=bucket, endpoint_url=endpoint, region="us-east-1", **kw)


# ---------------------------------------------------------------------------------------- key templates


def test_render_key_fills_every_placeholder() -> None:
    ctx = ctx_for(Path("/r"))
    assert render_key("{job_id}/{execution_id}/{node_id}/{date}/x", ctx) == "job-7/exec-1/node-a/2024-03-01/x"
    assert render_key(DEFAULT_KEY, ctx) == "job-7/exec-1/"
    assert render_key("fixed", ctx) == "fixed"
    assert key_prefix("fixed", ctx) == "fixed/" and key_prefix("p/{job_id}/", ctx) == "p/job-7/"
    # {date} is the UTC date; a naive datetime is taken as UTC
    assert render_key("{date}", ctx_for(Path("/r"), when=datetime(2024, 1, 2, 23, 59))) == "2024-01-02"
    assert render_key("{date}", ctx_for(Path("/r"), when=datetime(2024, 1, 2, 0, 1, tzinfo=UTC))) == "2024-01-02"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{job}/x", r"unknown placeholder \{job\}; the placeholders are \{job_id\}, \{execution_id\}"),
        ("{job_id!r}/", r"unknown placeholder \{job_id!r\}"),
        ("{}/", r"unknown placeholder \{\}"),
        ("a/{job_id", r"'\{' or '\}' that is not part of a placeholder"),
        ("a}/{job_id}", r"'\{' or '\}' that is not part of a placeholder"),
        ("{{job_id}}", r"'\{' or '\}' that is not part of a placeholder"),
        ("a/../b", r"must not contain '\.\.'"),
        ("../{job_id}", r"must not contain '\.\.'"),
        ("a/../{job_id}", r"must not contain '\.\.'"),
        ("/abs/{job_id}", r"must not start with '/'"),
        ("a//b", r"empty path segment"),
        ("", r"must not be empty"),
    ],
)
def test_bad_key_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_key(template, ctx_for(Path("/r")))
    with pytest.raises(ValidationError, match=message):
        S3PublisherSpec(bucket="bucket", key=template)


def test_rendered_keys_are_checked_too() -> None:
    with pytest.raises(ValueError, match=r"'\{job_id\}/x' \(rendered '\.\./x'\) must not contain '\.\.'"):
        render_key("{job_id}/x", ctx_for(Path("/r"), job_id=".."))
    with pytest.raises(ValueError, match="must not start with '/'"):
        render_key("{node_id}/x", ctx_for(Path("/r"), node_id="/etc"))
    with pytest.raises(ValueError, match="empty path segment"):
        render_key("a/{node_id}/x", ctx_for(Path("/r"), node_id=""))


# ------------------------------------------------------------------------------------- specs and CLI


def test_specs_are_a_discriminated_union() -> None:
    spec = PUBLISHER_SPEC_ADAPTER.validate_python({"type": "s3", "bucket": "bk", "archive": True})
    assert spec == S3PublisherSpec(bucket="bk", archive=True) and spec.key == DEFAULT_KEY
    assert PUBLISHER_SPEC_ADAPTER.validate_json('{"type": "local"}') == LocalPublisherSpec()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PUBLISHER_SPEC_ADAPTER.validate_python({"type": "local", "bucket": "x"})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        PUBLISHER_SPEC_ADAPTER.validate_python({"type": "ipfs"})
    with pytest.raises(ValidationError, match="not a valid bucket name"):
        S3PublisherSpec(bucket="-x")
    with pytest.raises(ValidationError, match="must use http or https"):
        S3PublisherSpec(bucket="bk", endpoint_url="ftp://host")


def test_parse_publisher_cli_forms() -> None:
    assert parse_publisher("local") == LocalPublisherSpec()
    assert parse_publisher(" local+archive ") == LocalPublisherSpec(archive=True)
    assert parse_publisher("s3://bk") == S3PublisherSpec(bucket="bk")
    assert parse_publisher("s3://bk/") == S3PublisherSpec(bucket="bk")
    assert parse_publisher("s3://bk/runs/{date}/{execution_id}/") == S3PublisherSpec(
        bucket="bk", key="runs/{date}/{execution_id}/"
    )
    assert parse_publisher("s3://bk/p?region=eu-west-1&endpoint=http://127.0.0.1:9000&archive=1") == S3PublisherSpec(
        bucket="bk", key="p", region="eu-west-1", endpoint_url="http://127.0.0.1:9000", archive=True
    )
    assert parse_publisher("s3://bk?archive=no").archive is False
    assert parse_publisher("s3://bk?archive").archive is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("ftp://x", "is not understood: use 'local', 'local\\+archive' or 's3://bucket"),
        ("local+zip", "is not understood"),
        ("s3://", "names no bucket"),
        ("s3:///key", "names no bucket"),
        ("s3://bk/{job}/", r"unknown placeholder \{job\}"),
        ("s3://bk/../x", r"must not contain '\.\.'"),
        ("s3://bk?color=red", "unknown parameter 'color' \\(known: region, endpoint, archive\\)"),
        ("s3://bk?region=a&region=b", "gives 'region' twice"),
        ("s3://bk?archive=maybe", "archive='maybe' must be"),
        ("s3://bk?region=Not_A_Region", "not a valid region name"),
        ("s3://bk?endpoint=minio:9000", "endpoint_url"),
        ("s3://x", "not a valid bucket name"),
    ],
)
def test_parse_publisher_refuses_bad_inputs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_publisher(text)
    assert not isinstance(info.value, ValidationError)  # a plain message for the CLI


# ------------------------------------------------------------------------------------------------ local


async def test_local_publish_and_archive(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = make_results(tmp_path)
    local = LocalPublisher()
    plain = await local.publish(LocalPublisherSpec(), ctx_for(results))
    assert plain == Published(
        spec=LocalPublisherSpec(), location=str(results), objects=5, bytes=sum(map(len, FILES.values()))
    )
    assert not (results.parent / ARCHIVE_NAME).exists()

    with caplog.at_level(logging.WARNING, logger="haddock.storage.publish"):
        archived = await local.publish(LocalPublisherSpec(archive=True), ctx_for(results))
    archive = results.parent / ARCHIVE_NAME
    assert archived.archive == str(archive) and archived.location == str(results) and archived.objects == 5
    assert tar_contents(archive.read_bytes()) == ARCHIVED  # no symlink, nothing from outside
    assert "outputs/a/escape" in caplog.text and "symbolic link" in caplog.text
    assert "outputs/link-dir" in caplog.text
    assert leftovers_beside(results) == []
    assert sorted(p.name for p in results.iterdir()) == ["exitCode", "outputs", "stderr", "stdout"]

    # a second archive replaces the first atomically
    (results / "stdout").write_bytes(b"changed")
    await local.publish(LocalPublisherSpec(archive=True), ctx_for(results))
    assert tar_contents(archive.read_bytes())["stdout"] == b"changed"
    assert leftovers_beside(results) == []


async def test_local_missing_results_dir(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match=r"publishing to local .*/nope failed: .*does not exist"):
        await LocalPublisher().publish(LocalPublisherSpec(archive=True), ctx_for(tmp_path / "nope"))


# --------------------------------------------------------------------------------------------------- s3


async def test_s3_uploads_every_file_under_the_templated_key(
    publisher: S3Publisher, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    results = make_results(tmp_path)
    spec = s3_spec(s3_endpoint, bucket, key="runs/{date}/{node_id}/{job_id}/{execution_id}")
    published = await publisher.publish(spec, ctx_for(results))
    prefix = "runs/2024-03-01/node-a/job-7/exec-1/"
    assert published == Published(
        spec=spec,
        location=f"s3://{bucket}/{prefix}",
        objects=5,
        bytes=sum(map(len, FILES.values())),
    )
    assert bucket_contents(s3_client, bucket) == {prefix + k: v for k, v in FILES.items()}
    # the big file went up in two parts
    assert s3_client.head_object(Bucket=bucket, Key=prefix + "outputs/big.bin")["ETag"].endswith('-2"')


async def test_s3_archive_is_one_tarball(
    publisher: S3Publisher, s3_client: Any, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    results = make_results(tmp_path)
    published = await publisher.publish(s3_spec(s3_endpoint, bucket, archive=True), ctx_for(results))
    key = "job-7/exec-1/" + ARCHIVE_NAME
    assert published.location == f"s3://{bucket}/job-7/exec-1/" and published.archive == f"s3://{bucket}/{key}"
    contents = bucket_contents(s3_client, bucket)
    assert list(contents) == [key] and published.objects == 1 and published.bytes == len(contents[key])
    assert tar_contents(contents[key]) == ARCHIVED
    assert leftovers_beside(results) == [] and not (results.parent / ARCHIVE_NAME).exists()


async def test_missing_bucket_fails_at_once(publisher: S3Publisher, s3_endpoint: str, tmp_path: Path) -> None:
    results = make_results(tmp_path, big=False)
    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        await publisher.publish(s3_spec(s3_endpoint, "no-such-bucket-here"), ctx_for(results))
    assert str(info.value) == (
        "publishing to s3://no-such-bucket-here/job-7/exec-1/ failed: the bucket 'no-such-bucket-here' does not exist"
    )
    assert info.value.attempts == 1 and time.monotonic() - started < 5


async def test_endpoints_can_be_restricted(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    p = S3Publisher(S3Settings(allowed_endpoints=("https://s3.example.com",)))
    try:
        with pytest.raises(PublishError, match=rf"endpoint {s3_endpoint} is not one this node uses"):
            await p.publish(s3_spec(s3_endpoint, bucket), ctx_for(make_results(tmp_path, big=False)))
    finally:
        await p.aclose()


async def test_a_cancelled_publish_leaves_no_temporary_file(
    publisher: S3Publisher, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    results = make_results(tmp_path)
    for delay in (0.0, 0.01, 0.05, 0.2):
        task = asyncio.create_task(publisher.publish(s3_spec(s3_endpoint, bucket, archive=True), ctx_for(results)))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert leftovers_beside(results) == []


# ------------------------------------------------------------------------------------- flaky endpoints


class FlakyProxy:
    """An HTTP proxy in front of moto that answers 503 ServiceUnavailable to the first ``failures`` requests,
    or to the requests whose numbers (from 1) are in ``failures``."""

    def __init__(self, upstream: str, failures: int | set[int]) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.failures = failures if isinstance(failures, set) else set(range(1, failures + 1))
        self.requests = 0
        self.refused = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                body = self._body()
                with owner.lock:
                    owner.requests += 1
                    fail = owner.requests in owner.failures
                    if fail:
                        owner.refused += 1
                if fail:
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                self._forward(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _forward(self, body: bytes) -> None:
                skip = {"connection", "transfer-encoding", "content-length", "expect", "keep-alive"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*owner.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() in skip:
                            continue
                        self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_factory(s3_endpoint: str) -> Iterator[Any]:
    made: list[FlakyProxy] = []

    def make(failures: int | set[int]) -> FlakyProxy:
        p = FlakyProxy(s3_endpoint, failures)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


async def test_transient_errors_are_retried(
    publisher: S3Publisher, proxy_factory: Any, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    results = make_results(tmp_path, big=False)
    proxy = proxy_factory(2)
    published = await publisher.publish(s3_spec(proxy.url, bucket, key="flaky/"), ctx_for(results))
    assert proxy.refused == 2 and published.objects == 4
    expected = {"flaky/" + k: v for k, v in FILES.items() if k != "outputs/big.bin"}
    assert bucket_contents(s3_client, bucket) == expected


async def test_a_retry_does_not_upload_again_what_was_done(
    s3_endpoint: str, proxy_factory: Any, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    results = make_results(tmp_path, big=False)
    proxy = proxy_factory({3})  # PUT 1, HEAD 1, then the second file's PUT fails
    p = S3Publisher(
        FAST.model_copy(update={"publish": FAST.publish.model_copy(update={"parallel_uploads": 1})}), policy=LOOPBACK
    )
    try:
        published = await p.publish(s3_spec(proxy.url, bucket), ctx_for(results))
    finally:
        await p.aclose()
    assert published.objects == 4 and proxy.refused == 1
    assert proxy.requests == 2 * 4 + 1  # one PUT and one HEAD per file, and the failed PUT
    assert len(bucket_contents(s3_client, bucket)) == 4


async def test_persistent_5xx_fails_after_the_attempts(
    publisher: S3Publisher, proxy_factory: Any, bucket: str, tmp_path: Path
) -> None:
    proxy = proxy_factory(10_000)
    with pytest.raises(PublishError) as info:
        await publisher.publish(s3_spec(proxy.url, bucket, key="x/"), ctx_for(make_results(tmp_path, big=False)))
    assert str(info.value).startswith(f"publishing to s3://{bucket}/x/ failed after 3 attempts: ServiceUnavailable")
    assert "(HTTP 503)" in str(info.value) and info.value.attempts == 3


async def test_unreachable_endpoint_fails_after_the_attempts(
    publisher: S3Publisher, bucket: str, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(PublishError) as info:
        await publisher.publish(s3_spec(f"http://127.0.0.1:{port}", bucket), ctx_for(make_results(tmp_path, big=False)))
    assert str(info.value).startswith(f"publishing to s3://{bucket}/job-7/exec-1/ failed after 3 attempts: ")
    assert "Could not connect to the endpoint URL" in str(info.value)


# ------------------------------------------------------------------------------------------ publish_all


async def test_publish_all_reports_each_outcome(s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    results = make_results(tmp_path, big=False)
    specs: list[LocalPublisherSpec | S3PublisherSpec] = [
        LocalPublisherSpec(archive=True),
        s3_spec(s3_endpoint, bucket, key="{execution_id}"),
        s3_spec(s3_endpoint, "missing-bucket-x"),
    ]
    published, errors = await publish_all(specs, ctx_for(results), s3=FAST, policy=LOOPBACK)
    assert [p.spec for p in published] == specs[:2]
    assert published[1].location == f"s3://{bucket}/exec-1/" and published[1].objects == 4
    assert errors == [
        "publishing to s3://missing-bucket-x/job-7/exec-1/ failed: the bucket 'missing-bucket-x' does not exist"
    ]
    assert (results.parent / ARCHIVE_NAME).is_file()
    assert sorted(bucket_contents(s3_client, bucket)) == [
        "exec-1/exitCode",
        "exec-1/outputs/a/b.txt",
        "exec-1/stderr",
        "exec-1/stdout",
    ]
    assert await publish_all([], ctx_for(results)) == ([], [])
    # a failing results dir is a message, not an exception
    _, errors = await publish_all([LocalPublisherSpec()], ctx_for(tmp_path / "gone"))
    assert len(errors) == 1 and "does not exist" in errors[0]


def test_symlinks_never_escape(tmp_path: Path) -> None:
    """The fixture really does hold links to the outside (so the tests above prove they were skipped)."""
    results = make_results(tmp_path, big=False)
    assert os.path.islink(results / "outputs" / "a" / "escape")
    assert (results / "outputs" / "link-dir" / "secret.txt").read_bytes() == b"outside the results dir"


def test_dots_inside_a_name_are_fine() -> None:
    """Execution and job ids may contain '..' inside a name (only a '..' segment is refused)."""
    ctx = PublishContext(
        job_id="a..b", execution_id="e..1", node_id="n", results_dir=Path("/tmp"), when=datetime(2026, 1, 2, tzinfo=UTC)
    )
    assert render_key("{job_id}/{execution_id}/", ctx) == "a..b/e..1/"


async def test_buckets_can_be_restricted(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    settings = FAST.model_copy(update={"publish": S3PublishSettings(allowed_buckets=("results", "team-*"))})
    p = S3Publisher(settings, policy=LOOPBACK)
    try:
        with pytest.raises(PublishError) as refused:
            await p.publish(s3_spec(s3_endpoint, bucket), ctx_for(make_results(tmp_path, big=False)))
    finally:
        await p.aclose()
    assert str(refused.value).endswith(
        f"failed: the bucket {bucket!r} is not one this node publishes to (allowed: results, team-*)"
    )


async def test_private_endpoints_are_refused_before_any_request(bucket: str, tmp_path: Path) -> None:
    from tests.storage.conftest import HttpServer

    server = HttpServer()
    p = S3Publisher(FAST)  # the real policy
    try:
        with pytest.raises(PublishError, match=r"failed: the S3 endpoint .* which is not a public address"):
            await p.publish(s3_spec(f"http://127.0.0.1:{server.port}", bucket), ctx_for(make_results(tmp_path)))
    finally:
        await p.aclose()
        server.close()
    assert sum(server.counts.values()) == 0
