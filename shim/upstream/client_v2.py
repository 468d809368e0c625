"""The v2 client: sends and the media API, over an injectable ``Transport``.

A send is retried only when the connection could not be made: once bytes may have reached v2
a retry could send a duplicate SMS, so any later failure is answered 503 instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import orjson
from pydantic import ValidationError

from shim.basic_auth import basic_header
from shim.config import UpstreamConfig, UserConfig
from shim.core import V2Message, v2_error_to_v1
from shim.errors import MediaUnavailable, OutcomeUnknown, Unavailable

from ._h1 import H1Transport
from ._transport import AiohttpTransport, Body, ConnectFailed, RequestFailed, Response, Timeout, Transport

log = logging.getLogger("shim.upstream")


class SearchFailed(Exception):
    """The v2 message search gave no usable answer."""


class SearchRateLimited(SearchFailed):
    """The v2 message search answered 429; ``retry_after`` is its ``Retry-After`` header."""

    def __init__(self, retry_after: str | None) -> None:
        super().__init__(f"HTTP 429 (Retry-After: {retry_after})")
        self.retry_after = retry_after

# (operation, seconds, HTTP status or an error word): read by the metrics.
LatencyObserver = Callable[[str, float, int | str], None]


def _dumps(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as ``json.dumps(separators=(",", ":"), ensure_ascii=False)`` writes it, faster."""
    try:
        return orjson.dumps(body)
    except TypeError:  # what orjson refuses (an int over 64 bits, a lone surrogate): json's own verdict
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class UpstreamClient:
    def __init__(
        self, cfg: UpstreamConfig, base_url: str, *, transport: Transport | None = None,
        observer: LatencyObserver | None = None,
    ) -> None:
        self.cfg = cfg
        self.base_url = base_url.rstrip("/")
        self._transport = transport
        self._owns_transport = transport is None
        self._observer = observer

    async def start(self) -> None:
        if self._transport is None:
            make = AiohttpTransport if self.cfg.http_client == "aiohttp" else H1Transport
            self._transport = make(self.cfg.max_connections, self.cfg.timeout_s)

    async def close(self) -> None:
        if self._transport is not None and self._owns_transport:
            await self._transport.close()
            self._transport = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("upstream client is not started")
        return self._transport

    def _auth(self, user: UserConfig) -> dict[str, str]:
        return {"Authorization": basic_header(user.v2_username, user.v2_password.get_secret_value())}

    def _observe(self, op: str, started: float, status: int | str) -> None:
        if self._observer is not None:
            self._observer(op, time.perf_counter() - started, status)

    async def send_message(self, user: UserConfig, body: dict[str, Any], request_id: str = "") -> V2Message:
        url = f"{self.base_url}/users/{user.account_id}/messages"
        headers = self._auth(user) | {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        data = _dumps(body)
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                async with self.transport.request("POST", url, headers=headers, body=data) as resp:
                    raw = await resp.read()
                    self._observe("send", started, resp.status)
                    return self._send_result(resp.status, raw, request_id, user.user_id)
            except ConnectFailed as e:
                self._observe("send", started, "connect-error")
                if attempt < self.cfg.connect_retries:
                    attempt += 1
                    await asyncio.sleep(0.05 * attempt)
                    continue
                log.error("upstream connect failed",
                          extra={"error": str(e), "request_id": request_id, "user_id": user.user_id})
                raise Unavailable("The messaging gateway is unavailable") from None
            except RequestFailed as e:
                # The request may have reached v2: never retried, and the app is told so.
                self._observe("send", started, "error")
                log.error("upstream send failed after sending",
                          extra={"error": str(e), "request_id": request_id, "user_id": user.user_id})
                raise OutcomeUnknown() from None

    def _send_result(self, status: int, raw: bytes, request_id: str = "", user_id: str = "") -> V2Message:
        parsed: Any = None
        try:
            parsed = orjson.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if status in (200, 201, 202):
            try:
                return V2Message.model_validate(parsed)
            except ValidationError:
                # Accepted, but we cannot tell which message it became: its events will say.
                log.error("upstream 202 body without a message id",
                          extra={"request_id": request_id, "user_id": user_id})
                raise OutcomeUnknown() from None
        if status in (401, 403):
            log.critical(
                "upstream rejected shim's v2 credentials (HTTP %s): check users[].v2_username/"
                "v2_password", status, extra={"request_id": request_id, "user_id": user_id},
            )
        raise v2_error_to_v1(status, parsed)

    # -- message search (reconciliation) -------------------------------------------------------
    async def search_messages(self, user: UserConfig, params: dict[str, str]) -> dict[str, Any]:
        """``GET /users/{accountId}/messages`` (``listMessages``): the ``messagesList`` body.
        Raises ``SearchRateLimited`` on 429 (with its ``Retry-After``), ``SearchFailed`` on any
        other failure. Reads only: safe to retry."""
        url = f"{self.base_url}/users/{user.account_id}/messages?{urlencode(params)}"
        started = time.perf_counter()
        try:
            async with self.transport.request("GET", url, headers=self._auth(user)) as resp:
                raw = await resp.read()
                self._observe("search", started, resp.status)
                if resp.status == 429:
                    raise SearchRateLimited(resp.headers.get("Retry-After"))
                if resp.status != 200:
                    raise SearchFailed(f"HTTP {resp.status}")
        except (ConnectFailed, RequestFailed) as e:
            self._observe("search", started, "error")
            raise SearchFailed(type(e).__name__) from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise SearchFailed("the answer is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("messages", []), list):
            raise SearchFailed("the answer is not a messagesList")
        return data

    # -- media -----------------------------------------------------------------------------
    def media_url(self, user: UserConfig, name: str = "") -> str:
        base = f"{self.base_url}/users/{user.account_id}/media"
        return f"{base}/{name}" if name else base

    async def media_list(self, user: UserConfig, continuation: str | None) -> tuple[list[dict[str, Any]], str | None]:
        headers = {"Continuation-Token": continuation} if continuation else {}
        async with self.media_request("GET", user, "", headers=headers) as resp:
            if resp.status == 404:  # an account that never stored media
                await resp.read()
                return [], None
            if resp.status >= 300:
                await resp.read()
                raise v2_error_to_v1(resp.status, None, media_name="")
            try:
                data = json.loads(await resp.read())
            except ValueError:
                data = None
            return (data if isinstance(data, list) else []), resp.headers.get("Continuation-Token")

    @asynccontextmanager
    async def media_request(
        self, method: str, user: UserConfig, name: str, *, headers: dict[str, str] | None = None, body: Body = None,
    ) -> AsyncIterator[Response]:
        """A streamed media call; the caller reads or streams the response."""
        started = time.perf_counter()
        timeout = Timeout(total=None, connect=self.cfg.timeout_s, read=self.cfg.timeout_s)
        try:
            async with self.transport.request(
                method, self.media_url(user, name), headers=self._auth(user) | (headers or {}), body=body,
                timeouts=timeout,
            ) as resp:
                self._observe("media", started, resp.status)
                yield resp
        except (ConnectFailed, RequestFailed) as e:
            self._observe("media", started, "error")
            log.error("upstream media call failed", extra={"error": str(e), "user_id": user.user_id})
            raise MediaUnavailable("The media service is unavailable") from None

    # -- v2 passthrough (staged migration) ------------------------------------------------------
    @asynccontextmanager
    async def passthrough(
        self, method: str, path: str, *, headers: dict[str, str], body: Body = None, streamed: bool = False,
    ) -> AsyncIterator[Response]:
        """A v2 call of a client already on v2, forwarded as it came (``path`` below ``base_url``,
        its query string included, the caller's own ``Authorization`` in ``headers``). Raises the
        transport's ``ConnectFailed``/``RequestFailed``; never retried. ``streamed``: media, whose
        bodies may take longer than ``timeout_s`` as a whole (each read still may not)."""
        started = time.perf_counter()
        timeout = Timeout(total=None, connect=self.cfg.timeout_s, read=self.cfg.timeout_s) if streamed else None
        try:
            async with self.transport.request(method, f"{self.base_url}{path}", headers=headers, body=body,
                                              timeouts=timeout) as resp:
                self._observe("passthrough", started, resp.status)
                yield resp
        except (ConnectFailed, RequestFailed):
            self._observe("passthrough", started, "error")
            raise

    async def ping(self) -> bool:
        """Reachability: any HTTP answer counts."""
        try:
            async with self.transport.request("GET", self.base_url, headers={}, timeouts=Timeout(total=3)) as resp:
                await resp.read()
                return True
        except (ConnectFailed, RequestFailed):
            return False
