"""The [cluster] table: from TOML and HADDOCK_CLUSTER__* env, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from haddock.node.cluster.config import ClusterSettings
from haddock.node.config import load_settings


def test_from_toml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg = tmp_path / "haddock.toml"
    cfg.write_text(
        f'[cluster]\norchestrators = ["nats://10.0.0.1:4222", "10.0.0.2:4222"]\nauth_token_file = "{token}"\n'
        'heartbeat_interval = "2s"\n[cluster.labels]\nzone = "a"\n'
    )
    monkeypatch.setenv("HADDOCK_CLUSTER__REQUEST_TIMEOUT", "3s")
    s = load_settings(cfg, data_dir=tmp_path).cluster
    assert s.enabled
    assert s.orchestrators == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert s.auth_token is not None and s.auth_token.get_secret_value() == "s3cret"
    assert (s.heartbeat_interval, s.request_timeout, s.labels) == (2.0, 3.0, {"zone": "a"})


def test_off_by_default(tmp_path: Path) -> None:
    assert not load_settings(None, data_dir=tmp_path).cluster.enabled


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"orchestrators": ["http://x:4222"]}, "must be a NATS URL"),
        ({"auth_token": "a", "auth_token_file": "/etc/hostname"}, "not both"),
        ({"creds_file": "/nonexistent.creds"}, "creds_file"),
        ({"tls": {"cert": "/etc/hostname"}}, "go together"),
        ({"reconnect_min": "10s", "reconnect_max": "1s"}, "reconnect_max"),
        ({"heartbeat_interval": "0s"}, "greater than 0"),
    ],
)
def test_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ClusterSettings.model_validate(fields)
