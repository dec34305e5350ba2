"""Configuration: TOML file, HADDOCK_* environment, flags; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from haddock.executor.docker import DockerConfig
from haddock.executor.request import NetworkMode
from haddock.node.config import Exporter, OnShutdown, load_settings

TOML = """
node_id = "node-a"
listen = "127.0.0.1:7999"
data_dir = "/var/lib/haddock-test"
shutdown_grace = "30s"
on_shutdown = "stop"
log_format = "json"

[docker]
stop_grace = "1m"
allowed_networks = ["none", "bridge", "host"]
cap_drop = ["NET_RAW", "MKNOD"]

[telemetry]
exporter = "console"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("HADDOCK_"):
            monkeypatch.delenv(key)


def test_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(TOML)
    s = load_settings(cfg)
    assert s.node_id == "node-a" and s.listen == "127.0.0.1:7999"
    assert s.data_dir == Path("/var/lib/haddock-test")
    assert s.shutdown_grace == 30 and s.on_shutdown is OnShutdown.STOP
    assert s.docker.stop_grace == 60
    assert set(s.docker.allowed_networks) == set(NetworkMode)
    assert s.telemetry.exporter is Exporter.CONSOLE
    # the [docker] section is the driver's own config model, taken as it is
    assert isinstance(s.docker, DockerConfig)
    assert s.node_id == "node-a" and s.docker.stop_grace == 60 and s.docker.cap_drop == ("NET_RAW", "MKNOD")
    assert s.log_dir == Path("/var/lib/haddock-test/logs")
    assert s.results_dir("e1") == Path("/var/lib/haddock-test/executions/e1/results")


def test_precedence_flags_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(TOML)
    monkeypatch.setenv("HADDOCK_LISTEN", "127.0.0.1:8001")
    monkeypatch.setenv("HADDOCK_NODE_ID", "from-env")
    monkeypatch.setenv("HADDOCK_DOCKER__STOP_GRACE", "5s")
    s = load_settings(cfg, node_id="from-flag")
    assert s.node_id == "from-flag"
    assert s.listen == "127.0.0.1:8001"
    assert s.docker.stop_grace == 5
    assert s.on_shutdown is OnShutdown.STOP  # still from the file


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s = load_settings()
    assert s.listen == "127.0.0.1:7420"
    assert s.data_dir == tmp_path / "xdg" / "haddock"
    assert s.token is None and not s.tls.enabled
    monkeypatch.setenv("HADDOCK_DATA_DIR", str(tmp_path / "d"))
    assert load_settings().data_dir == tmp_path / "d"


def test_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc123\n")
    assert load_settings(auth_token_file=token).token == "abc123"
    token.write_text("")
    with pytest.raises(ValidationError, match="is empty"):
        load_settings(auth_token_file=token)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "nowhere"}, "must be HOST:PORT"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"on_shutdown": "explode"}, "on_shutdown"),
        ({"tls": {"cert": "/nonexistent.pem"}}, "go together"),
        ({"tls": {"cert": "/nonexistent.pem", "key": "/nonexistent-key.pem"}}, "not a readable file"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(**kwargs)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_node_id_for_engine() -> None:
    with pytest.raises(ValidationError, match="node_id"):
        load_settings(node_id="has space")


def test_readme_configuration_example_loads(tmp_path: Path) -> None:
    """The README's example configuration is valid as written."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("```toml") + len("```toml")
    example = readme[start : readme.index("```", start)]
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(example.replace("/srv/shared", str(tmp_path)))
    s = load_settings(cfg)
    assert s.capacity.cpu == 2 and s.capacity.max_running == 8
    assert s.bidding.networking is not None and s.bidding.networking.reject_networked
    assert s.docker.output_cap == 10 * 1024**3
    assert s.log_retention == 24 * 3600 and s.record_retention == 7 * 24 * 3600
