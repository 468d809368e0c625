"""One HTTP attempt of a v1 callback: the legacy app's URL, its method, the Standard Webhooks
headers and the outbound address policy. The engine decides what to attempt and when."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from shim.basic_auth import basic_header
from shim.core import DeliverySpec, parse_retry_after
from shim.ops import scrub

from ._url_safety import AddressPolicy, SafeResolver, UnsafeUrl

USER_AGENT = "BandwidthAPI/v1"
# What is read of a receiver's answer: enough for a diagnosis, never enough to exhaust memory.
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    error: str = ""
    retry_after_s: float | None = None


def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``v1,<base64 HMAC-SHA256(id.timestamp.body)>``."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def query_params(body: dict[str, Any]) -> list[tuple[str, str]]:
    """A v1 callback as GET query parameters; ``media`` repeats once per URL."""
    out: list[tuple[str, str]] = []
    for key, value in body.items():
        if isinstance(value, list):
            out.extend((key, str(v)) for v in value)
        elif isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        elif value is not None:
            out.append((key, str(value)))
    return out


class CallbackClient:
    def __init__(
        self, policy: AddressPolicy, *, concurrency: int, per_host: int, signing_secret: str | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.concurrency = concurrency
        self.per_host = per_host
        self.secret = signing_secret
        # Seconds since the epoch: webhook-timestamp and HTTP-date Retry-After.
        self.wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.concurrency, limit_per_host=self.per_host, resolver=SafeResolver(self.policy),
        )
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def attempt(self, spec: DeliverySpec, url: str) -> AttemptResult:
        if self._session is None:
            raise RuntimeError("callback client is not started")
        try:
            target = self.policy.check_url(url)
        except (UnsafeUrl, ValueError) as e:
            return AttemptResult(False, f"refused: {e}")
        headers = {"User-Agent": USER_AGENT, "webhook-id": spec.event_id}
        if spec.request_id:
            headers["X-Request-Id"] = spec.request_id
        if target.user is not None:
            headers["Authorization"] = basic_header(target.user, target.password or "")
            target = target.with_user(None)
        now = self.wall_clock()
        ts = int(now)
        headers["webhook-timestamp"] = str(ts)
        body = b""
        if spec.method == "GET" and spec.format == "v1":
            target = target.update_query(query_params(spec.body))
        else:
            body = json.dumps(spec.body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json; charset=utf-8"
        if self.secret:
            headers["webhook-signature"] = signature(self.secret, spec.event_id, ts, body)
        timeout = aiohttp.ClientTimeout(total=spec.timeout_ms / 1000)
        method = spec.method if spec.format == "v1" else "POST"
        try:
            async with self._session.request(
                method, target, data=body if method == "POST" else None, headers=headers,
                timeout=timeout, allow_redirects=False,
            ) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)
                if not resp.content.at_eof():
                    # More than we read: drop the connection instead of draining it into the pool.
                    resp.close()
                if 200 <= resp.status < 300:
                    return AttemptResult(True)
                return AttemptResult(
                    False, f"HTTP {resp.status}", parse_retry_after(resp.headers.get("Retry-After"), now)
                )
        except TimeoutError:
            return AttemptResult(False, f"timeout after {spec.timeout_ms} ms")
        except aiohttp.ClientConnectorError as e:
            detail = " ".join(str(a) for a in e.os_error.args if a is not None) or str(e)
            return AttemptResult(False, f"{type(e).__name__}: {scrub(detail)[:200]}")
        except (aiohttp.ClientError, OSError) as e:
            return AttemptResult(False, f"{type(e).__name__}: {scrub(str(e))[:200]}")
