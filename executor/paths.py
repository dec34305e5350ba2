"""Paths inside a container: one rule, shared by the executor's and storage's models."""

from __future__ import annotations

import posixpath

from haddock.executor.errors import shown

MAX_PATH = 1024
"""Characters in a path inside a container (the kernel's limit is 4096 bytes, with the mount's root before it)."""
MAX_NAME = 255
"""Bytes in one path segment (the kernel's NAME_MAX)."""


def check_container_path(v: str, what: str) -> str:
    """An absolute, normalised path in the container that is not the root and has no '..'."""
    if not v:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in v:
        raise ValueError(f"{what} must not contain NUL bytes")
    if not v.startswith("/"):
        raise ValueError(f"{what} {shown(v)} must be an absolute path inside the container")
    if ".." in v.split("/"):
        raise ValueError(f"{what} {shown(v)} must not contain '..'")
    if len(v) > MAX_PATH:
        raise ValueError(f"{what} {shown(v)} is longer than {MAX_PATH} characters")
    if any(len(part.encode()) > MAX_NAME for part in v.split("/")):
        raise ValueError(f"{what} {shown(v)} has a name longer than {MAX_NAME} bytes")
    normalized = posixpath.normpath(v)
    if normalized == "/":
        raise ValueError(f"{what} must not be the container's root directory")
    return normalized
