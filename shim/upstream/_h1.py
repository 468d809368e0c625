"""A small HTTP/1.1 keep-alive client for v2 and for v1 callbacks, on httptools' response parser (llhttp).

Why not a library (``bench/bench_client.py``): aiohttp's client, even tuned, costs about four
times this one's CPU per send; httpx, aiosonic, niquests and curl_cffi cost as much or more.
pyreqwest (Rust reqwest, pre-1.0) measured about even on plain HTTP, ~10–15 % cheaper on TLS: re-measure.
This one does only what v2 and v1 callbacks need: a pool per (scheme, host, port), Content-Length
and chunked bodies both ways, TLS, timeouts, an optional resolve hook (the callbacks' address policy
sees the very addresses connected to), and idle connections that expire (at most ``max_idle`` in all).

Failures keep ``AiohttpTransport``'s meaning: ``ConnectFailed`` only when no connection was made
(refused, DNS, TLS handshake), so nothing reached v2; anything later — a timeout (the connect
timeout too, as in aiohttp), a reset, a bad answer — is ``RequestFailed`` (a timeout: its subclass
``TimedOut``). An idle pooled connection the server closed is never written to; one found dead
before any byte was written is replaced.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from functools import lru_cache
from types import TracebackType
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._transport import Body, ConnectFailed, RequestFailed, TimedOut, Timeout

# (host, port) -> the IP addresses to connect to, tried in order. May raise an OSError (it
# surfaces as the ``__cause__`` of ``ConnectFailed``). For TLS, SNI and the certificate check
# still use the host name.
Resolve = Callable[[str, int], Awaitable[list[str]]]

KEEPALIVE_S = 15.0  # an idle connection older than this is closed, not reused (aiohttp's default)
MAX_HEAD = 64 * 1024  # response head bytes
MAX_READ = 64 * 1024 * 1024  # Response.read() refuses a larger body (stream with iter_chunked)
HIGH_WATER = 256 * 1024  # buffered body bytes before the socket is paused
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


class _Conn(asyncio.Protocol):
    """One connection; the parser's callbacks fill in the current response."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.lost = self.active = self.write_paused = self.read_paused = False
        self.error = ""
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self.begin(False)

    def begin(self, head: bool) -> None:
        if self.read_paused:  # a complete answer left unread past HIGH_WATER
            self.read_paused = False
            self.transport.resume_reading()
        self.head, self.status, self.head_bytes, self.buffered = head, 0, 0, 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: CIMultiDictProxy[str] | None = None
        self.chunks: deque[bytes] = deque()
        self.done = self.keep_alive = self.until_eof = self.interim = False

    @property
    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self.lost and not self.error and not self.transport.is_closing()

    def close(self) -> None:
        self.lost = True
        self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if not self.active or self.done:
            self._fail("unexpected data from the server")
            return
        try:
            self.parser.feed_data(data)
        except Exception as e:  # llhttp's errors, an upgrade, or ours from the callbacks
            self._fail(f"bad response: {e!r}")
        self._wake()

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self.write_paused = False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD:
            raise ValueError("response head too large")
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer, the real one follows
            self.raw_headers, self.interim = [], True
            return
        h = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers)
        self.status, self.headers = status, CIMultiDictProxy(h)
        if self.head:  # llhttp would wait for the Content-Length it announces: the connection is not reused
            self.done = True
        elif status not in (204, 304) and "Content-Length" not in h and "chunked" not in h.get("Transfer-Encoding", "").lower():
            self.until_eof = True  # HTTP/1.0 style: the body ends with the connection

    def on_body(self, body: bytes) -> None:
        if self.done:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
        elif not self.done:
            self.done, self.keep_alive = True, self.parser.should_keep_alive() and not self.until_eof

    # -- for the request's task ------------------------------------------------------------
    def _fail(self, error: str) -> None:
        self.error = self.error or error
        self.close()
        self._wake()

    def _end(self) -> None:
        self.lost = True
        if self.until_eof and self.headers is not None:
            self.done = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, limit_s: float | None) -> None:
        """Until the socket or the parser has news, at most ``limit_s`` seconds."""
        if self.error:
            raise RequestFailed(self.error)
        if self.lost:
            raise RequestFailed("ServerDisconnectedError" if self.headers is None else "ClientPayloadError")
        loop = asyncio.get_running_loop()
        self._waiter = fut = loop.create_future()
        timer = loop.call_later(limit_s, _expire, fut) if limit_s is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.read_paused and self.buffered < HIGH_WATER // 4:
            self.read_paused = False
            self.transport.resume_reading()
        return chunk


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimedOut("ServerTimeoutError"))


def _split(url: str | URL) -> tuple[tuple[str, str, int], str, str]:
    """(pool key, Host header, request target), percent-encoded as aiohttp (yarl) would; a ``URL``
    is sent as it is encoded (a signed query string stays byte for byte)."""
    return _split_str(url) if isinstance(url, str) else _parts(url)


@lru_cache(maxsize=512)
def _split_str(url: str) -> tuple[tuple[str, str, int], str, str]:
    return _parts(URL(url))


def _parts(u: URL) -> tuple[tuple[str, str, int], str, str]:
    if u.scheme not in ("http", "https") or not u.raw_host or u.port is None:
        raise RequestFailed(f"unsupported URL {str(u)!r}")
    host = f"[{u.raw_host}]" if ":" in u.raw_host else u.raw_host
    if not u.is_default_port():
        host = f"{host}:{u.port}"
    return (u.scheme, u.raw_host, u.port), host, u.raw_path_qs or "/"


class _Pool:
    def __init__(self, key: tuple[str, str, int], limit: int, ctx: ssl.SSLContext | None, owner: H1Transport) -> None:
        self.key, self.ctx, self.owner = key, ctx, owner
        self.slots = asyncio.Semaphore(limit)  # requests in flight; idle + busy connections never exceed it
        self.busy = 0  # slots held
        self.idle: list[_Conn] = []
        self.closed = False

    async def connect(self, limit_s: float | None) -> _Conn:
        _, host, port = self.key
        loop, resolve = asyncio.get_running_loop(), self.owner._resolve
        try:
            async with asyncio.timeout(limit_s):
                if resolve is None:
                    _, conn = await loop.create_connection(
                        _Conn, host, port, ssl=self.ctx, server_hostname=host if self.ctx else None)
                    return conn
                error: OSError = OSError(f"no address for {host}")
                for address in await resolve(host, port):  # as aiohttp: each in turn, the last error raised
                    try:
                        _, conn = await loop.create_connection(
                            _Conn, address, port, ssl=self.ctx, server_hostname=host if self.ctx else None)
                        return conn
                    except OSError as e:
                        error = e
                raise error
        except TimeoutError:
            raise TimedOut("ConnectionTimeoutError") from None
        except OSError as e:  # refused, unreachable, DNS (or the resolve hook), TLS handshake or certificate
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e}") from e

    def take_idle(self, now: float) -> _Conn | None:
        while self.idle:
            conn = self.idle.pop()
            del self.owner._idle[conn]
            if conn.reusable and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        return None


class _Exchange:
    """``async with transport.request(...) as resp``: one request on a pooled connection."""

    def __init__(self, owner: H1Transport, method: str, url: str | URL, headers: Mapping[str, str], body: Body,
                 timeouts: Timeout) -> None:
        self.owner, self.method, self.url, self.headers, self.body, self.t = owner, method, url, headers, body, timeouts
        self.conn: _Conn | None = None
        self.pool: _Pool | None = None
        self.deadline: float | None = None

    def timeout(self, inner: float | None) -> float | None:
        if self.deadline is None:
            return inner
        left = self.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimedOut("ServerTimeoutError")
        return left if inner is None else min(inner, left)

    async def __aenter__(self) -> _Response:
        loop = asyncio.get_running_loop()
        if self.t.total is not None:
            self.deadline = loop.time() + self.t.total
        key, host, target = _split(self.url)
        self.pool = pool = self.owner.pool(key)
        if pool.slots.locked():
            try:
                async with asyncio.timeout(self.timeout(None)):
                    await pool.slots.acquire()
            except TimeoutError:
                raise TimedOut("ConnectionTimeoutError") from None
        else:
            await pool.slots.acquire()
        pool.busy += 1
        try:
            conn = pool.take_idle(loop.time()) or await pool.connect(self.timeout(self.t.connect))
            self.conn = conn
            conn.begin(self.method == "HEAD")
            conn.active = True
            await self._send(conn, host, target)
            while conn.headers is None:
                await conn.wait(self.timeout(self.t.read))
        except BaseException:
            self._release()
            raise
        return _Response(conn, self)

    async def _send(self, conn: _Conn, host: str, target: str) -> None:
        body, head = self.body, [f"{self.method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
        length: int | None = None
        for k, v in self.headers.items():
            if len(k) == 14 and k.lower() == "content-length":
                length = int(v)
                if not isinstance(body, bytes | None):
                    head.append(f"Content-Length: {length}\r\n")
            else:
                head.append(f"{k}: {v}\r\n")
        text = "".join(head)
        if text.count("\n") != len(head) + 1 or text.count("\r") != len(head) + 1:
            raise ValueError("CR or LF in a request header or URL")
        if isinstance(body, bytes):
            text += f"Content-Length: {len(body)}\r\n\r\n"
        elif body is None:
            text += "Content-Length: 0\r\n\r\n" if self.method in _BODY_METHODS else "\r\n"
        else:
            text += "\r\n" if length is not None else "Transfer-Encoding: chunked\r\n\r\n"
        data = text.encode()
        if isinstance(body, bytes):
            conn.transport.write(data + body)
        else:
            conn.transport.write(data)
            if body is not None:
                await self._stream(conn, body, length)

    async def _stream(self, conn: _Conn, body: AsyncIterable[bytes], length: int | None) -> None:
        sent, w = 0, conn.transport.write
        async for chunk in body:
            if conn.lost:  # the server answered early or went away: its answer (if any) says which
                return
            if not chunk:
                continue
            sent += len(chunk)
            w(chunk if length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
            while conn.write_paused and not conn.lost:
                await conn.wait(self.timeout(None))
        if length is None:
            w(b"0\r\n\r\n")
        elif sent != length:
            conn.error = f"request body of {sent} bytes, Content-Length {length}"
            raise RequestFailed(conn.error)

    def _release(self) -> None:
        conn, pool = self.conn, self.pool
        self.conn = None
        if pool is None:
            return
        if conn is not None:
            conn.active = False
            if conn.reusable and not pool.closed:
                conn.idle_since = asyncio.get_running_loop().time()
                pool.idle.append(conn)
                self.owner._park(conn, pool)
            else:
                conn.close()
        pool.busy -= 1
        pool.slots.release()
        self.pool = None
        self.owner._forget_if_unused(pool)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._release()


class _Response:
    def __init__(self, conn: _Conn, ex: _Exchange) -> None:
        self.status, self._conn, self._ex = conn.status, conn, ex
        self._headers = conn.headers if conn.headers is not None else CIMultiDictProxy(CIMultiDict())

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def content_length(self) -> int | None:
        value = self._headers.get("Content-Length")
        return int(value) if value is not None and value.isascii() and value.isdigit() else None

    async def _next(self) -> bytes | None:
        conn = self._conn
        if self._ex.conn is not conn:
            raise RuntimeError("the response was released")
        while not conn.chunks:
            if conn.done:
                return None
            await conn.wait(self._ex.timeout(self._ex.t.read))
        return conn.take()

    async def read(self) -> bytes:
        conn, parts, size = self._conn, [], 0
        if conn.done and len(conn.chunks) <= 1 and conn.buffered <= MAX_READ:  # the usual: all here at once
            return conn.take() if conn.chunks else b""
        while (chunk := await self._next()) is not None:
            size += len(chunk)
            if size > MAX_READ:
                conn.error = "response body too large"
                raise RequestFailed(conn.error)
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        while (chunk := await self._next()) is not None:
            for i in range(0, len(chunk), n):
                yield chunk[i:i + n]

    async def read_some(self, limit: int) -> bytes:
        """What has arrived of the body, at most ``limit`` bytes, waiting only for its first bytes
        (as aiohttp's ``content.read(limit)``). Unless that was the whole body, the connection is
        dropped rather than drained into the pool."""
        conn = self._conn
        first = await self._next()
        if first is None:
            return b""
        parts, size = [first], len(first)
        while conn.chunks and size <= limit:
            chunk = conn.take()
            parts.append(chunk)
            size += len(chunk)
        if size > limit or conn.chunks or not conn.done:
            conn.close()
        return b"".join(parts)[:limit]


class H1Transport:
    """The ``Transport``: keep-alive pools of at most ``max_connections`` each (one per scheme, host
    and port). ``resolve``: see ``Resolve``. ``max_idle``: idle connections kept in all (the oldest
    is closed beyond it); each is closed after ``KEEPALIVE_S`` idle in any case, and a pool with no
    connection left is forgotten, so many hosts visited once leave nothing behind."""

    def __init__(
        self, max_connections: int, timeout_s: float, ssl_context: ssl.SSLContext | None = None, *,
        resolve: Resolve | None = None, max_idle: int | None = None,
    ) -> None:
        self._limit, self._default = max_connections, Timeout(total=timeout_s)
        self._ssl = ssl_context
        self._resolve, self._max_idle = resolve, max_idle
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._idle: dict[_Conn, _Pool] = {}  # every idle connection, the longest idle first
        self._reaper: asyncio.TimerHandle | None = None

    def pool(self, key: tuple[str, str, int]) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            ctx = None
            if key[0] == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()  # honours SSL_CERT_FILE; checks the host name
                ctx = self._ssl
            pool = self._pools[key] = _Pool(key, self._limit, ctx, self)
        return pool

    def _park(self, conn: _Conn, pool: _Pool) -> None:
        self._idle[conn] = pool
        if self._max_idle is not None and len(self._idle) > self._max_idle:
            self._drop_idle(next(iter(self._idle)))
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._reap)

    def _drop_idle(self, conn: _Conn) -> None:
        pool = self._idle.pop(conn)
        pool.idle.remove(conn)
        conn.close()
        self._forget_if_unused(pool)

    def _reap(self) -> None:
        """Close the connections idle for ``KEEPALIVE_S``; then wait for the next one to be."""
        self._reaper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            oldest = next(iter(self._idle))
            if now - oldest.idle_since < KEEPALIVE_S:
                self._reaper = loop.call_later(KEEPALIVE_S - (now - oldest.idle_since), self._reap)
                break
            self._drop_idle(oldest)

    def _forget_if_unused(self, pool: _Pool) -> None:
        if not pool.idle and not pool.busy and not pool.slots.locked() and self._pools.get(pool.key) is pool:
            del self._pools[pool.key]

    def request(
        self, method: str, url: str | URL, *, headers: Mapping[str, str], body: Body = None, timeouts: Timeout | None = None,
    ) -> _Exchange:
        return _Exchange(self, method, url, headers, body, timeouts or self._default)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for pool in self._pools.values():
            pool.closed = True  # a connection still in use is closed when released
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()
        self._idle.clear()
