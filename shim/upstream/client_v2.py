"""The v2 client: one pooled aiohttp session for sends and the media API.

A send is retried only when the connection could not be made: once bytes may have reached v2
a retry could send a duplicate SMS, so any later failure is answered 503 instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from pydantic import ValidationError

from shim.basic_auth import basic_header
from shim.config import UpstreamConfig, UserConfig
from shim.core import V2Message, v2_error_to_v1
from shim.errors import MediaUnavailable, ShimError, Unavailable

log = logging.getLogger("shim.upstream")


class UpstreamClient:
    def __init__(self, cfg: UpstreamConfig, base_url: str) -> None:
        self.cfg = cfg
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        # Observed latencies (seconds), read by the metrics module.
        self.latency_observer: Any = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("upstream client is not started")
        return self._session

    def _auth(self, user: UserConfig) -> dict[str, str]:
        return {"Authorization": basic_header(user.v2_username, user.v2_password.get_secret_value())}

    def _observe(self, op: str, started: float, status: int | str) -> None:
        if self.latency_observer is not None:
            self.latency_observer(op, time.perf_counter() - started, status)

    async def send_message(
        self, user: UserConfig, body: dict[str, Any], request_id: str = ""
    ) -> V2Message:
        url = f"{self.base_url}/users/{user.account_id}/messages"
        headers = self._auth(user)
        if request_id:
            headers["X-Request-Id"] = request_id
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                async with self.session.post(
                    url, json=body, headers=headers
                ) as resp:
                    raw = await resp.read()
                    self._observe("send", started, resp.status)
                    return self._send_result(resp.status, raw)
            except aiohttp.ClientConnectorError as e:
                self._observe("send", started, "connect-error")
                if attempt < self.cfg.connect_retries:
                    attempt += 1
                    await asyncio.sleep(0.05 * attempt)
                    continue
                log.error("upstream connect failed", extra={"error": str(e)})
                raise Unavailable("The messaging gateway is unavailable") from None
            except (TimeoutError, aiohttp.ClientError) as e:
                # The request may have reached v2: never retried.
                self._observe("send", started, "error")
                log.error("upstream send failed", extra={"error": type(e).__name__})
                raise Unavailable("The messaging gateway is unavailable") from None

    def _send_result(self, status: int, raw: bytes) -> V2Message:
        parsed: Any = None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if status in (200, 201, 202):
            try:
                return V2Message.model_validate(parsed)
            except ValidationError:
                log.error("upstream 202 body without a message id")
                raise Unavailable("The messaging gateway returned an unreadable answer") from None
        if status in (401, 403):
            log.critical(
                "upstream rejected shim's v2 credentials (HTTP %s): check users[].v2_username/"
                "v2_password", status,
            )
        return _raise(v2_error_to_v1(status, parsed))

    # -- media -----------------------------------------------------------------------------
    def media_url(self, user: UserConfig, name: str = "") -> str:
        base = f"{self.base_url}/users/{user.account_id}/media"
        return f"{base}/{name}" if name else base

    async def media_list(
        self, user: UserConfig, continuation: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        headers = {"Continuation-Token": continuation} if continuation else {}
        async with self._media("GET", user, "", headers=headers) as resp:
            data = await resp.json(content_type=None)
            return (data if isinstance(data, list) else []), resp.headers.get("Continuation-Token")

    @asynccontextmanager
    async def media_request(
        self, method: str, user: UserConfig, name: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streamed media call; the caller reads/streams the response."""
        async with self._media(method, user, name, **kwargs) as resp:
            yield resp

    @asynccontextmanager
    async def _media(
        self, method: str, user: UserConfig, name: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        started = time.perf_counter()
        try:
            headers = self._auth(user) | kwargs.pop("headers", {})
            async with self.session.request(
                method, self.media_url(user, name), headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.timeout_s,
                                              sock_read=self.cfg.timeout_s),
                **kwargs,
            ) as resp:
                self._observe("media", started, resp.status)
                yield resp
        except (TimeoutError, aiohttp.ClientError) as e:
            self._observe("media", started, "error")
            log.error("upstream media call failed", extra={"error": type(e).__name__})
            raise MediaUnavailable("The media service is unavailable") from None

    async def ping(self) -> bool:
        """Reachability for /readyz: any HTTP answer counts."""
        try:
            async with self.session.get(
                self.base_url, timeout=aiohttp.ClientTimeout(total=3)
            ) as resp:
                await resp.read()
                return True
        except (TimeoutError, aiohttp.ClientError):
            return False


def _raise(err: ShimError) -> V2Message:
    raise err
