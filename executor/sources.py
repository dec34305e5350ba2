"""Input sources: what a requester asks the node to fetch and mount into a job's container.

Each source names a ``target``, the absolute path in the container where the prepared input is
mounted (same rules as :class:`haddock.executor.request.InputVolume`). Models are frozen, refuse
unknown fields and say plainly what is wrong; :data:`InputSource` is their union, discriminated by
``type``. Also here: the one check of http(s) URLs and of S3 bucket, region and endpoint names
(inputs and publishers alike), :func:`redact_url`, and the ``SOURCE:TARGET`` form people type
(:func:`parse_input`). Pure pydantic and the standard library: fetching is ``haddock.storage``'s.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from haddock.executor.paths import check_container_path as _check_container_path

__all__ = [
    "SYNTAX",
    "DataUrl",
    "InlineSource",
    "InputSource",
    "LocalSource",
    "S3Bucket",
    "S3Endpoint",
    "S3Region",
    "S3Source",
    "UrlSource",
    "check_bucket",
    "check_http_url",
    "describe_source",
    "parse_data_url",
    "parse_input",
    "redact_url",
    "source_from_uri",
]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_URL_LENGTH = 8192
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_TAR_MEDIA_TYPES = frozenset(
    {
        "application/gzip",
        "application/x-gzip",
        "application/x-tar+gzip",
        "application/tar+gzip",
        "application/x-gtar",
        "application/x-tar",
        "application/x-compressed-tar",
    }
)


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(description="absolute path in the container where the input is mounted")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return _check_container_path(v, "input target")


def _check_sha256(v: str | None) -> str | None:
    if v is None:
        return None
    digest = v.strip().lower()
    digest = digest.removeprefix("sha256:")
    if not _SHA256_RE.match(digest):
        raise ValueError(f"sha256 {v!r} must be 64 hexadecimal digits (optionally prefixed with 'sha256:')")
    return digest


# ---------------------------------------------------------------------------------------------- inline


@dataclass(frozen=True)
class DataUrl:
    """A parsed RFC 2397 ``data:`` URL (the payload is not decoded yet)."""

    media_type: str
    params: tuple[str, ...]
    is_base64: bool
    payload: str

    @property
    def is_tarball(self) -> bool:
        """A tar archive (gzip or not) that is unpacked into a directory."""
        return self.media_type in _TAR_MEDIA_TYPES or any(p.lower() == "tar" for p in self.params)

    def decoded_size_estimate(self) -> int:
        """An upper bound of the decoded size, computed without decoding."""
        if self.is_base64:
            chars = sum(1 for c in self.payload if not c.isspace())
            return chars * 3 // 4
        return len(self.payload)

    def decode(self) -> bytes:
        """The payload's bytes; ValueError when it is not valid."""
        raw = urllib.parse.unquote_to_bytes(self.payload)
        if not self.is_base64:
            return raw
        compact = b"".join(raw.split())
        compact += b"=" * (-len(compact) % 4)
        try:
            # the URL-safe alphabet is accepted too
            return base64.b64decode(compact.translate(_URLSAFE), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"the data URL's payload is not valid base64 ({exc})") from None


def parse_data_url(url: str) -> DataUrl:
    """Parse ``data:[<media type>][;param]*[;base64],<data>``; ValueError with a plain message if malformed."""
    if not url[:5].lower() == "data:":
        raise ValueError("data_url must be an RFC 2397 data URL starting with 'data:'")
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ValueError("data_url must contain a ',' between the media type and the data")
    parts = [p.strip() for p in header.split(";")]
    media_type = parts[0].lower() or "text/plain"
    params = [p for p in parts[1:] if p]
    is_base64 = bool(params) and params[-1].lower() == "base64"
    if is_base64:
        params = params[:-1]
    if "/" not in media_type or any(c.isspace() for c in media_type):
        raise ValueError(f"data_url has an invalid media type {parts[0]!r} (expected type/subtype)")
    return DataUrl(media_type=media_type, params=tuple(params), is_base64=is_base64, payload=payload)


class InlineSource(_Source):
    """Data carried in the request itself: a file, or a tar archive (gzip) unpacked into a directory.

    A media type of ``application/gzip``, ``application/x-tar+gzip`` (and the other tar types), or a
    ``;tar`` parameter, marks a tarball: ``data:application/gzip;base64,H4sI...``.
    """

    type: Literal["inline"] = "inline"
    data_url: str = Field(description="RFC 2397 data URL, base64 or percent-encoded")

    @field_validator("data_url")
    @classmethod
    def _data_url(cls, v: str) -> str:
        parse_data_url(v)
        return v

    def parsed(self) -> DataUrl:
        return parse_data_url(self.data_url)


# ----------------------------------------------------------------------------------------------- local


class LocalSource(_Source):
    """A file or directory on the node, under a path the operator allows; mounted without copying."""

    type: Literal["local"] = "local"
    path: str = Field(description="absolute path on the node")
    read_write: bool = Field(default=False, description="mount read-write (only where the operator allows it)")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v:
            raise ValueError("local path must not be empty")
        if "\x00" in v:
            raise ValueError("local path must not contain NUL bytes")
        if not v.startswith("/"):
            raise ValueError(f"local path {v!r} must be an absolute path on the node")
        if ".." in v.split("/"):
            raise ValueError(f"local path {v!r} must not contain '..'")
        return posixpath.normpath(v)


# ------------------------------------------------------------------------------------------------- url


def check_http_url(v: str, what: str) -> str:
    """``v`` when it is an http(s) URL with a host, not too long, without spaces or control characters;
    else ValueError naming ``what`` (and the URL, redacted)."""
    if len(v) > _MAX_URL_LENGTH:
        raise ValueError(f"{what} is longer than {_MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in v):
        raise ValueError(f"{what} must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(v)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{what} {v!r} is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what} {redact_url(v)!r} must use http or https, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise ValueError(f"{what} {redact_url(v)!r} has no host")
    return v


def redact_url(url: str) -> str:
    """The URL fit to show anyone (messages, logs, requesters): scheme, host, port and path only. User
    info, query (which often carries signatures) and fragment are dropped; a URL that cannot be parsed
    becomes ``<invalid URL>``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class UrlSource(_Source):
    """A file downloaded over http(s); mounted as a single read-only FILE at ``target``."""

    type: Literal["url"] = "url"
    url: str
    sha256: str | None = Field(default=None, description="expected SHA-256 of the content (hex)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_http_url(v, "url")

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: str | None) -> str | None:
        return _check_sha256(v)


# -------------------------------------------------------------------------------------------------- s3

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_REGION_RE = re.compile(r"^[a-z0-9-]{1,64}$")


def check_bucket(v: str) -> str:
    """``v`` when it is a valid bucket name, else ValueError saying what one looks like."""
    if not _BUCKET_RE.match(v):
        raise ValueError(
            f"bucket {v!r} is not a valid bucket name (3-255 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )
    return v


def _check_region(v: str | None) -> str | None:
    if v is not None and not _REGION_RE.match(v):
        raise ValueError(f"region {v!r} is not a valid region name (like 'eu-west-1')")
    return v or None


def _check_endpoint(v: str | None) -> str | None:
    return check_http_url(v, "endpoint_url") if v else None


S3Bucket = Annotated[str, AfterValidator(check_bucket)]
"""An S3 bucket name (inputs and publishers alike)."""
S3Region = Annotated[str | None, AfterValidator(_check_region)]
"""An AWS region name, or None (inputs and publishers alike)."""
S3Endpoint = Annotated[str | None, AfterValidator(_check_endpoint)]
"""An http(s) endpoint of an S3-compatible server, or None for AWS (inputs and publishers alike)."""


class S3Source(_Source):
    """One object (``key``) mounted as a file, or every object under ``prefix`` as a directory tree.

    Exactly one of ``key`` and ``prefix``. ``filter`` is a regular expression searched in each key
    under the prefix (``re.search``); ``version_id`` and ``sha256`` apply to a single object.
    """

    type: Literal["s3"] = "s3"
    bucket: S3Bucket
    key: str = ""
    prefix: str = ""
    filter: str | None = Field(default=None, description="regular expression searched in keys under the prefix")
    region: S3Region = None
    endpoint_url: S3Endpoint = Field(default=None, description="for S3-compatible servers")
    version_id: str | None = None
    sha256: str | None = Field(default=None, description="expected SHA-256 of the object (hex)")

    @field_validator("key", "prefix")
    @classmethod
    def _key(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("S3 keys must not contain NUL bytes")
        if len(v.encode()) > 1024:
            raise ValueError("S3 keys are at most 1024 bytes long")
        return v

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"filter {v!r} is not a valid regular expression: {exc}") from None
        return v

    @field_validator("version_id")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None and (not v or "\x00" in v or len(v) > 1024):
            raise ValueError("version_id must be a non-empty string")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: str | None) -> str | None:
        return _check_sha256(v)

    @model_validator(mode="after")
    def _key_or_prefix(self) -> S3Source:
        if bool(self.key) == bool(self.prefix):
            raise ValueError("give exactly one of key (a single object) and prefix (a directory of objects)")
        if self.key.endswith("/"):
            raise ValueError(f"key {self.key!r} ends with '/': use prefix for a directory of objects")
        if self.prefix:
            if self.version_id is not None:
                raise ValueError("version_id applies to a single object (key), not to a prefix")
            if self.sha256 is not None:
                raise ValueError("sha256 applies to a single object (key), not to a prefix")
        elif self.filter is not None:
            raise ValueError("filter applies to the objects under a prefix, not to a single key")
        return self

    @property
    def url(self) -> str:
        """``s3://bucket/key`` (or the prefix followed by ``*``), for messages."""
        if self.key:
            suffix = f"?versionId={self.version_id}" if self.version_id else ""
            return f"s3://{self.bucket}/{self.key}{suffix}"
        return f"s3://{self.bucket}/{self.prefix}*"


InputSource = Annotated[InlineSource | LocalSource | UrlSource | S3Source, Field(discriminator="type")]


def describe_source(source: InlineSource | LocalSource | UrlSource | S3Source) -> str:
    """How messages name an input: its type and what identifies it (never its data or credentials)."""
    if isinstance(source, InlineSource):
        return f"inline input for {source.target}"
    if isinstance(source, LocalSource):
        return f"local input {source.path}"
    if isinstance(source, UrlSource):
        return f"url input {redact_url(source.url)}"
    text = f"s3 input {source.url}"
    if source.filter is not None:
        text += f" (filter {source.filter!r})"
    return text


# ------------------------------------------------------------------------------- the typed form (URIs)
#
# Input sources written as URIs, as people type them: ``SOURCE:TARGET[:ro|:rw]``.
#
# SOURCE is one of ``file:///abs/path``, ``http(s)://...`` (an optional ``#sha256=<hex>`` fragment
# checks the content), ``s3://bucket/key`` or ``s3://bucket/prefix/`` (a trailing ``/`` means every
# object under the prefix; query ``?region=&endpoint=&version=&filter=&sha256=``), or ``data:...``.
# TARGET is the absolute path in the container; the last ``:/`` separates it from the source.
# ``:ro`` / ``:rw`` (local sources only) choose read-only (the default) or read-write.

_ADAPTER: TypeAdapter[InputSource] = TypeAdapter(InputSource)

SYNTAX = "SOURCE:TARGET[:ro|:rw], e.g. https://host/data.csv:/data/data.csv or file:///srv/in:/in:ro"


def source_from_uri(uri: str, target: str, *, read_write: bool = False) -> InputSource:
    """The input source a URI names, mounted at ``target``. Raises ValueError with a clear message."""
    scheme = uri.split(":", 1)[0].lower()
    data: dict[str, object]
    if scheme == "data":
        data = {"type": "inline", "data_url": uri, "target": target}
    elif scheme == "file":
        parsed = urllib.parse.urlsplit(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{uri!r}: a file URI names a path on the node, like file:///srv/data")
        data = {"type": "local", "path": urllib.parse.unquote(parsed.path), "target": target, "read_write": read_write}
    elif scheme in ("http", "https"):
        base, _, fragment = uri.partition("#")
        sha = dict(urllib.parse.parse_qsl(fragment)).get("sha256") if fragment else None
        data = {"type": "url", "url": base, "target": target, "sha256": sha}
    elif scheme == "s3":
        parsed = urllib.parse.urlsplit(uri)
        if not parsed.netloc:
            raise ValueError(f"{uri!r}: an S3 URI is s3://bucket/key or s3://bucket/prefix/")
        path = urllib.parse.unquote(parsed.path.lstrip("/"))
        query = dict(urllib.parse.parse_qsl(parsed.query))
        unknown = set(query) - {"region", "endpoint", "version", "filter", "sha256"}
        if unknown:
            raise ValueError(f"{uri!r}: unknown S3 options {', '.join(sorted(unknown))}")
        data = {
            "type": "s3",
            "bucket": parsed.netloc,
            "target": target,
            "region": query.get("region"),
            "endpoint_url": query.get("endpoint"),
        }
        if path.endswith("/") or not path:
            data |= {"prefix": path, "filter": query.get("filter")}
        else:
            data |= {"key": path, "version_id": query.get("version"), "sha256": query.get("sha256")}
    else:
        raise ValueError(f"{uri!r} is not a supported input source (file://, http(s)://, s3://, data:)")
    if read_write and scheme != "file":
        raise ValueError(f"{uri!r}: only local (file://) inputs can be read-write")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"{uri!r}: {problems}") from None


def parse_input(spec: str) -> InputSource:
    """``SOURCE:TARGET[:ro|:rw]`` as typed on a command line."""
    text = spec.strip()
    read_write = False
    if text.endswith((":ro", ":rw")):
        read_write = text.endswith(":rw")
        text = text[:-3]
    source, sep, target = text.rpartition(":/")
    if not sep or not source or target.startswith("/"):  # ...or that ':/' was the scheme's '://'
        raise ValueError(f"input {spec!r} must be {SYNTAX}")
    return source_from_uri(source, "/" + target, read_write=read_write)
