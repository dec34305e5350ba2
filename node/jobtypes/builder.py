"""A job's image from its source: the plugin's templates rendered (Jinja2), the base image built once per job
type and version, the job image tagged by a content hash of all that goes into it, built on the Docker engine.

The job image's tag is ``haddock-job/<name>:<version>-<hash>`` where the hash covers the plugin (its files),
the rendered Dockerfile, the source tree (paths, modes, contents) and the downloaded requirements: a second
deploy of unchanged source builds nothing, and a changed file rebuilds from the job's ``COPY`` on (the
engine's layer cache keeps the steps before it). Builds run with the network ``[jobtypes] build_network``
(none by default): python3 requirements are downloaded on the node's host with pip into the build context
first, Go modules come from the job's ``vendor/`` or a configured module proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haddock.executor.docker.build import BuildFailed, ImageBuilder
from haddock.executor.docker.engine import Engine
from haddock.executor.errors import ExecutorError, InvalidSpec
from haddock.executor.jobspec import JobManifest, JobSpec
from haddock.executor.protocol import BuildOutput, BuiltJob
from haddock.executor.request import RunCommandRequest
from haddock.node.jobtypes.config import JobTypesSettings
from haddock.node.jobtypes.plugins import JobTypePlugin, JobTypes
from haddock.storage.tarsafe import TarLimits, UnsafeArchive, unpack

__all__ = ["JobTypeBuilder", "render_template"]

log = logging.getLogger(__name__)

DOCKERFILE = ".haddock-job.Dockerfile"
WHEELHOUSE = ".haddock-wheelhouse"
PLUGIN_DIR = ".jobtype"  # the single-template form: the plugin's files in the job's build context
LABEL_KIND = "haddock.image"
SOURCE_LIMITS = TarLimits(max_bytes=1024 * 1024 * 1024, max_members=100_000)
"""What a job's source tarball may unpack to."""


def render_template(path: Path, **variables: Any) -> str:
    """A plugin's Dockerfile template, rendered (undefined variables are errors that name them). Jinja2 is
    loaded here, by the first job built: a node that builds none never loads it."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.ChainableUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        return env.from_string(path.read_text()).render(**variables)
    except jinja2.TemplateError as exc:
        raise ExecutorError(f"rendering {path.name} of the job type failed: {exc}") from exc


def _tag_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:80]


def _walk(root: Path) -> list[tuple[str, Path]]:
    """The files and directories under ``root`` (relative posix names, sorted); symlinks kept as links."""
    found: list[tuple[str, Path]] = []
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = Path(current) / name
            found.append((path.relative_to(root).as_posix(), path))
    found.sort()
    return found


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for rel, path in _walk(root):
        st = path.lstat()
        h.update(rel.encode() + b"\0" + oct(st.st_mode).encode() + b"\0")
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            with path.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _pack(entries: list[tuple[str, Path | bytes]]) -> bytes:
    """A gzip tar of (name, file/dir path or bytes) with normalised owners and times."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, what in entries:
            if isinstance(what, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(what)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(what))
                continue
            info = tar.gettarinfo(str(what), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with what.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _tree_entries(root: Path, prefix: str = "") -> list[tuple[str, Path | bytes]]:
    return [(prefix + rel, path) for rel, path in _walk(root)]


def _unpack_source(archive: Path, into: Path) -> None:
    """A source given as a tarball (URL, S3, a local file): unpacked by the one safe unpacker
    (:mod:`haddock.storage.tarsafe`, as inline inputs are), within :data:`SOURCE_LIMITS`."""
    try:
        unpack(archive, into, SOURCE_LIMITS)
    except UnsafeArchive as exc:
        raise InvalidSpec(f"the job's source {exc}") from None
    entries = list(into.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() and not (into / "job.yaml").exists():
        # A tarball of the directory (job/...): its root is the source.
        inner = entries[0]
        for child in inner.iterdir():
            child.rename(into / child.name)
        inner.rmdir()


class JobTypeBuilder:
    """Implements :class:`haddock.executor.protocol.JobBuilder` with the node's job types on a Docker engine."""

    def __init__(self, settings: JobTypesSettings, engine: Engine, *, version: str, work_dir: Path) -> None:
        self.settings = settings
        self.jobtypes = JobTypes.discover(list(settings.plugins))
        self.version = version
        self.work_dir = work_dir
        self._engine = engine
        self._builder: ImageBuilder | None = None

    @property
    def builder(self) -> ImageBuilder:
        if self._builder is None:
            # A client of its own: a build step may print nothing for longer than a short API call may take.
            client = self._engine._make_client(timeout=self.settings.build_timeout + 60)
            self._builder = ImageBuilder(client, self._engine.pull_pool, network_mode=self.settings.build_network)
        return self._builder

    def check(self, job: JobSpec) -> None:
        self.jobtypes.check(job)

    # ------------------------------------------------------------------ the base image

    def _base_tag(self, plugin: JobTypePlugin, toolchain: str, dockerfile: str) -> str:
        h = hashlib.sha256(f"{plugin.files_digest}\0{toolchain}\0{dockerfile}".encode()).hexdigest()[:16]
        return f"haddock-jobtype/{plugin.name}:{_tag_part(plugin.version)}-{h}"

    async def _base_image(self, plugin: JobTypePlugin, on_output: Callable[[BuildOutput], None]) -> str:
        toolchain = self.settings.base_image(plugin.name)
        dockerfile = render_template(plugin.base_dockerfile, base_image=toolchain)
        tag = self._base_tag(plugin, toolchain, dockerfile)

        def context() -> bytes:
            entries: list[tuple[str, Path | bytes]] = [
                (n, p) for n, p in _tree_entries(plugin.directory) if n != "base.Dockerfile"
            ]
            entries.append(("Dockerfile", dockerfile.encode()))
            return _pack(entries)

        _, built = await self.builder.ensure(
            tag,
            context,
            what=f"the base image of job type {plugin.key}",
            build_timeout=self.settings.build_timeout,
            labels={LABEL_KIND: "jobtype-base", "haddock.jobtype": plugin.key},
            on_output=on_output,
        )
        if built:
            log.info("built base image %s for job type %s", tag, plugin.key)
        return tag

    # ------------------------------------------------------------------ the job image

    def _env_vars(self, manifest: JobManifest, plugin: JobTypePlugin) -> dict[str, str]:
        env = dict(manifest.build_env)
        if plugin.name == "golang" and self.settings.go_proxy:
            env.setdefault("GOPROXY", self.settings.go_proxy)
        return env

    def _wheelhouse(self, manifest: JobManifest, source: Path, into: Path) -> None:
        """python3: the requirements downloaded on the host (pip), so that the build needs no network."""
        extra = manifest.python()
        if not extra.requirements_path:
            return
        requirements = source / extra.requirements_path
        if not requirements.is_file():
            raise InvalidSpec(f"jobtype_extra.requirements_path: {extra.requirements_path} is not in the source")
        into.mkdir(parents=True, exist_ok=True)
        if not self.settings.pip_download or not requirements.read_text().strip():
            return
        _check_requirements(requirements, extra.requirements_path)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--isolated",  # no user or site pip configuration
                "--disable-pip-version-check",
                "--only-binary=:all:",  # wheels only: no requester's setup.py runs on the host
                "-q",
                "-d",
                str(into),
                "-r",
                str(requirements),
            ],
            capture_output=True,
            text=True,
            timeout=self.settings.build_timeout,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
            raise ExecutorError(f"downloading the job's requirements ({extra.requirements_path}) failed:\n{tail}")

    async def build(
        self, request: RunCommandRequest, source: Path, on_output: Callable[[BuildOutput], None]
    ) -> BuiltJob:
        job = request.job
        assert job is not None
        manifest = job.manifest
        plugin = self.jobtypes.resolve(manifest.jobtype)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="build-", dir=self.work_dir))
        try:
            return await self._build(request, plugin, source, scratch, on_output)
        except BuildFailed as exc:
            raise ExecutorError(str(exc)) from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _build(
        self,
        request: RunCommandRequest,
        plugin: JobTypePlugin,
        source: Path,
        scratch: Path,
        on_output: Callable[[BuildOutput], None],
    ) -> BuiltJob:
        assert request.job is not None
        manifest = request.job.manifest
        if await asyncio.to_thread(source.is_file):
            tree = scratch / "source"
            tree.mkdir()
            await asyncio.to_thread(_unpack_source, source, tree)
            source = tree
        wheels = scratch / "wheelhouse"
        if plugin.name == "python3":
            await asyncio.to_thread(self._wheelhouse, manifest, source, wheels)
        if plugin.single_template:
            base_image = self.settings.base_image(plugin.name)
        else:
            base_image = await self._base_image(plugin, on_output)
        variables = {
            "base_image": base_image,
            "env_vars": self._env_vars(manifest, plugin),
            "manifest": manifest.template_view(),
            "git_version": manifest.labels.get("git_version", "") or "",
            "deployed_by_racetrack_version": f"haddock {self.version}",
            "job_type_version": plugin.version,
        }
        dockerfile = render_template(plugin.template, **variables)
        source_digest, wheels_digest = await asyncio.to_thread(
            lambda: (_tree_digest(source), _tree_digest(wheels) if wheels.exists() else "")
        )
        h = hashlib.sha256(
            "\0".join([plugin.key, plugin.files_digest, base_image, dockerfile, source_digest, wheels_digest]).encode()
        ).hexdigest()[:20]
        tag = f"haddock-job/{manifest.name}:{_tag_part(manifest.version)}-{h}"

        def context() -> bytes:
            entries = _tree_entries(source)
            if wheels.exists():
                entries.append((WHEELHOUSE, wheels))
                entries += _tree_entries(wheels, WHEELHOUSE + "/")
            if plugin.single_template:
                entries.append((PLUGIN_DIR, plugin.directory))
                entries += _tree_entries(plugin.directory, PLUGIN_DIR + "/")
            entries.append((DOCKERFILE, dockerfile.encode()))
            return _pack(entries)

        info, built = await self.builder.ensure(
            tag,
            context,
            what=f"job {manifest.name} {manifest.version}",
            build_timeout=self.settings.build_timeout,
            labels={LABEL_KIND: "job", "haddock.job-name": manifest.name, "haddock.job-version": manifest.version},
            on_output=on_output,
            dockerfile=DOCKERFILE,
        )
        stop_signal = str((info.get("Config") or {}).get("StopSignal") or "SIGTERM")
        return BuiltJob(image=tag, built=built, stop_signal=stop_signal, jobtype=plugin.key)


def _check_requirements(path: Path, shown_as: str) -> None:
    """A requester's requirements file names packages, nothing else: no pip options (an index URL, a link
    page, another file to read on the node), no URLs, no local paths."""
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-") or "://" in line or line.startswith((".", "/", "~")) or "@" in line:
            raise InvalidSpec(
                f"jobtype_extra.requirements_path: {shown_as} line {n}: only package requirements are accepted "
                "(no pip options, URLs or paths)"
            )
