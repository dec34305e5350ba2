"""Tasks files: one execution per row, like hotsub's and dsub's ``--tasks FILE.tsv``.

``haddock submit --tasks FILE.tsv IMAGE -- CMD`` runs the same image and command once per row. The
file is UTF-8 (a BOM is ignored; LF or CRLF line endings) and tab-separated. The first line that is
neither empty nor a ``#`` comment is the header; it says what each column is::

    --env SAMPLE	--input READS	--input-recursive REF	--output BAM	--output-recursive QC
    s1	s3://lab/reads/s1.fq.gz	s3://lab/ref/hg38/	s3://lab/out/s1.bam	s3://lab/qc/s1/
    s2	https://example.org/s2.fq.gz	file:///data/ref/hg38:ro	s2.bam	qc/s2

Column headers (``NAME`` is an environment variable name: letters, digits and ``_``, not starting
with a digit nor with the node's reserved prefix ``HADDOCK_`` in any case; names are unique across
all columns, ignoring case):

``--env NAME``
    the cell is the value of ``NAME`` (may be empty; may contain spaces, not tabs).
``--input NAME``
    the cell is a source URI localized to a FILE: ``file:///abs/path`` (optionally ``:ro`` or
    ``:rw``), ``http(s)://...`` (``#sha256=<hex>`` checks it), ``s3://bucket/key`` or a ``data:``
    URL that is not a tar archive.
``--input-recursive NAME``
    a directory: ``file:///abs/dir`` (``:ro``/``:rw``), ``s3://bucket/prefix/`` (ending with ``/``)
    or a ``data:`` URL holding a tar archive (unpacked).
``--output NAME``
    where one output file ends up: ``s3://bucket/key``, ``file:///abs/path``, or a relative name
    (no ``..``, no empty segment). An S3 key is taken literally; a ``?query`` is kept in
    :attr:`TaskOutput.destination` for the publisher to read.
``--output-recursive NAME``
    where an output directory ends up: the same kinds of destination.

Input URIs are read as :func:`storage.uri.source_from_uri` reads them (``file:`` and ``s3:`` paths
are percent-decoded; ``s3://`` takes ``?region=&endpoint=&version=&filter=&sha256=``), and every input
is checked by building its storage source, so :meth:`TaskInput.source` cannot fail later.

For every input and output column, ``NAME`` is set in the container to the path of the localized
input or of the output the job writes. The layout is deterministic: it depends only on the column's
NAME and, for files, on the last segment of the cell's URI (so tools that look at extensions work):

========================  ==============================================
``--input NAME``          ``/haddock/inputs/NAME/<basename of the URI>``
``--input-recursive``     ``/haddock/inputs/NAME``
``--output NAME``         ``/haddock/outputs/NAME/<basename of the destination>``
``--output-recursive``    ``/haddock/outputs/NAME``
========================  ==============================================

A basename that is empty, ``.``/``..``, not printable or longer than 200 bytes is replaced by
``input`` (or ``output``); a ``data:`` input is always named ``data``. Each output is collected as the
executor's result ``out-<name in lower case>`` (a safe single path segment) from its directory,
:attr:`TaskOutput.collect_dir`.

Lines are split on ``\\n`` only (a ``\\r`` before it is dropped); a cell is never stripped. Because a
line starting with ``#`` is a comment, a row whose first cell starts with ``#`` is skipped too.
Every problem raises :class:`TasksFileError`, whose message names the file, the line and the column.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from haddock.executor.request import RESERVED_ENV_PREFIX
from haddock.executor.sources import InputSource, parse_data_url, redact_url, source_from_uri

INPUTS_ROOT = "/haddock/inputs"
OUTPUTS_ROOT = "/haddock/outputs"
OUTPUT_NAME_PREFIX = "out-"
MAX_TASKS = 10_000
MAX_OUTPUT_NAME = 128  # executor.request.ResultPath's limit
MAX_BASENAME_BYTES = 200
INPUT_FALLBACK_NAME = "input"
OUTPUT_FALLBACK_NAME = "output"
DATA_INPUT_NAME = "data"

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")  # storage's rule for bucket names
_MAX_URL_LENGTH = 8192
_MAX_KEY_BYTES = 1024
_INPUT_SCHEMES = frozenset({"file", "http", "https", "s3", "data"})
_SHOWN_CHARS = 80
_ACCESS_SUFFIXES = (":ro", ":rw")
_INPUT_KINDS = "file://, http(s)://, s3://, data:"
_OUTPUT_KINDS = "s3://, file:///abs/path, or a relative name"


class ColumnKind(StrEnum):
    ENV = "--env"
    INPUT = "--input"
    INPUT_RECURSIVE = "--input-recursive"
    OUTPUT = "--output"
    OUTPUT_RECURSIVE = "--output-recursive"


class TasksFileError(ValueError):
    """A tasks file that cannot be used; the message names the file, line and column."""


@dataclass(frozen=True)
class TaskInput:
    """One input of a task: ``uri`` (without any ``:ro``/``:rw`` suffix) mounted at ``container_path``."""

    name: str
    uri: str
    recursive: bool
    container_path: str
    read_write: bool = False

    def source(self) -> InputSource:
        """The storage input source to prepare (:func:`storage.uri.source_from_uri`); the parser has
        already checked that this succeeds."""
        return source_from_uri(self.uri, self.container_path, read_write=self.read_write)


@dataclass(frozen=True)
class TaskOutput:
    """One output of a task: the job writes ``container_path``; it ends up at ``destination``."""

    name: str
    destination: str
    recursive: bool
    container_path: str
    output_name: str

    @property
    def collect_dir(self) -> str:
        """The directory the executor collects as result ``output_name`` (ResultPath.path)."""
        return self.container_path if self.recursive else self.container_path.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Task:
    """One row: ``index`` counts the rows from 1 (comments and blank lines do not count)."""

    index: int
    env: dict[str, str]
    inputs: list[TaskInput]
    outputs: list[TaskOutput]


@dataclass(frozen=True)
class _Column:
    kind: ColumnKind
    name: str

    @property
    def header(self) -> str:
        return f"{self.kind.value} {self.name}"


def load_tasks(path: Path) -> list[Task]:
    """Read and parse a tasks file; messages name it as ``path`` was given."""
    filename = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TasksFileError(f"cannot read tasks file {filename}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TasksFileError(
            f"{filename} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded)"
        ) from None
    return parse_tasks(text, filename=filename)


def parse_tasks(text: str, *, filename: str = "tasks") -> list[Task]:
    """The tasks of a tasks file's text, in order; TasksFileError for the first problem found."""
    columns: list[_Column] | None = None
    tasks: list[Task] = []
    for lineno, raw in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        if columns is None:
            columns = _parse_header(line, filename, lineno)
            continue
        if len(tasks) == MAX_TASKS:
            raise TasksFileError(f"{filename} line {lineno}: more than {MAX_TASKS} tasks (split the file)")
        tasks.append(_parse_row(line, columns, len(tasks) + 1, filename, lineno))
    if columns is None:
        raise TasksFileError(f"{filename}: no header (expected tab-separated columns like '--env NAME')")
    if not tasks:
        raise TasksFileError(f"{filename}: no tasks (a header but no rows)")
    return tasks


# --------------------------------------------------------------------------------------------- header


def _parse_header(line: str, filename: str, lineno: int) -> list[_Column]:
    columns: list[_Column] = []
    seen: dict[str, _Column] = {}
    kinds = {k.value: k for k in ColumnKind}
    for number, cell in enumerate(line.split("\t"), 1):
        parts = cell.split()
        if len(parts) != 2 or parts[0] not in kinds:
            raise TasksFileError(
                f"{filename} line {lineno}, column {number}: {cell!r} is not a column header (expected "
                "'--env NAME', '--input NAME', '--input-recursive NAME', '--output NAME' or '--output-recursive NAME')"
            )
        column = _Column(kinds[parts[0]], parts[1])
        where = f"{filename} line {lineno}, column '{column.header}'"
        name = column.name
        if not _ENV_NAME_RE.match(name):
            raise TasksFileError(
                f"{where}: environment variable name {name!r} is not valid: use letters, digits and '_', "
                "not starting with a digit"
            )
        if name.upper().startswith(RESERVED_ENV_PREFIX):
            raise TasksFileError(
                f"{where}: environment variable {name!r} uses the prefix {RESERVED_ENV_PREFIX!r}, "
                "which is reserved for variables the node sets"
            )
        if column.kind in (ColumnKind.OUTPUT, ColumnKind.OUTPUT_RECURSIVE):
            longest = MAX_OUTPUT_NAME - len(OUTPUT_NAME_PREFIX)
            if len(name) > longest:
                raise TasksFileError(f"{where}: an output's name must be at most {longest} characters long")
        previous = seen.get(name.lower())
        if previous is not None:
            raise TasksFileError(
                f"{where}: the name {name!r} is already used by column '{previous.header}' "
                "(names must be unique, ignoring case)"
            )
        seen[name.lower()] = column
        columns.append(column)
    return columns


# ----------------------------------------------------------------------------------------------- rows


def _parse_row(line: str, columns: list[_Column], index: int, filename: str, lineno: int) -> Task:
    cells = line.split("\t")
    if len(cells) != len(columns):
        raise TasksFileError(
            f"{filename} line {lineno}: {_count(len(cells), 'cell')} but the header has "
            f"{_count(len(columns), 'column')} (cells are separated by tabs; values cannot contain tabs)"
        )
    env: dict[str, str] = {}
    inputs: list[TaskInput] = []
    outputs: list[TaskOutput] = []
    for column, cell in zip(columns, cells, strict=True):
        try:
            if "\x00" in cell:
                raise ValueError("the value must not contain NUL bytes")
            if column.kind is ColumnKind.ENV:
                env[column.name] = cell
            elif column.kind in (ColumnKind.INPUT, ColumnKind.INPUT_RECURSIVE):
                task_input = _parse_input(column.name, cell, recursive=column.kind is ColumnKind.INPUT_RECURSIVE)
                inputs.append(task_input)
                env[column.name] = task_input.container_path
            else:
                output = _parse_output(column.name, cell, recursive=column.kind is ColumnKind.OUTPUT_RECURSIVE)
                outputs.append(output)
                env[column.name] = output.container_path
        except ValueError as exc:
            raise TasksFileError(f"{filename} line {lineno}, column '{column.header}': {exc}") from None
    return Task(index=index, env=env, inputs=inputs, outputs=outputs)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _show(value: str) -> str:
    """A cell as messages quote it: URLs without credentials or query, long values cut."""
    if value[:8].lower().startswith(("http://", "https://")):
        value = redact_url(value)
    if len(value) > _SHOWN_CHARS:
        value = value[: _SHOWN_CHARS - 3] + "..."
    return repr(value)


def _segment(name: str, fallback: str) -> str:
    """``name`` if it is one safe path segment, else ``fallback``."""
    if (
        name in ("", ".", "..")
        or "/" in name
        or not name.isprintable()
        or len(name.encode("utf-8", "surrogatepass")) > MAX_BASENAME_BYTES
    ):
        return fallback
    return name


def _file_path(cell: str, uri: str, *, directory_ok: bool, flag: str) -> str:
    """The path a ``file:`` URI names, read as :mod:`storage.uri` reads it (percent-decoded, host empty
    or ``localhost``); ValueError unless it is absolute and free of '..'."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        raise ValueError(f"{_show(cell)} is not a valid URI ({exc})") from None
    path = urllib.parse.unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path.startswith("/"):
        raise ValueError(f"{_show(cell)} does not name an absolute path on the node: write file:///abs/path")
    segments = path.split("/")
    if ".." in segments:
        raise ValueError(f"{_show(cell)} must not contain '..'")
    if not directory_ok and (path.endswith("/") or not any(segments)):
        raise ValueError(f"{_show(cell)} names a directory: use {flag}")
    return path


def _last(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _parse_input(name: str, cell: str, *, recursive: bool) -> TaskInput:
    if not cell:
        raise ValueError("an input needs a source URI (the cell is empty)")
    scheme = cell.partition(":")[0].lower()
    if scheme not in _INPUT_SCHEMES:
        hint = "; write a path on the node as file:///abs/path" if cell.startswith("/") else ""
        raise ValueError(f"{_show(cell)} is not a supported input ({_INPUT_KINDS}){hint}")
    uri, read_write = cell, False
    if cell.endswith(_ACCESS_SUFFIXES) and scheme != "data":  # a data URL's payload is literal
        if scheme != "file":
            raise ValueError(f"{_show(cell)}: the ':ro'/':rw' suffix is only for file:// inputs")
        uri, read_write = cell[:-3], cell.endswith(":rw")
    if scheme == "file":
        basename = _last(_file_path(cell, uri, directory_ok=recursive, flag="--input-recursive"))
    elif scheme == "data":
        _check_data(cell, recursive=recursive)
        basename = DATA_INPUT_NAME
    elif scheme == "s3":
        basename = _check_s3_input(cell, recursive=recursive)
    else:
        basename = _check_http(cell, recursive=recursive)
    if recursive:
        container_path = f"{INPUTS_ROOT}/{name}"
    else:
        container_path = f"{INPUTS_ROOT}/{name}/{_segment(basename, INPUT_FALLBACK_NAME)}"
    task_input = TaskInput(
        name=name, uri=uri, recursive=recursive, container_path=container_path, read_write=read_write
    )
    try:
        task_input.source()  # everything storage checks: bucket names, sha256, S3 options...
    except ValueError as exc:
        raise ValueError(str(exc).replace(repr(uri), _show(cell))) from None
    return task_input


def _check_data(cell: str, *, recursive: bool) -> None:
    try:
        data_url = parse_data_url(cell)
    except ValueError as exc:
        raise ValueError(f"{_show(cell)} is not a valid data URL ({exc})") from None
    if data_url.is_tarball and not recursive:
        raise ValueError(f"{_show(cell)} is a tar archive, which is unpacked into a directory: use --input-recursive")
    if recursive and not data_url.is_tarball:
        raise ValueError(
            f"{_show(cell)} is not a tar archive (a tar media type such as application/gzip, "
            "or a ';tar' parameter): use --input for a single file"
        )


def _check_s3_input(cell: str, *, recursive: bool) -> str:
    """The key's last segment; ValueError unless the URI names an object (or, recursive, a prefix)."""
    try:
        parts = urllib.parse.urlsplit(cell)
    except ValueError as exc:
        raise ValueError(f"{_show(cell)} is not a valid URI ({exc})") from None
    if not parts.netloc:
        raise ValueError(f"{_show(cell)} names no bucket: write s3://bucket/key")
    key = urllib.parse.unquote(parts.path.lstrip("/"))
    if recursive:
        if not key:
            raise ValueError(f"{_show(cell)} names a whole bucket: give a prefix, like s3://bucket/prefix/")
        if not key.endswith("/"):
            raise ValueError(
                f"{_show(cell)} names a single object: a directory of objects ends with '/', like s3://bucket/prefix/"
            )
    elif not key:
        raise ValueError(f"{_show(cell)} names no object: write s3://bucket/key")
    elif key.endswith("/"):
        raise ValueError(f"{_show(cell)} names a directory: use --input-recursive")
    return _last(key)


def _check_http(cell: str, *, recursive: bool) -> str:
    """The URL's file name (its path's last segment, decoded); ValueError if the URL is not usable."""
    if len(cell) > _MAX_URL_LENGTH:
        raise ValueError(f"{_show(cell)} is longer than {_MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in cell):
        raise ValueError(f"{_show(cell)} must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(cell)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{_show(cell)} is not a valid URL ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"{_show(cell)} has no host")
    if recursive:
        raise ValueError(f"{_show(cell)}: an http(s) URL is a single file: use --input")
    return urllib.parse.unquote(_last(parts.path))


def _check_key(cell: str, key: str) -> None:
    """An S3 key or a relative name: no '..' segment, no empty segment, not too long."""
    if ".." in key.split("/"):
        raise ValueError(f"{_show(cell)} must not contain '..'")
    if "//" in key:
        raise ValueError(f"{_show(cell)} must not contain an empty path segment ('//')")
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        raise ValueError(f"{_show(cell)} is longer than {_MAX_KEY_BYTES} bytes")


def _parse_output(name: str, cell: str, *, recursive: bool) -> TaskOutput:
    if not cell:
        raise ValueError("an output needs a destination (the cell is empty)")
    flag = "--output-recursive"
    if cell.endswith(_ACCESS_SUFFIXES):
        raise ValueError(f"{_show(cell)}: the ':ro'/':rw' suffix is only for file:// inputs")
    scheme, sep, rest = cell.partition("://")
    if not sep:
        path = cell
        if path.startswith("/"):
            raise ValueError(f"{_show(cell)} is not a supported output ({_OUTPUT_KINDS}); write file://{path}")
        _check_key(cell, path)
    elif scheme.lower() == "s3":
        bucket, _, path = rest.partition("?")[0].partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(
                f"{_show(cell)} has no valid bucket name (3-255 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit)"
            )
        _check_key(cell, path)
        if path.startswith("/"):
            raise ValueError(f"{_show(cell)} must not contain an empty path segment ('//')")
        if not recursive and not path:
            raise ValueError(f"{_show(cell)} names no object: write s3://bucket/key")
    elif scheme.lower() == "file":
        path = _file_path(cell, cell, directory_ok=recursive, flag=flag)
    else:
        raise ValueError(f"{_show(cell)} is not a supported output ({_OUTPUT_KINDS})")
    if not recursive and path.endswith("/"):
        raise ValueError(f"{_show(cell)} names a directory: use {flag}")
    if recursive:
        container_path = f"{OUTPUTS_ROOT}/{name}"
    else:
        container_path = f"{OUTPUTS_ROOT}/{name}/{_segment(_last(path), OUTPUT_FALLBACK_NAME)}"
    return TaskOutput(
        name=name,
        destination=cell,
        recursive=recursive,
        container_path=container_path,
        output_name=OUTPUT_NAME_PREFIX + name.lower(),
    )
