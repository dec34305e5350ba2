"""Heavy libraries only where used, and the domain below storage: checked in a fresh interpreter,
since the test process itself has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("boto3", "botocore", "httpx")

_PROBE = """
import importlib, json, pkgutil, sys
names = {names!r}
if {walk_executor!r}:
    import haddock.executor
    names += [m.name for m in pkgutil.walk_packages(haddock.executor.__path__, "haddock.executor.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({{"imported": names, "modules": sorted(sys.modules)}}))
"""


def _fresh_import(names: list[str], *, walk_executor: bool = False) -> tuple[list[str], set[str]]:
    code = _PROBE.format(names=names, walk_executor=walk_executor)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    return data["imported"], set(data["modules"])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize(
    "module",
    [
        "haddock.storage",
        "haddock.storage.provider",
        "haddock.storage.config",
        "haddock.storage.publish",
        "haddock.storage.hooks",
        "haddock.storage.local",
        "haddock.storage.inline",
    ],
)
def test_storage_modules_without_boto3_or_httpx(module: str) -> None:
    _, modules = _fresh_import([module])
    assert _heavy(modules) == []


def test_the_domain_imports_neither_storage_nor_heavy_libraries() -> None:
    imported, modules = _fresh_import([], walk_executor=True)
    assert "haddock.executor.request" in imported and "haddock.executor.sources" in imported
    assert _heavy(modules) == []
    assert sorted(m for m in modules if m.startswith("haddock.storage")) == []


def test_lazy_names_still_resolve() -> None:
    _, modules = _fresh_import(["haddock.storage"])
    assert "haddock.storage.s3" not in modules and "haddock.storage.url" not in modules
    import haddock.storage

    for name in haddock.storage.__all__:
        assert getattr(haddock.storage, name) is not None
    with pytest.raises(AttributeError):
        haddock.storage.NoSuchThing  # noqa: B018
