"""Image references, read one way everywhere: the request model, image pulls and bidding's image policy.

The grammar is the OCI distribution reference grammar (Docker's ``reference`` package)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ registry "/" ] repository
    registry   := host [ ":" port ]            host: a DNS name or a bracketed IPv6 address
    repository := component ( "/" component )*  component: [a-z0-9]+ ( ( [._] | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex{32,}

Whether the first component of a name is a registry is decided the way Docker decides it: when it holds
a ``.`` or a ``:``, is ``localhost``, or has upper-case letters. Without one, the registry is Docker Hub
(``docker.io``; ``index.docker.io`` is its old name) and a one-component repository is an official image
under ``library/``, so ``busybox`` normalises to ``docker.io/library/busybox:latest``.

Pure functions; no engine, no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from haddock.executor.errors import shown

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "MAX_LENGTH",
    "ImageRef",
    "is_valid",
    "normalize",
    "normalize_name",
    "parse",
    "pull_reference",
]

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
MAX_LENGTH = 1024
_LEGACY_DEFAULT_REGISTRY = "index.docker.io"
_OFFICIAL_PREFIX = "library/"

_GRAMMAR = re.compile(
    r"^(?:(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?$"
)


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference: ``registry`` is always set (``docker.io`` when the reference names none) and
    ``repository`` is normalised (``library/busybox``); ``tag`` and ``digest`` are as written, or None."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``: what image policies match."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        """The normalised reference: a reference without tag or digest gets the tag ``latest``."""
        tag = self.tag if self.tag is not None or self.digest is not None else DEFAULT_TAG
        return self.name + (f":{tag}" if tag is not None else "") + (f"@{self.digest}" if self.digest else "")


def _split(reference: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) as written; a ``:`` after the last ``/`` starts the tag."""
    name, at, digest = reference.partition("@")
    tag = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest if at else None


def _split_registry(name: str) -> tuple[str, str]:
    """(registry, repository) of a name, the way Docker splits it; Docker Hub's names normalised."""
    first, sep, rest = name.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == _LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = _OFFICIAL_PREFIX + repository
    return registry, repository


def is_valid(reference: str) -> bool:
    """Whether ``reference`` follows the grammar (and is at most :data:`MAX_LENGTH` characters).

    A first component in upper case is a registry only when it looks like a host (a ``.`` or ``:``, or
    ``localhost``): the engine reads ``UPPER/x`` as a repository, which must be lower case."""
    if len(reference) > MAX_LENGTH or _GRAMMAR.match(reference) is None:
        return False
    first, sep, _ = reference.partition("/")
    return not sep or first == first.lower() or any(c in first for c in ".:") or first == "localhost"


def parse(reference: str) -> ImageRef:
    """Read a reference; ValueError when it does not follow the grammar."""
    if not is_valid(reference):
        raise ValueError(f"{shown(reference)} is not a valid image reference")
    name, tag, digest = _split(reference)
    registry, repository = _split_registry(name)
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


def normalize(reference: str) -> str:
    """The fully qualified form: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    return str(parse(reference))


def normalize_name(reference: str) -> str:
    """A reference's ``registry/repository``, tag and digest dropped: ``user/app:1`` -> ``docker.io/user/app``,
    ``127.0.0.1:5000/x/y:tag`` -> ``127.0.0.1:5000/x/y``.

    Lenient where :func:`parse` is strict (upper case in a repository is kept, as image policies have always
    read it); refuses what is no reference at all: empty, spaces, empty path components.
    """
    if not reference or reference != reference.strip() or any(c.isspace() for c in reference):
        raise ValueError(f"{shown(reference)} is not an image reference")
    name, _, _ = _split(reference)
    registry, repository = _split_registry(name)
    if not repository or any(not part for part in repository.split("/")) or not registry:
        raise ValueError(f"{shown(reference)} is not an image reference")
    return f"{registry}/{repository}"


def pull_reference(reference: str) -> tuple[str, str]:
    """What an engine pull takes: (the name as written, with its tag when a digest follows; the digest, else
    the tag, ``latest`` when there is none)."""
    name, tag, digest = _split(reference)
    if digest is not None:
        return (f"{name}:{tag}" if tag is not None else name), digest
    return name, tag or DEFAULT_TAG
