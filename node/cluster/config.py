"""The ``[cluster]`` table: joining a Bacalhau network as a compute node (see README, "Join a Bacalhau network")."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from haddock.executor.fields import DurationSeconds


class ClusterTlsSettings(BaseModel):
    """TLS to the orchestrator's NATS server (Bacalhau's ``Compute.TLS``): a CA to trust, and a client
    certificate when the server asks for one."""

    model_config = ConfigDict(extra="forbid")

    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _pairs(self) -> ClusterTlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cluster.tls.cert and cluster.tls.key go together: set both or neither")
        for name in ("ca_cert", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"cluster.tls.{name} {str(path)!r} is not a readable file")
        return self

    @property
    def enabled(self) -> bool:
        return self.ca_cert is not None or self.cert is not None


class ClusterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orchestrators: list[str] = Field(
        default_factory=list, description="NATS URLs of the orchestrator (Bacalhau's Compute.Orchestrators)"
    )
    auth_token: SecretStr | None = Field(default=None, description="the NATS auth token (Compute.Auth.Token)")
    auth_token_file: Path | None = None
    creds_file: Path | None = Field(default=None, description="NATS credentials file (user JWT and NKey seed)")
    nkey_seed_file: Path | None = Field(default=None, description="a file holding the NKey seed of a NATS nkey user")
    tls: ClusterTlsSettings = Field(default_factory=ClusterTlsSettings)
    labels: dict[str, str] = Field(default_factory=dict, description="the node's labels, for job constraints")
    heartbeat_interval: DurationSeconds = Field(default=15.0, gt=0)
    heartbeat_miss_factor: int = Field(default=5, ge=1, description="missed heartbeats before reconnecting")
    node_info_update_interval: DurationSeconds = Field(default=60.0, gt=0)
    request_timeout: DurationSeconds = Field(default=10.0, gt=0)
    reconnect_min: DurationSeconds = Field(default=1.0, gt=0, description="first wait before reconnecting")
    reconnect_max: DurationSeconds = Field(default=120.0, gt=0, description="longest wait between attempts")
    max_send_attempts: int = Field(
        default=10, ge=1, description="attempts at an outbound data message the orchestrator refuses or does not answer"
    )
    send_give_up_after: DurationSeconds = Field(
        default=600.0, gt=0, description="session time after the first failed attempt at a message before giving it up"
    )
    inbound_queue_size: int = Field(
        default=64, ge=1, description="inbound data messages waiting to be handled; a full queue holds NATS back"
    )

    @field_validator("orchestrators")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            if parts.scheme not in ("nats", "tls") or not parts.hostname:
                raise ValueError(f"orchestrator {url!r} must be a NATS URL such as nats://HOST:4222")
        return [u if "://" in u else f"nats://{u}" for u in v]

    @model_validator(mode="after")
    def _token(self) -> ClusterSettings:
        if self.auth_token_file is not None:
            if self.auth_token is not None:
                raise ValueError("set cluster.auth_token or cluster.auth_token_file, not both")
            try:
                token = self.auth_token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cluster.auth_token_file cannot be read: {exc}") from exc
            self.auth_token = SecretStr(token)
        _check_credentials(self)
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("cluster.reconnect_max must be at least cluster.reconnect_min")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.orchestrators)


def _check_credentials(s: ClusterSettings) -> None:
    """One way to authenticate; a credentials file or an NKey seed read and checked now, not at the first connect."""
    chosen = [n for n in ("auth_token", "creds_file", "nkey_seed_file") if getattr(s, n) is not None]
    if len(chosen) > 1:
        both = " and ".join(chosen)
        raise ValueError(f"set one of cluster.auth_token(_file), creds_file, nkey_seed_file, not {both}")
    path = s.creds_file or s.nkey_seed_file
    if path is None:
        return
    name = "creds_file" if s.creds_file is not None else "nkey_seed_file"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cluster.{name} {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    try:
        import nkeys
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise ValueError(f"cluster.{name} needs the nkeys package (pip install nkeys)") from exc
    seeds = [w for w in text.split() if w.startswith("SU")]  # a user seed; in a .creds file, inside its seed block
    if s.creds_file is not None and "-----BEGIN NATS USER JWT-----" not in text:
        raise ValueError(f"cluster.creds_file {str(path)!r} holds no user JWT (-----BEGIN NATS USER JWT-----)")
    if len(seeds) != 1:
        raise ValueError(f"cluster.{name} {str(path)!r} must hold one NKey user seed (SU...), found {len(seeds)}")
    try:
        raw = base64.b32decode(seeds[0] + "=" * (-len(seeds[0]) % 8))
        if nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:  # nkeys itself does not check it
            raise nkeys.ErrInvalidSeed()
        nkeys.from_seed(bytearray(seeds[0].encode()))
    except Exception as exc:
        raise ValueError(f"cluster.{name} {str(path)!r}: the NKey seed is not valid ({type(exc).__name__})") from exc
