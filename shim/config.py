"""Configuration: YAML with ``${ENV}`` expansion, validated by pydantic.

Key names are part of the product contract (SPEC §2); unknown keys are rejected so a typo
fails loudly at start instead of silently using a default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

DEFAULT_RETRY_SCHEDULE: list[float] = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200]


class ConfigError(Exception):
    """A one-line, user-facing configuration error naming the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Base of every URL shim hands out (Location, messageUri, Link, media).
    public_url: str = ""
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # A connection that has not sent a whole request head this long after it opened (or after
    # its first byte of a new request) is answered 408 and closed: slow clients hold no slot.
    header_timeout_s: float = Field(10, gt=0)

    @model_validator(mode="after")
    def _default_public_url(self) -> ServerConfig:
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")
        return self


class UpstreamConfig(_Model):
    mode: Literal["bandwidth", "sandbox"] = "sandbox"
    base_url: str = "https://messaging.bandwidth.com/api/v2"
    timeout_s: float = Field(10, gt=0)
    max_connections: int = Field(100, ge=1)
    # Sends inside one v1 batch that may be in flight at once.
    batch_concurrency: int = Field(50, ge=1)
    # Retries of a send that failed to *connect* (it cannot have reached v2).
    connect_retries: int = Field(2, ge=0)
    # Largest media upload accepted (v2's limit is 3.75 MB).
    max_media_bytes: int = Field(3_750_000, ge=1)


class StoreConfig(_Model):
    url: str = "sqlite:///./shim.db"
    # PostgreSQL connections per replica (SQLite uses one writer and two readers).
    pool_size: int = Field(40, ge=2)


class CallbacksConfig(_Model):
    path: str = "/callbacks/v2"
    username: str | None = None
    password: SecretStr | None = None
    retry_schedule_s: list[float] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    signing_secret: SecretStr | None = None
    # How long a status event may wait for its send to be recorded before it is treated as
    # an event of a message sent natively on v2.
    unmatched_grace_s: float = Field(60, gt=0)
    concurrency: int = Field(200, ge=1)
    # How long a replica holds a delivery before another may take it over (if it died).
    lease_s: float = Field(60, gt=0)
    per_host_concurrency: int = Field(16, ge=1)
    allow_cidrs: list[str] = Field(default_factory=list)
    deny_cidrs: list[str] = Field(default_factory=list)
    # Admin API (dead letters, replay) credentials; admin endpoints are off when unset.
    admin_username: str | None = None
    admin_password: SecretStr | None = None

    @model_validator(mode="after")
    def _check(self) -> CallbacksConfig:
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if not self.retry_schedule_s or any(s < 0 for s in self.retry_schedule_s):
            raise ValueError("retry_schedule_s must be a non-empty list of non-negative seconds")
        return self


class IncomingConfig(_Model):
    url: str
    fallback_url: str | None = None
    method: Literal["GET", "POST"] = "POST"
    timeout_ms: int = Field(10000, ge=1, le=10000)


class NativeEventsConfig(_Model):
    format: Literal["v1", "v2"] = "v2"
    url: str


class UserConfig(_Model):
    user_id: str = Field(min_length=1)
    api_token: str = Field(min_length=1)
    api_secret: SecretStr
    account_id: str = Field(min_length=1)
    application_id: str = Field(min_length=1)
    v2_username: str = Field(min_length=1)
    v2_password: SecretStr
    incoming: IncomingConfig | None = None
    native_events: NativeEventsConfig | None = None


class RetentionConfig(_Model):
    text_days: float = Field(3, gt=0)
    purge_days: float = Field(30, gt=0)
    # How often the retention pass runs (every replica runs it; it is idempotent).
    interval_s: float = Field(3600, gt=0)


class SandboxConfig(_Model):
    # Delay before the simulator posts its callbacks (seconds).
    callback_delay_s: float = Field(0.05, ge=0)


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    users: list[UserConfig] = Field(default_factory=list)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @model_validator(mode="after")
    def _unique_users(self) -> Config:
        seen: set[str] = set()
        for u in self.users:
            if u.user_id in seen:
                raise ValueError(f"duplicate user_id {u.user_id!r}")
            seen.add(u.user_id)
        return self

    def user(self, user_id: str) -> UserConfig | None:
        for u in self.users:
            if u.user_id == user_id:
                return u
        return None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any, env: dict[str, str], where: str = "") -> Any:
    """Replace ``${VAR}`` in every string so secrets can stay out of the file."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                raise ConfigError(f"{where or 'config'}: environment variable {name} is not set")
            return env[name]

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{where}.{i}") for i, v in enumerate(value)]
    return value


def parse_config(raw: Any, env: dict[str, str] | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    data = expand_env(raw, dict(os.environ) if env is None else env)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"{loc}: {err['msg']}") from None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_config(raw, env)


DEMO_USER = {
    "user_id": "u-demo",
    "api_token": "t-demo-token",
    "api_secret": "demo-secret",
    "account_id": "9900000",
    "application_id": "93de2206-9669-4e07-948d-329f4b722ee2",
    "v2_username": "sandbox-user",
    "v2_password": "sandbox-pass",
}


def demo_config() -> Config:
    """Embedded defaults for ``make run``: SQLite, the sandbox upstream and one demo user."""
    return parse_config(
        {
            "callbacks": {"username": "bandwidth", "password": "callback-secret"},
            "users": [DEMO_USER],
        }
    )


def masked(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data, with every secret masked."""
    data: dict[str, Any] = cfg.model_dump(mode="json")

    def mask(obj: Any, key: str = "") -> Any:
        if isinstance(obj, dict):
            return {k: mask(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [mask(v) for v in obj]
        if isinstance(obj, str) and key in {"url", "base_url", "fallback_url"}:
            return _mask_userinfo(obj)
        return obj

    data = mask(data)
    # SecretStr dumps as '**********' already; store URLs may carry a password.
    return data


def _mask_userinfo(url: str) -> str:
    return re.sub(r"//([^/@:]+):([^/@]*)@", r"//\1:***@", url)
