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


def test_nkey_seed_file_and_creds_file_are_read_and_checked(tmp_path: Path) -> None:
    import os

    import nkeys

    seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)).decode()
    good = tmp_path / "user.nk"
    good.write_text(seed + "\n")
    assert ClusterSettings.model_validate({"nkey_seed_file": str(good)}).nkey_seed_file == good
    creds = tmp_path / "user.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\neyJhbGciOi.e30.sig\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    assert ClusterSettings.model_validate({"creds_file": str(creds)}).creds_file == creds
    broken = tmp_path / "broken.nk"
    broken.write_text(seed[:-4] + "AAAA\n")
    cases: list[tuple[dict[str, object], str]] = [
        ({"nkey_seed_file": str(broken)}, "the NKey seed is not valid"),
        ({"nkey_seed_file": str(tmp_path / "none.nk")}, "cannot be read"),
        ({"nkey_seed_file": str(creds.with_suffix(".empty"))}, "cannot be read"),
        ({"creds_file": str(good)}, "holds no user JWT"),
        ({"auth_token": "t", "nkey_seed_file": str(good)}, "set one of"),
        ({"creds_file": str(creds), "nkey_seed_file": str(good)}, "set one of"),
    ]
    empty = tmp_path / "empty.nk"
    empty.write_text("\n")
    cases.append(({"nkey_seed_file": str(empty)}, "must hold one NKey user seed"))
    for fields, message in cases:
        with pytest.raises(ValidationError, match=message):
            ClusterSettings.model_validate(fields)


def test_delivery_and_queue_limits() -> None:
    s = ClusterSettings.model_validate({"max_send_attempts": 3, "send_give_up_after": "2m", "inbound_queue_size": 8})
    assert (s.max_send_attempts, s.send_give_up_after, s.inbound_queue_size) == (3, 120.0, 8)
    for fields in ({"max_send_attempts": 0}, {"send_give_up_after": "0s"}, {"inbound_queue_size": 0}):
        with pytest.raises(ValidationError):
            ClusterSettings.model_validate(fields)
