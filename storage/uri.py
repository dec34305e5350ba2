"""Input sources written as URIs, as people type them: ``SOURCE:TARGET[:ro|:rw]``.

SOURCE is one of ``file:///abs/path``, ``http(s)://...`` (an optional ``#sha256=<hex>`` fragment
checks the content), ``s3://bucket/key`` or ``s3://bucket/prefix/`` (a trailing ``/`` means every
object under the prefix; query ``?region=&endpoint=&version=&filter=&sha256=``), or ``data:...``.
TARGET is the absolute path in the container; the last ``:/`` separates it from the source.
``:ro`` / ``:rw`` (local sources only) choose read-only (the default) or read-write.
"""

from __future__ import annotations

import urllib.parse

from pydantic import TypeAdapter, ValidationError

from haddock.storage.models import InputSource

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
