"""Paths inside a container: one rule, shared by the executor's and storage's models."""

from __future__ import annotations

import posixpath


def check_container_path(v: str, what: str) -> str:
    """An absolute, normalised path in the container that is not the root and has no '..'."""
    if not v:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in v:
        raise ValueError(f"{what} must not contain NUL bytes")
    if not v.startswith("/"):
        raise ValueError(f"{what} {v!r} must be an absolute path inside the container")
    if ".." in v.split("/"):
        raise ValueError(f"{what} {v!r} must not contain '..'")
    normalized = posixpath.normpath(v)
    if normalized == "/":
        raise ValueError(f"{what} must not be the container's root directory")
    return normalized
