"""Publisher specs: where a requester asks the node to put an execution's results (domain data,
carried by :class:`haddock.executor.request.RunCommandRequest`; ``haddock.storage.publish`` does the work).

:data:`PublisherSpec` is JSON discriminated by ``type``; :func:`parse_publisher` reads the CLI form::

    local                        the results stay in the results dir
    local+archive                ... and results.tar.gz is written beside it (<results_dir>/../results.tar.gz)
    s3://bucket                  every file uploaded under the key prefix {job_id}/{execution_id}/
    s3://bucket/runs/{date}/{execution_id}/?region=eu-west-1&endpoint=http://minio:9000&archive=1

**Key templates**: ``{job_id}``, ``{execution_id}``, ``{node_id}`` and ``{date}`` (UTC, YYYY-MM-DD).
Any other placeholder, and any brace that is not part of one, is refused when the spec is validated.
A rendered key (:func:`fill_key_template`) must not start with ``/``, contain ``..`` or an empty
segment (``//``).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from haddock.executor.sources import S3Bucket, S3Endpoint, S3Region

__all__ = [
    "CLI_FORMS",
    "DEFAULT_KEY",
    "KEY_PLACEHOLDERS",
    "PUBLISHER_SPEC_ADAPTER",
    "LocalPublisherSpec",
    "PublisherSpec",
    "S3PublisherSpec",
    "check_key_template",
    "describe_publisher",
    "fill_key_template",
    "parse_publisher",
]

DEFAULT_KEY = "{job_id}/{execution_id}/"
KEY_PLACEHOLDERS = ("job_id", "execution_id", "node_id", "date")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_KNOWN = ", ".join("{" + n + "}" for n in KEY_PLACEHOLDERS)
_MAX_KEY_BYTES = 1024
CLI_FORMS = "'local', 'local+archive' or 's3://bucket[/key-prefix][?region=..&endpoint=..&archive=1]'"


# ------------------------------------------------------------------------------------------ key templates


def check_key_template(template: str) -> str:
    """The template itself, or ValueError saying what is wrong with it (placeholders, braces, '..', '/')."""
    if not template:
        raise ValueError(f"key must not be empty: give a prefix such as {DEFAULT_KEY!r}")
    if "\x00" in template:
        raise ValueError("key must not contain NUL bytes")
    if len(template.encode(errors="surrogatepass")) > _MAX_KEY_BYTES:
        raise ValueError(f"key is longer than {_MAX_KEY_BYTES} bytes")
    for name in _PLACEHOLDER_RE.findall(template):
        if name not in KEY_PLACEHOLDERS:
            raise ValueError(f"key {template!r} has an unknown placeholder {{{name}}}; the placeholders are {_KNOWN}")
    if any(c in _PLACEHOLDER_RE.sub("", template) for c in "{}"):
        raise ValueError(
            f"key {template!r} has a '{{' or '}}' that is not part of a placeholder; the placeholders are {_KNOWN}"
        )
    _check_key_text(template, _PLACEHOLDER_RE.sub("x", template))
    return template


def _check_key_text(template: str, key: str) -> None:
    shown = repr(template) if key == template else f"{template!r} (rendered {key!r})"
    if key.startswith("/"):
        raise ValueError(f"key {shown} must not start with '/'")
    if ".." in key.split("/"):  # a '..' segment; names like 'a..b' are fine
        raise ValueError(f"key {shown} must not contain '..'")
    if "//" in key:
        raise ValueError(f"key {shown} must not contain an empty path segment ('//')")


def fill_key_template(template: str, values: Mapping[str, str]) -> str:
    """The key template with its placeholders filled in from ``values`` (one per :data:`KEY_PLACEHOLDERS`).
    ValueError for an invalid template or a rendered key that starts with '/', contains '..' or an empty
    segment, a NUL byte, or is too long."""
    check_key_template(template)
    key = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)
    _check_key_text(template, key)
    if "\x00" in key:
        raise ValueError(f"key {template!r} renders to a key with a NUL byte")
    if len(key.encode(errors="surrogatepass")) > _MAX_KEY_BYTES:
        raise ValueError(f"key {template!r} renders to a key longer than {_MAX_KEY_BYTES} bytes")
    return key


# ----------------------------------------------------------------------------------------------- specs


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalPublisherSpec(_Spec):
    """The results stay in the results dir; ``archive`` also writes ``results.tar.gz`` beside it."""

    type: Literal["local"] = "local"
    archive: bool = Field(default=False, description="also write <results_dir>/../results.tar.gz")


class S3PublisherSpec(_Spec):
    """Every file of the results dir uploaded under the rendered ``key`` prefix, or with ``archive`` a
    single ``<prefix>results.tar.gz``."""

    type: Literal["s3"] = "s3"
    bucket: S3Bucket
    key: str = Field(default=DEFAULT_KEY, description=f"key prefix template; placeholders {_KNOWN}")
    region: S3Region = None
    endpoint_url: S3Endpoint = Field(default=None, description="for S3-compatible servers")
    archive: bool = Field(default=False, description="upload one results.tar.gz instead of every file")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        return check_key_template(v)


PublisherSpec = Annotated[LocalPublisherSpec | S3PublisherSpec, Field(discriminator="type")]
PUBLISHER_SPEC_ADAPTER: TypeAdapter[LocalPublisherSpec | S3PublisherSpec] = TypeAdapter(PublisherSpec)


def describe_publisher(spec: LocalPublisherSpec | S3PublisherSpec) -> str:
    """How messages name a publisher before its key is rendered."""
    if isinstance(spec, LocalPublisherSpec):
        return "local results dir" + (" (with archive)" if spec.archive else "")
    return f"s3://{spec.bucket}/{spec.key}"


def parse_publisher(text: str) -> LocalPublisherSpec | S3PublisherSpec:
    """The CLI form: ``local``, ``local+archive`` or ``s3://bucket[/key-template][?region=..&endpoint=..&archive=1]``
    (no key: ``{job_id}/{execution_id}/``). The key is taken literally (no percent-decoding).
    ValueError with a plain message for anything else."""
    raw = text.strip()
    lowered = raw.lower()
    if lowered in ("local", "local+archive"):
        return LocalPublisherSpec(archive=lowered == "local+archive")
    if lowered.startswith("s3://"):
        return _parse_s3(text, raw[len("s3://") :])
    if not raw:
        raise ValueError(f"a publisher must not be empty: use {CLI_FORMS}")
    raise ValueError(f"publisher {text!r} is not understood: use {CLI_FORMS}")


def _parse_s3(text: str, rest: str) -> S3PublisherSpec:
    location, _, query = rest.partition("?")
    bucket, _, key = location.partition("/")
    if not bucket:
        raise ValueError(f"publisher {text!r} names no bucket: use s3://bucket/key-prefix/")
    fields: dict[str, Any] = {"bucket": bucket}
    if key:
        fields["key"] = key
    seen: set[str] = set()
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        canonical = {"endpoint": "endpoint_url"}.get(name, name)
        if canonical in seen:
            raise ValueError(f"publisher {text!r} gives {name!r} twice")
        seen.add(canonical)
        if canonical in ("region", "endpoint_url"):
            fields[canonical] = value
        elif canonical == "archive":
            fields["archive"] = _flag(text, value)
        else:
            raise ValueError(f"publisher {text!r} has an unknown parameter {name!r} (known: region, endpoint, archive)")
    try:
        return S3PublisherSpec(**fields)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"publisher {text!r}: {problems}") from None


def _flag(text: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("", "1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"publisher {text!r}: archive={value!r} must be 1/true/yes or 0/false/no")
