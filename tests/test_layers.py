"""The layers point one way, and the requester side stays apart from the daemon.

proto and the shared core → domain (``haddock.executor``) → ``haddock.storage`` → daemon (``haddock.node``);
the requester side (``haddock.node.client``) depends on proto and the domain alone. Two checks: what a
fresh interpreter really loads for the client and the CLI's light commands, and a static reading (ast)
of every import in the source tree.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("executor", "storage", "node")  # folders installed as haddock.<name>

HEAVY = ("docker", "boto3", "botocore", "httpx", "sqlite3")
DAEMON = ("haddock.node.store", "haddock.node.service", "haddock.node.api", "haddock.node.server")

# Runs in a fresh interpreter: does what argv[1] says, then writes the loaded module names to argv[2].
_PROBE = """
import json, sys
what, out = sys.argv[1], sys.argv[2]
if what == "import":
    import haddock.node.client
elif what == "daemon":
    import haddock.node.server, haddock.node.service
elif what == "builder":
    from haddock.node.jobtypes.builder import JobTypeBuilder
    from haddock.node.jobtypes.config import JobTypesSettings
    from haddock.node.jobtypes.plugins import JobTypes
    JobTypes.discover(list(JobTypesSettings().plugins))
else:
    from haddock.node.cli import app
    try:
        app(what.split(), prog_name="haddock")
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
with open(out, "w") as f:
    json.dump(sorted(sys.modules), f)
"""


def _loaded(what: str, tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _PROBE, what, str(out)], check=True, capture_output=True, timeout=60, cwd=tmp_path
    )
    return set(json.loads(out.read_text()))


def _heavy(modules: set[str]) -> list[str]:
    """The heavy libraries (top-level names) and daemon modules among ``modules``."""
    found = {m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY}
    found |= {d for d in DAEMON if d in modules}
    return sorted(found)


@pytest.mark.parametrize("what", ["import", "--help", "logs --help"])
def test_the_requester_side_does_not_load_the_daemon(what: str, tmp_path: Path) -> None:
    """``import haddock.node.client``, ``haddock --help`` and ``haddock logs --help`` load neither docker-py,
    boto3, httpx nor sqlite3, nor the node's store, service, servicers or server."""
    assert _heavy(_loaded(what, tmp_path)) == []


@pytest.mark.parametrize("what", ["daemon", "builder"])
def test_a_daemon_that_builds_no_job_loads_no_jinja2(what: str, tmp_path: Path) -> None:
    """The node's modules, and its job-type builder with the plugins discovered, load Jinja2 only when a job's
    template is rendered; the daemon loads the builder only when it opens a node."""
    loaded = _loaded(what, tmp_path)
    assert "jinja2" not in {m.split(".")[0] for m in loaded}
    if what == "daemon":
        assert "haddock.node.jobtypes.builder" not in loaded


# ---------------------------------------------------------------------------- static import graph


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["haddock", *parts])


def _sources() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield _module_name(path), path


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """Every module ``module`` imports (at any depth: functions, TYPE_CHECKING blocks too), absolute."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from haddock.node import service` imports haddock.node.service
                yield node.lineno, f"{target}.{alias.name}"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_daemon(name: str) -> bool:
    """A module of the node's daemon: anything in haddock.node but the package itself and the requester side."""
    return _within(name, "haddock.node") and name != "haddock.node" and not _within(name, "haddock.node.client")


def _existing(name: str) -> bool:
    """Whether ``name`` is one of our modules or packages (``from x import y`` may name a class, not a module)."""
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _violations() -> list[str]:
    found = []
    for module, path in _sources():
        where = path.relative_to(ROOT)
        for line, name in _imports(module, path):
            if _within(name, "haddock") and not _within(name, "haddock.v1") and not _existing(name):
                continue  # a name imported from a module, not a module
            domain = _within(module, "haddock.executor") and not _within(module, "haddock.executor.docker")
            if domain and (_within(name, "haddock.storage") or _within(name, "haddock.node")):
                found.append(f"{where}:{line}: the domain imports {name}")
            if _within(module, "haddock.storage") and _within(name, "haddock.node"):
                found.append(f"{where}:{line}: storage imports the daemon's {name}")
            if _within(module, "haddock.node.client") and _is_daemon(name):
                found.append(f"{where}:{line}: the requester side imports the daemon's {name}")
    return found


def test_layers_import_one_way() -> None:
    """executor (but its Docker backend) imports neither storage nor node; storage does not import node;
    the requester side (haddock.node.client) imports nothing of the daemon."""
    assert _violations() == []


def _all_python_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "proto", "build"} or any(p.startswith(".") for p in rel.parts):
            continue
        yield path


def test_nothing_imports_the_old_top_level_names() -> None:
    """Our code is ``haddock.executor``, ``haddock.storage``, ``haddock.node``: never ``executor``, ``storage``,
    ``node`` (names other distributions use)."""
    found = []
    for path in _all_python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert found == []


def test_the_checks_see_what_they_check() -> None:
    """The static reading finds the modules and the imports it is about (so that an empty list means something)."""
    modules = dict(_sources())
    assert "haddock.node.client" in modules and "haddock.executor.request" in modules
    client_imports = {
        name for _, name in _imports("haddock.node.client._client", modules["haddock.node.client._client"])
    }
    assert "haddock.node.client.convert" in client_imports
    api_imports = {name for _, name in _imports("haddock.node.api", modules["haddock.node.api"])}
    assert "haddock.node.service" in api_imports and _is_daemon("haddock.node.service")
    assert not _is_daemon("haddock.node.client.convert")
