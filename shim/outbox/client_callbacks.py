"""One HTTP attempt of a v1 callback: the legacy app's URL, its method, the Standard Webhooks
headers and the outbound address policy. The engine decides what to attempt and when.

Sent over ``H1Transport`` (shim's small keep-alive client, about a quarter of aiohttp's CPU per
request) unless ``callbacks.http_client`` is ``aiohttp``. Either way the address policy judges the
addresses actually connected to (``SafeResolver``), nothing is redirected, at most
``MAX_RESPONSE_BYTES`` of an answer is read, and the results (their error texts too) are the same.
"""

from __future__ import annotations

import base64
import hmac
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import aiohttp
from standardwebhooks import Webhook
from yarl import URL

from shim.basic_auth import basic_header
from shim.core import RECONCILED_HEADER, DeliverySpec, parse_retry_after, v1_json_bytes
from shim.ops import scrub
from shim.upstream import ConnectFailed, H1Transport, TimedOut, Timeout, TransportError

from ._url_safety import AddressPolicy, RefusedAddress, SafeResolver, UnsafeUrl

USER_AGENT = "BandwidthAPI/v1"
# What is read of a receiver's answer: enough for a diagnosis, never enough to exhaust memory.
MAX_RESPONSE_BYTES = 64 * 1024
# What of an answer the delivery log keeps.
RESPONSE_PREVIEW = 256
# Headers aiohttp's client adds on its own, sent by H1Transport too (not Accept-Encoding: an
# answer's body is never decoded, so no compression is offered).
_AUTO_HEADERS = {"Accept": "*/*"}
# H1Transport's failures that aiohttp words differently, in aiohttp's words (logs, last_error).
_AIOHTTP_TEXTS = {"ServerDisconnectedError": "ServerDisconnectedError: Server disconnected"}


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    error: str = ""
    retry_after_s: float | None = None
    # A failure no retry can fix (the target address is refused): dead-lettered at once.
    permanent: bool = False
    # The receiver's HTTP status, when it answered (logs and metrics; not part of equality).
    status: int | None = field(default=None, compare=False)
    # The first bytes of the receiver's answer (already read anyway: the delivery log keeps them).
    response: bytes = field(default=b"", compare=False, repr=False)


def signature(secrets: Sequence[str] | str, event_id: str, timestamp: int, payload: str) -> str:
    """Standard Webhooks ``webhook-signature``: ``v1,<base64 HMAC-SHA256(id.timestamp.payload)>``
    per secret (``whsec_`` + base64), space-separated while a secret rotates. ``payload`` is the
    exact body sent, or for a GET callback the exact query string (without ``?``)."""
    keys = [secrets] if isinstance(secrets, str) else secrets
    signed = f"{event_id}.{timestamp}.{payload}".encode()
    return " ".join("v1," + base64.b64encode(hmac.digest(_key(k), signed, "sha256")).decode() for k in keys)


@lru_cache(maxsize=16)
def _key(secret: str) -> bytes:
    """A secret's HMAC key, decoded once (as the reference library does: ``whsec_`` + base64,
    padding optional)."""
    return Webhook(secret)._whsecret


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


def _connect_error(e: ConnectFailed) -> str:
    """A connection that could not be made, named as aiohttp's client names it."""
    cause = e.__cause__
    if not isinstance(cause, OSError):
        return f"ClientConnectorError: {scrub(str(e))[:200]}"
    if isinstance(cause, socket.gaierror):
        name = "ClientConnectorDNSError"
    elif isinstance(cause, ssl.SSLCertVerificationError):
        name = "ClientConnectorCertificateError"
    elif isinstance(cause, ssl.SSLError):
        name = "ClientConnectorSSLError"
    else:
        name = "ClientConnectorError"
    detail = " ".join(str(a) for a in cause.args if a is not None) or str(e)
    return f"{name}: {scrub(detail)[:200]}"


class CallbackClient:
    """``http_client``: ``auto``/``httptools`` (``H1Transport``) or ``aiohttp``. Either way
    ``per_host`` connections at most per scheme, host and port (the engine keeps to
    ``per_host_concurrency`` per host and ``concurrency`` in all)."""

    def __init__(
        self, policy: AddressPolicy, *, concurrency: int, per_host: int, signing_secrets: Sequence[str] = (),
        wall_clock: Callable[[], float] = time.time, http_client: str = "auto",
    ) -> None:
        self.policy = policy
        self.concurrency = concurrency
        self.per_host = per_host
        self.secrets = list(signing_secrets)
        # Seconds since the epoch: webhook-timestamp and HTTP-date Retry-After.
        self.wall_clock = wall_clock
        self.http_client = http_client
        self._resolver: SafeResolver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._h1: H1Transport | None = None
        # check_url's verdicts (the policy never changes): a callback URL is parsed and judged once.
        self._checked: dict[str, URL | str] = {}

    async def start(self) -> None:
        self._resolver = resolver = SafeResolver(self.policy)
        if self.http_client == "aiohttp":
            connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.per_host, resolver=resolver)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        else:
            # Idle connections: at most one per attempt that may be in flight, each for 15 s at most.
            self._h1 = H1Transport(self.per_host, 10.0, resolve=resolver.addresses, max_idle=self.concurrency)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._h1 is not None:
            await self._h1.close()
            self._h1 = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def attempt(self, spec: DeliverySpec, url: str) -> AttemptResult:
        if self._session is None and self._h1 is None:
            raise RuntimeError("callback client is not started")
        target = self._checked.get(url)
        if target is None:
            try:
                target = self.policy.check_url(url)
            except (UnsafeUrl, ValueError) as e:
                target = f"refused: {e}"
            if len(self._checked) >= 1024:
                self._checked.clear()
            self._checked[url] = target
        if isinstance(target, str):
            return AttemptResult(False, target, permanent=True)
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
        method = spec.method if spec.format == "v1" else "POST"
        if self._h1 is not None:
            return await self._send_h1(self._h1, spec, method, target, headers, body, now)
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=spec.timeout_ms / 1000)
        try:
            async with self._session.request(
                method, target, data=body if method == "POST" else None, headers=headers,
                timeout=timeout, allow_redirects=False,
            ) as resp:
                data = await resp.content.read(MAX_RESPONSE_BYTES)
                if not resp.content.at_eof():
                    # More than we read: drop the connection instead of draining it into the pool.
                    resp.close()
                if 200 <= resp.status < 300:
                    return AttemptResult(True, status=resp.status, response=data[:RESPONSE_PREVIEW])
                return AttemptResult(
                    False, f"HTTP {resp.status}", parse_retry_after(resp.headers.get("Retry-After"), now),
                    status=resp.status, response=data[:RESPONSE_PREVIEW],
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

    async def _send_h1(
        self, h1: H1Transport, spec: DeliverySpec, method: str, target: URL, headers: dict[str, str], body: bytes,
        now: float,
    ) -> AttemptResult:
        try:
            async with h1.request(
                method, target, headers=_AUTO_HEADERS | headers, body=body if method == "POST" else None,
                timeouts=Timeout(total=spec.timeout_ms / 1000),
            ) as resp:
                data = await resp.read_some(MAX_RESPONSE_BYTES)  # a longer answer: its connection is dropped
                if 200 <= resp.status < 300:
                    return AttemptResult(True, status=resp.status, response=data[:RESPONSE_PREVIEW])
                return AttemptResult(
                    False, f"HTTP {resp.status}", parse_retry_after(resp.headers.get("Retry-After"), now),
                    status=resp.status, response=data[:RESPONSE_PREVIEW],
                )
        except TimedOut:
            return AttemptResult(False, f"timeout after {spec.timeout_ms} ms")
        except ConnectFailed as e:
            if isinstance(e.__cause__, RefusedAddress):  # from SafeResolver.addresses, before any connect
                return AttemptResult(False, scrub(str(e.__cause__))[:200], permanent=True)
            return AttemptResult(False, _connect_error(e))
        except (TransportError, OSError) as e:  # connected, then a reset or a bad answer
            text = scrub(str(e))[:200] or type(e).__name__
            return AttemptResult(False, _AIOHTTP_TEXTS.get(text, text))
