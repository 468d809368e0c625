"""One HTTP attempt of a v1 callback: the legacy app's URL, its method, the Standard Webhooks
headers and the outbound address policy. The engine decides what to attempt and when."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
from standardwebhooks import Webhook
from yarl import URL

from shim.basic_auth import basic_header
from shim.core import RECONCILED_HEADER, DeliverySpec, parse_retry_after, v1_json_bytes
from shim.ops import scrub

from ._url_safety import AddressPolicy, RefusedAddress, SafeResolver, UnsafeUrl

USER_AGENT = "BandwidthAPI/v1"
# What is read of a receiver's answer: enough for a diagnosis, never enough to exhaust memory.
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    error: str = ""
    retry_after_s: float | None = None
    # A failure no retry can fix (the target address is refused): dead-lettered at once.
    permanent: bool = False


def signature(secrets: Sequence[str] | str, event_id: str, timestamp: int, payload: str) -> str:
    """Standard Webhooks ``webhook-signature``: ``v1,<base64 HMAC-SHA256(id.timestamp.payload)>``
    per secret (``whsec_`` + base64), space-separated while a secret rotates. ``payload`` is the
    exact body sent, or for a GET callback the exact query string (without ``?``)."""
    when = datetime.fromtimestamp(timestamp, UTC)
    keys = [secrets] if isinstance(secrets, str) else secrets
    return " ".join(Webhook(k).sign(event_id, when, payload) for k in keys)


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
        self, policy: AddressPolicy, *, concurrency: int, per_host: int, signing_secrets: Sequence[str] = (),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.concurrency = concurrency
        self.per_host = per_host
        self.secrets = list(signing_secrets)
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
            return AttemptResult(False, f"refused: {e}", permanent=True)
        headers = {"User-Agent": USER_AGENT, "webhook-id": spec.event_id}
        if spec.request_id:
            headers["X-Request-Id"] = spec.request_id
        if spec.reconciled:
            headers[RECONCILED_HEADER] = "true"
        if target.user is not None:
            headers["Authorization"] = basic_header(target.user, target.password or "")
            target = target.with_user(None)
        now = self.wall_clock()
        ts = int(now)
        headers["webhook-timestamp"] = str(ts)
        body = b""
        if spec.method == "GET" and spec.format == "v1":
            # The query string is built once and sent as is: it is what the signature covers.
            query = urlencode(query_params(spec.body))
            if target.query_string:
                query = f"{target.raw_query_string}&{query}" if query else target.raw_query_string
            target = URL(str(target.with_query(None)) + ("?" + query if query else ""), encoded=True)
            signed = query
        else:
            body = v1_json_bytes(spec.body)
            signed = body.decode()
            headers["Content-Type"] = "application/json; charset=utf-8"
        if self.secrets:
            headers["webhook-signature"] = signature(self.secrets, spec.event_id, ts, signed)
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
            if isinstance(e.os_error, RefusedAddress):
                return AttemptResult(False, scrub(str(e.os_error))[:200], permanent=True)
            detail = " ".join(str(a) for a in e.os_error.args if a is not None) or str(e)
            return AttemptResult(False, f"{type(e).__name__}: {scrub(detail)[:200]}")
        except (aiohttp.ClientError, OSError) as e:
            return AttemptResult(False, f"{type(e).__name__}: {scrub(str(e))[:200]}")
