"""A throwaway local image registry for pull tests.

No public registry can be reached, so tests push locally built images (see
``scripts/build-test-images.sh``) to Debian's ``docker-registry`` (distribution 2.8) listening on
127.0.0.1. The Docker engine treats 127.0.0.0/8 registries as insecure (plain HTTP) by default,
so no daemon configuration is needed.

The registry log (``<tmp_path>/registry/registry.log``) holds two kinds of lines for each request:
a logrus line from the app, e.g.::

    time="..." level=info msg="response completed" ... http.request.method=GET ...
        http.request.uri="/v2/repo/manifests/sha256:..." ... http.response.status=200 ...

(the uri is quoted only when it contains characters such as ``:``), and a combined-format access
log line (``127.0.0.1 - - [...] "GET /v2/... HTTP/1.1" 200 ...``). Only the logrus lines are
counted.

Beware the engine's manifest cache: Debian's engine (20.10) pulls ``name:tag`` with
``HEAD .../manifests/<tag>`` and then ``GET .../manifests/<digest>`` *only if that manifest digest
is not already in its content store*. A manifest the engine has pulled once before (from any
registry, even after ``docker rmi``) is never fetched again, only HEADed. So:

* ``count_manifest_requests`` (HEAD or GET) tells whether the engine consulted the registry;
* ``count_manifest_gets`` tells whether it downloaded a manifest; to make that deterministic, push
  with ``push_image(..., fresh_manifest=True)``, which pushes a derivative image with a unique
  label, i.e. a manifest digest the engine has never seen.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REGISTRY_BIN = os.environ.get("HADDOCK_REGISTRY_BIN", "/usr/bin/docker-registry")
READY_TIMEOUT_S = 20.0
_START_ATTEMPTS = 3  # a new port each time, in case another process grabbed the chosen one

_COMPLETED = re.compile(r'\bmsg="response completed')
_GET = re.compile(r"\bhttp\.request\.method=GET\b")
_GET_OR_HEAD = re.compile(r"\bhttp\.request\.method=(?:GET|HEAD)\b")
_MANIFEST_URI = re.compile(r'\bhttp\.request\.uri="?/v2/\S+/manifests/')

# urllib honours http_proxy; requests to our loopback registry must never go through a proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def registry_dir(tmp_path: Path) -> Path:
    """The directory under ``tmp_path`` holding the registry's config, data and log."""
    return Path(tmp_path) / "registry"


def registry_log(tmp_path: Path) -> Path:
    """The log file of the registry started by ``run_registry(tmp_path)``."""
    return registry_dir(tmp_path) / "registry.log"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _write_config(directory: Path, port: int) -> Path:
    # JSON strings are valid YAML scalars, so json.dumps quotes paths safely.
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n"
        "  level: info\n"
        "  formatter: text\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {json.dumps(str(directory / 'data'))}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "  secret: haddock-test-registry\n"
    )
    return config


def _answers(address: str) -> bool:
    try:
        with _NO_PROXY_OPENER.open(f"http://{address}/v2/", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_registry(tmp_path: Path) -> Iterator[str]:
    """Run ``docker-registry`` on 127.0.0.1:<free port>; yield ``"127.0.0.1:PORT"``.

    Storage and log live under ``registry_dir(tmp_path)``. On exit, exactly the process started
    here is terminated and waited for.
    """
    if not os.access(REGISTRY_BIN, os.X_OK):
        raise RuntimeError(f"{REGISTRY_BIN} not found: install Debian's docker-registry (run scripts/bootstrap.sh)")
    directory = registry_dir(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = registry_log(tmp_path)
    # The registry lets REGISTRY_* variables override its config file: keep ours authoritative.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}

    for attempt in range(1, _START_ATTEMPTS + 1):
        port = _free_port()
        address = f"127.0.0.1:{port}"
        config = _write_config(directory, port)
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _answers(address):
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"registry on {address} did not answer GET /v2/ within {READY_TIMEOUT_S:.0f} s;"
                        f" log tail ({log_path}):\n{_log_tail(log_path)}"
                    )
                time.sleep(0.05)
            else:
                yield address
                return
            # The process exited before answering.
            if attempt == _START_ATTEMPTS or "address already in use" not in _log_tail(log_path):
                raise RuntimeError(
                    f"registry exited with code {proc.returncode} before answering on {address};"
                    f" log tail ({log_path}):\n{_log_tail(log_path)}"
                )
        finally:
            _stop(proc)
    raise AssertionError("unreachable")


def _raise_on_error(record: Any, what: str) -> None:
    if isinstance(record, dict) and ("error" in record or "errorDetail" in record):
        detail = record.get("error") or record.get("errorDetail")
        raise RuntimeError(f"{what} failed: {detail}")


def _derive_unique_image(client: Any, base_ref: str) -> str:
    """Build ``FROM base_ref`` + a unique label: same layers, new config, new manifest digest."""
    nonce = uuid.uuid4().hex
    tag = f"haddock-test/fresh-manifest:{nonce[:16]}"
    dockerfile = f"FROM {base_ref}\nLABEL haddock.test.nonce={nonce}\n".encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, pull=False, rm=True, forcerm=True)
    return tag


def push_image(
    client: Any,
    local_ref: str,
    registry: str,
    repository: str,
    tag: str,
    *,
    fresh_manifest: bool = False,
) -> str:
    """Push local image ``local_ref`` as ``registry/repository:tag`` and return that reference.

    ``client`` is a ``docker.DockerClient``. The ``registry/repository:tag`` tag is removed
    locally afterwards (the image itself stays under ``local_ref``), so a later pull of the
    returned reference really goes to the registry.

    With ``fresh_manifest=True`` a derivative of ``local_ref`` with a unique label is pushed
    instead (and not kept locally), so that pulling the reference must GET its manifest (see the
    module docstring about the engine's manifest cache).
    """
    name = f"{registry}/{repository}"
    ref = f"{name}:{tag}"
    source = _derive_unique_image(client, local_ref) if fresh_manifest else local_ref
    try:
        if not client.api.tag(source, name, tag):
            raise RuntimeError(f"could not tag {source} as {ref}")
        try:
            for record in client.api.push(name, tag=tag, stream=True, decode=True):
                _raise_on_error(record, f"push of {ref}")
        finally:
            client.api.remove_image(ref)
    finally:
        if source != local_ref:
            client.api.remove_image(source)
    return ref


def pull_image(client: Any, ref: str) -> None:
    """Pull ``ref`` (``registry/repository:tag``) with the streaming API, raising on errors."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        raise ValueError(f"expected registry/repository:tag, got {ref!r}")
    for record in client.api.pull(name, tag=tag, stream=True, decode=True):
        _raise_on_error(record, f"pull of {ref}")


def _count_manifest_lines(log_path: Path | str, method: re.Pattern[str]) -> int:
    count = 0
    with Path(log_path).open(errors="replace") as f:
        for line in f:
            if _COMPLETED.search(line) and method.search(line) and _MANIFEST_URI.search(line):
                count += 1
    return count


def count_manifest_gets(log_path: Path | str) -> int:
    """How many ``GET /v2/<repo>/manifests/<ref>`` requests the registry logged."""
    return _count_manifest_lines(log_path, _GET)


def count_manifest_requests(log_path: Path | str) -> int:
    """How many manifest requests (GET or HEAD) the registry logged: registry consultations."""
    return _count_manifest_lines(log_path, _GET_OR_HEAD)
