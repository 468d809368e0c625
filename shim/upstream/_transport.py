"""How the v2 client reaches Bandwidth, as a swappable part (httpx's transports are the model):
``AiohttpTransport`` for real, ``MockTransport`` for unit tests of the facade with no sockets.

The client needs one distinction from a transport: did the request possibly reach v2? A send
that failed to *connect* can be retried; any later failure cannot (it could send an SMS twice).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

Body = bytes | AsyncIterable[bytes] | None


class TransportError(Exception):
    """The request got no HTTP answer."""


class ConnectFailed(TransportError):
    """No connection was made: nothing reached v2, a retry is safe."""


class RequestFailed(TransportError):
    """Connected, then failed (timeout, reset): the request may have reached v2."""


class TimedOut(RequestFailed):
    """A timeout ran out (connect, read, total, or waiting for a pool slot)."""


@dataclass(frozen=True)
class Timeout:
    total: float | None = None
    connect: float | None = None
    read: float | None = None


class Response(Protocol):
    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_length(self) -> int | None: ...

    async def read(self) -> bytes: ...

    def iter_chunked(self, n: int) -> AsyncIterator[bytes]: ...


class Transport(Protocol):
    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: Body = None, timeouts: Timeout | None = None,
    ) -> AbstractAsyncContextManager[Response]: ...

    async def close(self) -> None: ...


# -- aiohttp ------------------------------------------------------------------------------------
class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError as e:
            raise TimedOut(type(e).__name__) from e
        except aiohttp.ClientError as e:
            raise RequestFailed(type(e).__name__) from e

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(n):
                yield chunk
        except TimeoutError as e:
            raise TimedOut(type(e).__name__) from e
        except aiohttp.ClientError as e:
            raise RequestFailed(type(e).__name__) from e


class AiohttpTransport:
    """One pooled keep-alive session for every v2 call."""

    def __init__(self, max_connections: int, timeout_s: float) -> None:
        connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    @asynccontextmanager
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: Body = None, timeouts: Timeout | None = None,
    ) -> AsyncIterator[Response]:
        kw: dict[str, Any] = {}
        if timeouts is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect,
                                                  sock_read=timeouts.read)
        try:
            async with self._session.request(method, url, headers=dict(headers), data=body, **kw) as resp:
                yield _AiohttpResponse(resp)
        except aiohttp.ClientConnectorError as e:
            raise ConnectFailed(str(e)) from e
        except TimeoutError as e:
            raise TimedOut(type(e).__name__) from e
        except aiohttp.ClientError as e:
            raise RequestFailed(type(e).__name__) from e

    async def close(self) -> None:
        await self._session.close()


# -- for tests ----------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    url: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class MockResponse:
    status: int = 200
    body: bytes = b""
    headers_: CIMultiDict[str] = field(default_factory=CIMultiDict)

    @classmethod
    def of_json(cls, status: int, data: Any) -> MockResponse:
        return cls(status, json.dumps(data).encode(), CIMultiDict({"Content-Type": "application/json"}))

    @property
    def headers(self) -> Mapping[str, str]:
        return CIMultiDictProxy(self.headers_)

    @property
    def content_length(self) -> int | None:
        return len(self.body)

    async def read(self) -> bytes:
        return self.body

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        for i in range(0, len(self.body), n):
            yield self.body[i:i + n]


class MockTransport:
    """Hands every request to ``handler`` (which may raise ``ConnectFailed``/``RequestFailed``)."""

    def __init__(self, handler: Callable[[Request], Awaitable[MockResponse]]) -> None:
        self.handler = handler
        self.requests: list[Request] = []

    @asynccontextmanager
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: Body = None, timeouts: Timeout | None = None,
    ) -> AsyncIterator[Response]:
        if body is None:
            raw = b""
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = b"".join([chunk async for chunk in body])
        req = Request(method, url, CIMultiDict(headers), raw)
        self.requests.append(req)
        yield await self.handler(req)

    async def close(self) -> None:
        return None
