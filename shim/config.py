"""Configuration: YAML with ``${ENV}`` expansion, validated by pydantic.

Key names are part of the product contract (SPEC §2); unknown keys are rejected so a typo
fails loudly at start instead of silently using a default. Every problem is reported (one line
each, naming the key), not only the first.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator

DEFAULT_RETRY_SCHEDULE: list[float] = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200]
MIN_SECRET_LEN = 12
# Paths of shim's own routes: the callback ingest path may not shadow any of them.
RESERVED_PATHS = ("/v1", "/api/v2", "/healthz", "/readyz", "/metrics", "/admin")


class ConfigError(Exception):
    """User-facing configuration problems, one line each naming the key."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems) or ["config: invalid"]
        super().__init__("\n".join(self.problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_url(value: str, *, http_only: bool = True) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"not a valid URL: {value!r}") from None
    if http_only and parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"must be an absolute URL with a scheme and a host, got {value!r}")
    return value


def _check_whsec(value: str) -> str:
    if not value.startswith("whsec_"):
        raise ValueError("must be a Standard Webhooks secret: 'whsec_' followed by base64")
    try:
        key = base64.b64decode(value[6:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be a Standard Webhooks secret: 'whsec_' followed by valid base64") from None
    if len(key) < 16:
        raise ValueError("the secret must decode to at least 16 bytes")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6)."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535 or not host:
        raise ValueError(f"must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Base of every URL shim hands out (Location, messageUri, Link, media).
    public_url: str = ""
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # A connection that has not sent a whole request head this long after it opened (or after
    # its first byte of a new request) is answered 408 and closed: slow clients hold no slot.
    header_timeout_s: float = Field(10, gt=0)
    # The hot routes (a v1 send, the callback POST) served straight from the connection instead of
    # through aiohttp's request machinery (``shim.web_fastpath``); off: every request goes aiohttp's way.
    fast_path: bool = True

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        return _check_url(v) if v else v

    @model_validator(mode="after")
    def _default_public_url(self) -> ServerConfig:
        if not self.public_url:
            # A wildcard bind (a container) is reached on loopback, never at "0.0.0.0".
            host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
            self.public_url = f"http://{host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")
        return self


class UpstreamConfig(_Model):
    mode: Literal["bandwidth", "sandbox"] = "sandbox"
    base_url: str = "https://messaging.bandwidth.com/api/v2"
    timeout_s: float = Field(10, gt=0)
    max_connections: int = Field(100, ge=1)
    # The HTTP client to v2: auto (= httptools, shim's small keep-alive client) or aiohttp.
    http_client: Literal["auto", "httptools", "aiohttp"] = "auto"
    # Sends inside one v1 batch that may be in flight at once.
    batch_concurrency: int = Field(50, ge=1)
    # Retries of a send that failed to *connect* (it cannot have reached v2).
    connect_retries: int = Field(2, ge=0)
    # Largest media upload accepted (v2's limit is 3.75 MB).
    max_media_bytes: int = Field(3_750_000, ge=1)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _check_url(v, http_only=False)


class StoreConfig(_Model):
    url: str = "sqlite:///./shim.db"
    # PostgreSQL connections per replica (SQLite uses one writer and two readers).
    pool_size: int = Field(40, ge=2)
    # SQLite: where the hot paths' short writes run. "loop": on the event loop's thread, a batch
    # per loop turn (least CPU and latency on one core); "thread": on the writer thread, beside
    # the loop (SQLite's work on another core where there is one). See shim/store/_sqlite.py.
    sqlite_writer: Literal["loop", "thread"] = "loop"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme = v.partition(":")[0].lower()
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"unsupported store {scheme + ':' if scheme else repr(v)}; use sqlite: or postgresql:")
        return v


# A callback attempt lasts at most its callbackTimeout (≤ 10 s), primary then fallback.
MAX_ATTEMPT_S = 2 * 10.0
# callbacks.lease_s must exceed the longest attempt (primary + fallback) by this margin: leases are
# renewed while held, and this keeps a held delivery leased even across a missed renewal.
LEASE_MARGIN_S = 5.0


class BreakerConfig(_Model):
    """callbacks.breaker: per-host circuit breaker (see shim/core/_breaker.py)."""

    enabled: bool = True
    # Opens after this many consecutive failed attempts (timeout, connection error, 5xx, 408, 429) ...
    failure_threshold: int = Field(5, ge=1)
    # ... or when this share of the last ``window`` attempts failed, once there were min_attempts.
    failure_rate: float = Field(0.5, gt=0, le=1)
    min_attempts: int = Field(20, ge=1)
    window: int = Field(100, ge=1)
    # How long an open host's deliveries are held back before one probe; doubled after each
    # failed probe up to max_open_s.
    open_s: float = Field(30, gt=0)
    max_open_s: float = Field(600, gt=0)
    # Hosts tracked per replica (least recently attempted forgotten first): bounds memory and labels.
    max_hosts: int = Field(1000, ge=1)


class CallbacksConfig(_Model):
    path: str = "/callbacks/v2"
    username: str | None = None
    password: SecretStr | None = None
    retry_schedule_s: list[float] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    # Standard Webhooks secret (whsec_ + base64): adds webhook-signature to every v1 callback.
    signing_secret: SecretStr | None = None
    # More secrets while one rotates: every callback carries one signature per secret.
    signing_secrets: list[SecretStr] = Field(default_factory=list)
    # How long a status event may wait for its send to be recorded before it is treated as
    # an event of a message sent natively on v2.
    unmatched_grace_s: float = Field(60, gt=0)
    concurrency: int = Field(200, ge=1)
    # How long a replica's hold on a delivery lasts unrenewed (it is renewed every lease_s/3 while
    # held): a dead replica's work is taken over after this. At least MAX_ATTEMPT_S + LEASE_MARGIN_S.
    lease_s: float = Field(60, gt=0)
    per_host_concurrency: int = Field(16, ge=1)
    # The HTTP client to apps' callback URLs: auto (= httptools, shim's small keep-alive client) or aiohttp.
    http_client: Literal["auto", "httptools", "aiohttp"] = "auto"
    # Networks callbacks may reach although refused by default (loopback, private, ...).
    allow_cidrs: list[str] = Field(default_factory=list)
    # Networks callbacks never reach (wins over allow_cidrs).
    deny_cidrs: list[str] = Field(default_factory=list)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("path must start with '/'")
        for reserved in RESERVED_PATHS:
            if v == reserved or v.startswith(reserved + "/") or (reserved == "/admin" and v.startswith("/admin")):
                raise ValueError(f"{v} collides with shim's own route {reserved}")
        return v

    @field_validator("lease_s")
    @classmethod
    def _lease(cls, v: float) -> float:
        least = MAX_ATTEMPT_S + LEASE_MARGIN_S
        if v < least:
            raise ValueError(
                f"lease_s must be at least {least:g} s: the longest callback attempt (primary then fallback,"
                f" {MAX_ATTEMPT_S:g} s at the 10 s callbackTimeout maximum) plus {LEASE_MARGIN_S:g} s")
        return v

    @field_validator("retry_schedule_s")
    @classmethod
    def _schedule(cls, v: list[float]) -> list[float]:
        if not v or any(s < 0 for s in v):
            raise ValueError("retry_schedule_s must be a non-empty list of non-negative seconds")
        return v

    @field_validator("allow_cidrs", "deny_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"not a CIDR network: {c!r}") from None
        return v

    @field_validator("signing_secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _check_whsec(v.get_secret_value())
        return v

    @field_validator("signing_secrets")
    @classmethod
    def _secrets(cls, v: list[SecretStr]) -> list[SecretStr]:
        for s in v:
            _check_whsec(s.get_secret_value())
        return v

    def secrets(self) -> list[str]:
        """Every signing secret, the primary first."""
        out = [self.signing_secret.get_secret_value()] if self.signing_secret else []
        return out + [s.get_secret_value() for s in self.signing_secrets]


class AdminConfig(_Model):
    # The admin API (dead letters, replay) is off unless both are set.
    username: str | None = None
    password: SecretStr | None = None
    # "host:port": serve the admin API on its own listener only (not on the main port).
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.username) and self.password is not None and bool(self.password.get_secret_value())


def _http_url(v: str | None) -> str | None:
    return _check_url(v) if v is not None else v


class IncomingConfig(_Model):
    url: str
    fallback_url: str | None = None
    method: Literal["GET", "POST"] = "POST"
    timeout_ms: int = Field(10000, ge=1, le=10000)

    _urls = field_validator("url", "fallback_url")(_http_url)


class NativeEventsConfig(_Model):
    format: Literal["v1", "v2"] = "v2"
    url: str

    _url = field_validator("url")(_http_url)


class DeprecationConfig(_Model):
    """Deprecation signals on every v1 response to this user (SPEC §8): RFC 9745
    ``Deprecation: @<unix seconds>``, RFC 8594 ``Sunset: <HTTP-date>``, ``Link: <url>; rel="deprecation"``.
    The header list is built once here, so a response only looks it up."""

    date: datetime | None = None
    sunset: datetime | None = None
    link: str | None = None
    _headers: tuple[tuple[str, str], ...] = PrivateAttr(default=())

    @field_validator("date", "sunset")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v

    @field_validator("link")
    @classmethod
    def _link(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in '<>",; \t'):
            raise ValueError("must not contain <, >, quotes, commas, semicolons or spaces (percent-encode them)")
        return _http_url(v)

    @model_validator(mode="after")
    def _check(self) -> DeprecationConfig:
        if self.date is None and self.sunset is None and self.link is None:
            raise ValueError("set at least one of date, sunset, link")
        if self.date is not None and self.sunset is not None and self.sunset < self.date:
            raise ValueError("sunset must not be before date")
        return self

    def model_post_init(self, context: Any, /) -> None:
        headers = []
        if self.date is not None:
            headers.append(("Deprecation", f"@{int(self.date.timestamp())}"))
        if self.sunset is not None:
            headers.append(("Sunset", format_datetime(self.sunset.astimezone(UTC), usegmt=True)))
        if self.link is not None:
            headers.append(("Link", f'<{self.link}>; rel="deprecation"'))
        self._headers = tuple(headers)

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._headers


UserMode = Literal["live", "dry-run"]
USER_MODES: tuple[UserMode, ...] = ("live", "dry-run")


def user_mode(value: object) -> UserMode | None:
    """``value`` as a user mode, or None when it is not one."""
    for mode in USER_MODES:
        if value == mode:
            return mode
    return None


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
    deprecation: DeprecationConfig | None = None
    # live: sends go to v2. dry-run: validated and translated as live, checked against v2's spec,
    # stored and answered as v1 would, nothing sent; callbacks simulated. Changeable at run time
    # (POST /admin/users/{userId}/mode).
    mode: UserMode = "live"

    @field_validator("api_secret")
    @classmethod
    def _not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value():
            raise ValueError("must not be empty")
        return v


class RetentionConfig(_Model):
    text_days: float = Field(3, gt=0)
    purge_days: float = Field(30, gt=0)
    # How often the retention pass runs (every replica runs it; it is idempotent).
    interval_s: float = Field(3600, gt=0)

    @model_validator(mode="after")
    def _order(self) -> RetentionConfig:
        if self.text_days > self.purge_days:
            raise ValueError(f"text_days ({self.text_days:g}) must not exceed purge_days ({self.purge_days:g})")
        return self


class ReconcileConfig(_Model):
    """Reconciliation with v2's message search (SPEC §9)."""

    # The periodic run in ``serve`` (``shim reconcile`` works either way).
    enabled: bool = True
    # A message not final this long after it was sent is looked up (default 2 h 15 m: past
    # Bandwidth's receipt window).
    after_s: float = Field(8100, gt=0)
    # How often a replica tries to take the lease and run.
    interval_s: float = Field(900, gt=0)
    # Messages per batch (one search, paged, per account in the batch).
    batch_size: int = Field(100, ge=1, le=1000)
    # Search results per page (v2 allows up to 10 000 per query).
    page_size: int = Field(1000, ge=1, le=10000)
    # Pages read at most per batch and account.
    max_pages: int = Field(20, ge=1)
    # The lease of the replica reconciling; renewed after every batch.
    lease_s: float = Field(300, ge=5)
    # Waits after a 429 from the search (each at least its Retry-After); the run stops (and
    # resumes next time) when they run out.
    retry_schedule_s: list[float] = Field(default_factory=lambda: [1.0, 5.0, 15.0, 60.0, 300.0], min_length=1)


class SandboxConfig(_Model):
    # Delay before the simulator posts its callbacks (seconds).
    callback_delay_s: float = Field(0.05, ge=0)


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    users: list[UserConfig] = Field(default_factory=list)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    def user(self, user_id: str) -> UserConfig | None:
        for u in self.users:
            if u.user_id == user_id:
                return u
        return None


def cross_checks(cfg: Config) -> list[str]:
    """Rules spanning several keys, each problem one line naming a key."""
    problems: list[str] = []
    for field in ("user_id", "application_id"):
        seen: set[str] = set()
        for i, u in enumerate(cfg.users):
            value = getattr(u, field)
            if value in seen:
                problems.append(f"users.{i}.{field}: duplicate {field} {value!r}")
            seen.add(value)
    if cfg.upstream.mode != "sandbox":
        if not cfg.callbacks.username or cfg.callbacks.password is None:
            problems.append("callbacks.username: outside sandbox mode the callback endpoint requires "
                            "credentials (set callbacks.username and callbacks.password)")
        secrets: list[tuple[str, SecretStr | None]] = [(f"users.{i}.api_secret", u.api_secret) for i, u in enumerate(cfg.users)]
        secrets += [("callbacks.password", cfg.callbacks.password), ("admin.password", cfg.admin.password)]
        for key, secret in secrets:
            if secret is not None and len(secret.get_secret_value()) < MIN_SECRET_LEN:
                problems.append(f"{key}: must be at least {MIN_SECRET_LEN} characters outside sandbox mode")
    if cfg.admin.listen and not cfg.admin.enabled:
        problems.append("admin.listen: set admin.username and admin.password to enable the admin API")
    if cfg.admin.listen:
        _, port = parse_listen(cfg.admin.listen)
        if port == cfg.server.port:
            problems.append(f"admin.listen: port {port} is server.port")
    return problems


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MOVED_KEYS = {("callbacks", "admin_username"): "admin.username", ("callbacks", "admin_password"): "admin.password"}


def expand_env(value: Any, env: dict[str, str], where: str = "", problems: list[str] | None = None) -> Any:
    """Replace ``${VAR}`` (or ``${VAR:-default}``) in every string so secrets can stay out of the file.
    An unset or empty variable without a default is a problem (collected, or raised at once)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if env.get(name):
                return env[name]
            if default is not None:
                return default
            problem = f"{where or 'config'}: environment variable {name} is not set or empty"
            if problems is None:
                raise ConfigError(problem)
            problems.append(problem)
            return ""

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{where}.{k}" if where else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{where}.{i}", problems) for i, v in enumerate(value)]
    return value


# Environment variables that override one config value each, over the file or the embedded demo
# (a container is configured by its environment). Empty counts as unset, as in ``${VAR}``.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "SHIM_HOST": ("server", "host"),
    "SHIM_PORT": ("server", "port"),
    "SHIM_PUBLIC_URL": ("server", "public_url"),
    "SHIM_STORE_URL": ("store", "url"),
}


def apply_env_overrides(data: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """Set each value named in ``ENV_OVERRIDES`` whose variable is set (and not empty) in ``env``,
    in place; the value is validated like any other. Returns ``{"section.key": VARIABLE}`` of what
    was overridden, so a problem with such a value names the variable."""
    applied: dict[str, str] = {}
    for var, (section, key) in ENV_OVERRIDES.items():
        value = env.get(var, "").strip()
        if not value:
            continue
        if data.get(section) is None:
            data[section] = {}
        elif not isinstance(data[section], dict):
            continue  # reported by validation: the section must be a mapping
        data[section][key] = value
        applied[f"{section}.{key}"] = var
    return applied


def parse_config(raw: Any, env: dict[str, str] | None = None, *, default_mode: str = "sandbox") -> Config:
    """Validate raw config data. ``default_mode`` is the upstream mode when none is given: a
    config file (``load_config``) defaults to ``bandwidth``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    problems: list[str] = []
    env = dict(os.environ) if env is None else env
    data = expand_env(raw, env, problems=problems)
    overridden = apply_env_overrides(data, env)
    bad_keys = {p.split(":", 1)[0] for p in problems}
    for (section, key), new in MOVED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            problems.append(f"{section}.{key}: moved to {new}")
            data[section] = {k: v for k, v in data[section].items() if k != key}
    upstream = data.get("upstream")
    if upstream is None or (isinstance(upstream, dict) and "mode" not in upstream):
        data["upstream"] = dict(upstream or {}, mode=default_mode)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "config"
            if loc not in bad_keys:
                msg = str(err["msg"]).removeprefix("Value error, ")
                source = next((f" (set by environment variable {var})" for key, var in overridden.items()
                               if loc == key or loc.startswith(key + ".")), "")
                problems.append(f"{loc}: {msg}{source}")
        raise ConfigError(*problems) from None
    problems += [p for p in cross_checks(cfg) if p.split(":", 1)[0] not in bad_keys]
    if problems:
        raise ConfigError(*problems)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys (a silently ignored value is a trap)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        detail = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config: {path} is not valid YAML: {detail}") from None
    return parse_config(raw, env, default_mode="bandwidth")


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
    """Embedded defaults for ``make run``: SQLite, the sandbox upstream, one demo user, and
    callbacks allowed to loopback (the demo's receivers run on this machine)."""
    return parse_config(
        {
            "upstream": {"mode": "sandbox"},
            "callbacks": {"username": "bandwidth", "password": "callback-secret",
                          "allow_cidrs": ["127.0.0.0/8", "::1/128"]},
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
            return mask_userinfo(obj)
        return obj

    data = mask(data)
    # SecretStr dumps as '**********' already; store URLs may carry a password.
    return data


def mask_userinfo(url: str) -> str:
    """``scheme://user:***@host``: a URL's userinfo password never shown; userinfo without a
    password (``scheme://token@host``) is a secret itself and shown as ``***``."""
    return _USERINFO.sub(lambda m: f"//{m.group(1)}:***@" if m.group(2) is not None else "//***@", url)


_USERINFO = re.compile(r"//([^/@:\s]+)(:[^/@\s]*)?@")
