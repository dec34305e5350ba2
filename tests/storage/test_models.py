"""Input source models: validation with plain messages, the discriminated union."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from haddock.executor.sources import (
    InlineSource,
    InputSource,
    LocalSource,
    S3Source,
    UrlSource,
    describe_source,
    parse_data_url,
    redact_url,
)

ADAPTER: TypeAdapter[InputSource] = TypeAdapter(InputSource)


def test_union_is_discriminated_by_type() -> None:
    src = ADAPTER.validate_python({"type": "url", "url": "https://example.com/a.csv", "target": "/in/a.csv"})
    assert isinstance(src, UrlSource)
    src = ADAPTER.validate_python({"type": "s3", "bucket": "bkt", "key": "k", "target": "/in/k"})
    assert isinstance(src, S3Source)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        ADAPTER.validate_python({"type": "ipfs", "cid": "x", "target": "/in"})


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("relative/path", "must be an absolute path inside the container"),
        ("/in/../etc", "must not contain '..'"),
        ("/", "must not be the container's root directory"),
        ("", "must not be empty"),
    ],
)
def test_target_rules_are_the_executors(target: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LocalSource(path="/data/x", target=target)


def test_target_is_normalized_and_models_are_frozen_and_strict() -> None:
    src = LocalSource(path="/data//x/", target="/in//x/")
    assert (src.path, src.target, src.read_write) == ("/data/x", "/in/x", False)
    with pytest.raises(ValidationError):
        src.target = "/other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LocalSource.model_validate({"path": "/data/x", "target": "/in", "mode": "rw"})


@pytest.mark.parametrize(
    ("path", "message"),
    [("data/x", "must be an absolute path"), ("/data/../etc", "must not contain '..'"), ("", "must not be empty")],
)
def test_local_path_rules(path: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LocalSource(path=path, target="/in")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "must use http or https"),
        ("file:///etc/passwd", "must use http or https"),
        ("https:///nohost", "has no host"),
        ("http://example.com/a b", "must not contain spaces"),
        ("http://example.com:99999/x", "not a valid URL"),
    ],
)
def test_url_rules(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UrlSource(url=url, target="/in/x")


def test_sha256_is_normalized_and_checked() -> None:
    digest = "AB" * 32
    assert UrlSource(url="http://h/x", target="/x", sha256=f"sha256:{digest}").sha256 == digest.lower()
    with pytest.raises(ValidationError, match="must be 64 hexadecimal digits"):
        UrlSource(url="http://h/x", target="/x", sha256="abc")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of key"),
        ({"key": "a", "prefix": "b/"}, "exactly one of key"),
        ({"prefix": "p/", "version_id": "v1"}, "version_id applies to a single object"),
        ({"prefix": "p/", "sha256": "a" * 64}, "sha256 applies to a single object"),
        ({"key": "k", "filter": "x"}, "filter applies to the objects under a prefix"),
        ({"key": "dir/"}, "use prefix"),
        ({"prefix": "p/", "filter": "("}, "not a valid regular expression"),
        ({"key": "k", "endpoint_url": "s3://x"}, "must use http or https"),
        ({"key": "k", "region": "EU WEST"}, "not a valid region name"),
    ],
)
def test_s3_rules(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        S3Source(bucket="bkt", target="/in", **fields)  # type: ignore[arg-type]


def test_s3_bucket_name_checked() -> None:
    with pytest.raises(ValidationError, match="not a valid bucket name"):
        S3Source(bucket="a/b", key="k", target="/in")


def test_data_url_parsing() -> None:
    d = parse_data_url("data:application/gzip;base64,H4sI")
    assert (d.media_type, d.is_base64, d.is_tarball, d.payload) == ("application/gzip", True, True, "H4sI")
    d = parse_data_url("data:,hello%20world")
    assert (d.media_type, d.is_base64, d.is_tarball, d.decode()) == ("text/plain", False, False, b"hello world")
    assert parse_data_url("data:application/octet-stream;tar;base64,AAAA").is_tarball
    assert parse_data_url("data:text/plain;charset=utf-8;base64,aGk=").decode() == b"hi"
    assert parse_data_url("data:;base64,-_8=").decode() == b"\xfb\xff"  # URL-safe alphabet
    with pytest.raises(ValidationError, match="starting with 'data:'"):
        InlineSource(data_url="http://x", target="/in")
    with pytest.raises(ValidationError, match="must contain a ','"):
        InlineSource(data_url="data:text/plain", target="/in")
    with pytest.raises(ValueError, match="not valid base64"):
        parse_data_url("data:;base64,%%%%").decode()


def test_descriptions_name_the_input_without_secrets() -> None:
    assert describe_source(LocalSource(path="/data/x", target="/in")) == "local input /data/x"
    url = UrlSource(url="https://user:pw@example.com/f.csv?X-Amz-Signature=secret", target="/in")
    # one redact_url for the whole node (it was also in node/bidding.py): user info and query dropped
    assert describe_source(url) == "url input https://example.com/f.csv"
    assert "secret" not in describe_source(url) and "pw" not in describe_source(url)
    assert redact_url("http://h/p#frag") == "http://h/p"
    assert redact_url("https://u:p@h.example:8443/x?y=1#z") == "https://h.example:8443/x"
    assert redact_url("http://[::1/x") == "<invalid URL>"
    s3 = S3Source(bucket="bkt", key="a/b.csv", version_id="v1", target="/in")
    assert describe_source(s3) == "s3 input s3://bkt/a/b.csv?versionId=v1"
    s3p = S3Source(bucket="bkt", prefix="a/", filter=r"\.csv$", target="/in")
    assert describe_source(s3p) == "s3 input s3://bkt/a/* (filter '\\\\.csv$')"
    inline = InlineSource(data_url="data:,secret", target="/in/x")
    assert describe_source(inline) == "inline input for /in/x"
