"""Job-type plugins on disk: discovery, the plugin manifest, and which plugin a job's ``jobtype`` names.

A plugin is a directory with ``plugin-manifest.yaml`` (name, version, url), the wrapper's files, and either
``base.Dockerfile`` + ``job-template.Dockerfile`` (Racetrack's two-stage form: the base image built once per
job type and version, the job image from the template) or ``job-template.Dockerfile`` alone (the newer
single-template form: the one template builds the whole job image from the toolchain image, with the
plugin's files in the build context under ``.jobtype/``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from haddock.executor.errors import InvalidSpec
from haddock.executor.jobspec import JobSpec

__all__ = ["JobTypePlugin", "JobTypes", "PluginError", "load_plugin"]

MANIFEST = "plugin-manifest.yaml"
BASE = "base.Dockerfile"
TEMPLATE = "job-template.Dockerfile"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


class PluginError(Exception):
    """A plugin directory that cannot be used; the message says which and why."""


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts: list[tuple[int, int | str]] = []
    for p in re.split(r"[.+-]", version):
        parts.append((1, int(p)) if p.isdigit() else (0, p))
    return tuple(parts)


@dataclass(frozen=True)
class JobTypePlugin:
    name: str  # the job type's name, as manifests name it (golang, python3)
    version: str
    url: str
    directory: Path
    single_template: bool  # no base.Dockerfile: the template builds the whole image
    files_digest: str  # sha256 over every file of the plugin: what its base image is made of

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def base_dockerfile(self) -> Path:
        return self.directory / BASE

    @property
    def template(self) -> Path:
        return self.directory / TEMPLATE

    def matches(self, wanted: str) -> bool:
        """Whether a manifest's version part (``latest``, ``2.x``, ``2.*``, ``1.0.0``) names this plugin."""
        if wanted in ("latest", ""):
            return True
        if wanted.endswith((".x", ".*")):
            prefix = wanted[:-2] + "."
            return self.version.startswith(prefix) or self.version == wanted[:-2]
        return self.version == wanted


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(directory).as_posix()
            h.update(rel.encode() + b"\0" + oct(path.stat().st_mode & 0o777).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def load_plugin(directory: Path) -> JobTypePlugin:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise PluginError(f"job-type plugin {directory}: no {MANIFEST}")
    try:
        data = yaml.safe_load(manifest_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PluginError(f"job-type plugin {directory}: {MANIFEST} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise PluginError(f"job-type plugin {directory}: {MANIFEST} must be a mapping")
    raw_name = str(data.get("jobtype") or data.get("name") or "")
    # Racetrack names plugins "<type>-job-type"; the job type is "<type>".
    name = raw_name.removesuffix("-job-type")
    version = str(data.get("version") or "")
    if not _NAME_RE.match(name):
        raise PluginError(f"job-type plugin {directory}: name {raw_name!r} is not a job type name")
    if not _VERSION_RE.match(version):
        raise PluginError(f"job-type plugin {directory}: version {version!r} is not a version")
    if not (directory / TEMPLATE).is_file():
        raise PluginError(f"job-type plugin {directory}: no {TEMPLATE}")
    return JobTypePlugin(
        name=name,
        version=version,
        url=str(data.get("url") or ""),
        directory=directory,
        single_template=not (directory / BASE).is_file(),
        files_digest=_digest(directory),
    )


class JobTypes:
    """The node's job types, from the plugin directories of its configuration."""

    def __init__(self, plugins: list[JobTypePlugin]) -> None:
        self.plugins = sorted(plugins, key=lambda p: (p.name, _version_key(p.version)))

    @classmethod
    def discover(cls, directories: list[Path]) -> JobTypes:
        plugins = [load_plugin(d) for d in directories]
        keys = [p.key for p in plugins]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise PluginError(f"job types configured twice: {', '.join(dupes)}")
        return cls(plugins)

    def resolve(self, jobtype: str) -> JobTypePlugin:
        """The plugin a manifest's ``jobtype`` names (the newest matching version); InvalidSpec if none."""
        name, _, wanted = jobtype.partition(":")
        candidates = [p for p in self.plugins if p.name == name]
        if not candidates:
            have = ", ".join(sorted({p.name for p in self.plugins})) or "none"
            raise InvalidSpec(f"jobtype: this node has no job type {name!r} (it has: {have})")
        matching = [p for p in candidates if p.matches(wanted or "latest")]
        if not matching:
            versions = ", ".join(p.version for p in candidates)
            raise InvalidSpec(f"jobtype: job type {name!r} has no version matching {wanted!r} (versions: {versions})")
        return matching[-1]

    def check(self, job: JobSpec) -> None:
        self.resolve(job.manifest.jobtype)
