"""The v2 transports against real loopback servers that misbehave on purpose.

Every test runs on ``H1Transport`` (shim's own client) and, where the behaviour is the contract
of ``Transport``, on ``AiohttpTransport`` too: both must map failures the same way.
No wall-clock races: a held answer waits on a future the test releases, and a short timeout is
used only where the test waits for that timeout itself.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from shim.config import UpstreamConfig
from shim.upstream import (
    AiohttpTransport,
    ConnectFailed,
    RequestFailed,
    TimedOut,
    Timeout,
    Transport,
    UpstreamClient,
    _h1,
)
from shim.upstream._h1 import H1Transport


@dataclass
class Req:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Req, asyncio.StreamWriter], Awaitable[bool | None]]  # False: close after answering


def answer(body: bytes = b"hello", status: int = 200, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def read_request(reader: asyncio.StreamReader) -> Req | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *lines = head.decode().split("\r\n")
    method, target, _ = line.split(" ")
    headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines if x)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readline()).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        body = b"".join(parts)
    else:
        body = b""
    return Req(method, target, headers, body)


@dataclass
class Server:
    handler: Handler
    ctx: ssl.SSLContext | None = None
    connections: int = 0
    open: int = 0
    max_open: int = 0
    requests: list[Req] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/x") -> str:
        return f"{'https' if self.ctx else 'http'}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while (req := await read_request(reader)) is not None:
                self.requests.append(req)
                keep = await self.handler(req, writer)
                await writer.drain()
                if keep is False:
                    break
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()
            self.closed.set()


async def ok(req: Req, w: asyncio.StreamWriter) -> None:
    w.write(answer(b"echo:" + req.body))


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.server.close()


@pytest.fixture
def serve(servers: list[Server]) -> Callable[..., Awaitable[Server]]:
    async def start(handler: Handler = ok, ctx: ssl.SSLContext | None = None) -> Server:
        server = await Server(handler, ctx).start()
        servers.append(server)
        return server
    return start


TRANSPORTS: dict[str, Callable[..., Transport]] = {"h1": H1Transport, "aiohttp": AiohttpTransport}


@pytest.fixture(params=["h1", "aiohttp"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Transport]]:
    made: list[Transport] = []

    def new(max_connections: int = 10, timeout_s: float = 30) -> Transport:
        made.append(TRANSPORTS[request.param](max_connections, timeout_s))
        return made[-1]
    yield new
    for t in made:
        await t.close()


@pytest.fixture
async def h1() -> AsyncIterator[H1Transport]:
    t = H1Transport(10, 30)
    yield t
    await t.close()


async def get(t: Transport, url: str, **kw: Any) -> tuple[int, bytes]:
    async with t.request(kw.pop("method", "GET"), url, headers=kw.pop("headers", {}), **kw) as resp:
        return resp.status, await resp.read()


# -- the contract, on both transports ------------------------------------------------------------
async def test_keep_alive_reuses_one_connection(serve: Any, make: Any) -> None:
    server, t = await serve(), make()
    for i in range(5):
        assert await get(t, server.url(), method="POST", body=b"%d" % i) == (200, b"echo:%d" % i)
    assert server.connections == 1
    assert server.requests[0].headers["content-length"] == "1"


async def test_connect_refused_is_connect_failed(make: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectFailed):
        await get(make(), f"http://127.0.0.1:{port}/x")


async def test_reset_before_the_answer_is_request_failed(serve: Any, make: Any) -> None:
    async def reset(req: Req, w: asyncio.StreamWriter) -> bool:
        w.transport.abort()
        return False
    server = await serve(reset)
    with pytest.raises(RequestFailed):
        await get(make(), server.url(), method="POST", body=b"x")


async def test_reset_mid_body_is_request_failed(serve: Any, make: Any) -> None:
    async def half(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await w.drain()
        w.transport.abort()
        return False
    server = await serve(half)
    async with make().request("GET", server.url(), headers={}) as resp:
        assert resp.status == 200
        with pytest.raises(RequestFailed):
            await resp.read()


async def test_read_timeout_while_the_server_holds_the_answer(serve: Any, make: Any) -> None:
    release = asyncio.get_running_loop().create_future()

    async def hold(req: Req, w: asyncio.StreamWriter) -> None:
        await release
        w.write(answer())
    server = await serve(hold)
    try:
        with pytest.raises(TimedOut):
            await get(make(), server.url(), timeouts=Timeout(read=0.05))
        with pytest.raises(TimedOut):
            await get(make(), server.url(), timeouts=Timeout(total=0.05))
    finally:
        release.set_result(None)


async def test_chunked_answer(serve: Any, make: Any) -> None:
    async def chunked(req: Req, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"abc", b"defgh", b"i" * 70000):
            w.write(b"%x\r\n%b\r\n" % (len(part), part))
            await w.drain()
        w.write(b"0\r\n\r\n")
    server, t = await serve(chunked), make()
    assert await get(t, server.url()) == (200, b"abcdefgh" + b"i" * 70000)
    async with t.request("GET", server.url(), headers={}) as resp:
        assert resp.content_length is None
        chunks = [c async for c in resp.iter_chunked(1000)]
    assert b"".join(chunks) == b"abcdefgh" + b"i" * 70000 and max(map(len, chunks)) <= 1000
    assert server.connections == 1


async def test_early_exit_discards_the_connection(serve: Any, make: Any) -> None:
    big = b"z" * 2_000_000

    async def large(req: Req, w: asyncio.StreamWriter) -> None:
        w.write(answer(big))
    server, t = await serve(large), make()
    async with t.request("GET", server.url(), headers={}) as resp:
        assert resp.content_length == len(big)
        async for _ in resp.iter_chunked(1024):
            break
    assert await get(t, server.url()) == (200, big)
    assert server.connections == 2


@pytest.mark.parametrize("with_length", [True, False])
async def test_streamed_request_body(serve: Any, make: Any, with_length: bool) -> None:
    parts = [b"a" * 100_000, b"", b"b" * 5, b"c" * 300_000]

    async def body() -> AsyncIterator[bytes]:
        for p in parts:
            await asyncio.sleep(0)
            yield p
    server, t = await serve(), make()
    headers = {"Content-Length": str(sum(map(len, parts)))} if with_length else {}
    status, got = await get(t, server.url(), method="PUT", headers=headers, body=body())
    assert (status, got) == (200, b"echo:" + b"".join(parts))
    req = server.requests[0]
    assert ("content-length" in req.headers) == with_length
    if not with_length:
        assert req.headers["transfer-encoding"] == "chunked"


async def test_pool_never_opens_more_than_max_connections(serve: Any, make: Any) -> None:
    release = asyncio.get_running_loop().create_future()
    arrived = asyncio.Event()

    async def hold(req: Req, w: asyncio.StreamWriter) -> None:
        arrived.set()
        await release
        w.write(answer())
    server, t = await serve(hold), make(max_connections=2)
    calls = [asyncio.create_task(get(t, server.url())) for _ in range(10)]
    await arrived.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    release.set_result(None)
    assert [r for r in await asyncio.gather(*calls)] == [(200, b"hello")] * 10
    assert server.max_open <= 2 and server.connections <= 2


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_ctx(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


async def test_tls_with_ssl_cert_file(serve: Any, h1: H1Transport, ca: trustme.CA, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """H1Transport only: aiohttp builds its SSL context on import, so for it SSL_CERT_FILE counts
    only when set before the process starts (the bench's TLS phase covers that)."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    server, t = await serve(ctx=server_ctx(ca, "127.0.0.1")), h1
    for _ in range(3):
        assert await get(t, server.url(), method="POST", body=b"tls") == (200, b"echo:tls")
    assert server.connections == 1


async def test_tls_wrong_host_or_unknown_ca_is_connect_failed(serve: Any, make: Any, ca: trustme.CA, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    wrong = await serve(ctx=server_ctx(ca, "example.org"))
    stranger = await serve(ctx=server_ctx(trustme.CA(), "127.0.0.1"))
    t = make()
    for server in (wrong, stranger):
        with pytest.raises(ConnectFailed):
            await get(t, server.url())
        assert server.requests == []


# -- H1Transport in detail -----------------------------------------------------------------------
async def test_idle_connection_closed_by_the_server_is_not_reused(serve: Any, h1: H1Transport) -> None:
    async def once(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer())  # keep-alive as far as the client knows, then closed while idle
        return False
    server = await serve(once)
    assert await get(h1, server.url()) == (200, b"hello")
    await server.closed.wait()
    for _ in range(200):  # until the client's loop has seen the FIN: no wall-clock bound on the server side
        if all(c.lost for p in h1._pools.values() for c in p.idle):
            break
        await asyncio.sleep(0.005)
    assert await get(h1, server.url(), method="POST", body=b"x") == (200, b"hello")
    assert server.connections == 2


async def test_connection_close_and_http10_answers_are_not_reused(serve: Any, h1: H1Transport) -> None:
    async def close(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(extra="Connection: close\r\n"))
        return False

    async def http10(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")  # no length: the body ends with the connection
        return False
    for handler, body in ((close, b"hello"), (http10, b"until the end")):
        server = await serve(handler)
        assert await get(h1, server.url()) == (200, body)
        assert await get(h1, server.url()) == (200, body)
        assert server.connections == 2


async def test_interim_1xx_no_body_answers_and_head(serve: Any, h1: H1Transport) -> None:
    async def various(req: Req, w: asyncio.StreamWriter) -> None:
        if req.target == "/continue":
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"final", 201))
        elif req.target == "/204":
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == "/304":
            w.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")  # an answer to HEAD
    server = await serve(various)
    assert await get(h1, server.url("/continue")) == (201, b"final")
    assert await get(h1, server.url("/204")) == (204, b"")
    assert await get(h1, server.url("/304")) == (304, b"")
    assert server.connections == 1
    assert await get(h1, server.url("/head"), method="HEAD") == (200, b"")
    assert await get(h1, server.url("/204")) == (204, b"")  # the HEAD connection was not reused


async def test_complete_unread_answer_is_reused(serve: Any, h1: H1Transport) -> None:
    server = await serve()
    for _ in range(2):
        async with h1.request("GET", server.url(), headers={}) as resp:
            assert resp.status == 200
            for _ in range(20):
                await asyncio.sleep(0)
    assert server.connections == 1


async def test_body_and_head_size_limits(serve: Any, h1: H1Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    async def big(req: Req, w: asyncio.StreamWriter) -> None:
        w.write(answer(b"x" * 5000, extra="X-Big: " + "h" * 70_000 + "\r\n" if req.target == "/head" else ""))
    server = await serve(big)
    monkeypatch.setattr(_h1, "MAX_READ", 1000)
    async with h1.request("GET", server.url(), headers={}) as resp:
        async for _ in resp.iter_chunked(100):  # streaming has no limit
            pass
    with pytest.raises(RequestFailed):
        await get(h1, server.url())
    with pytest.raises(RequestFailed):
        await get(h1, server.url("/head"))


async def test_cancelled_request_frees_its_slot(serve: Any) -> None:
    release = asyncio.get_running_loop().create_future()
    arrived = asyncio.Event()

    async def hold(req: Req, w: asyncio.StreamWriter) -> None:
        if req.target == "/hold":
            arrived.set()
            await release
        w.write(answer())
    server, t = await serve(hold), H1Transport(1, 30)
    try:
        task = asyncio.create_task(get(t, server.url("/hold")))
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await get(t, server.url("/now")) == (200, b"hello")
        assert server.connections == 2
    finally:
        release.set_result(None)
        await t.close()


async def test_header_injection_and_bad_length_are_refused(serve: Any, h1: H1Transport) -> None:
    server = await serve()
    with pytest.raises(ValueError):
        await get(h1, server.url(), headers={"X-A": "1\r\nX-B: 2"})

    async def short() -> AsyncIterator[bytes]:
        yield b"abc"
    with pytest.raises(RequestFailed):
        await get(h1, server.url(), method="PUT", headers={"Content-Length": "10"}, body=short())
    assert await get(h1, server.url(), method="POST", body=b"ok") == (200, b"echo:ok")


async def test_url_is_percent_encoded_like_aiohttp(serve: Any, h1: H1Transport) -> None:
    server = await serve()
    await get(h1, server.url("/media/a b%2Fc?x=1 2"))
    assert server.requests[0].target == "/media/a%20b%2Fc?x=1+2"  # yarl's encoding, as aiohttp sends it


async def test_config_picks_the_transport() -> None:
    for name, kind in (("auto", H1Transport), ("httptools", H1Transport), ("aiohttp", AiohttpTransport)):
        client = UpstreamClient(UpstreamConfig(http_client=name), "http://127.0.0.1:1")  # type: ignore[arg-type]
        await client.start()
        assert isinstance(client.transport, kind)
        await client.close()


# -- H1Transport: the resolve hook, idle connections, read_some (what v1 callbacks rely on) ------
async def test_resolve_hook_connects_to_its_addresses_tls_checks_the_name(
        serve: Any, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    sni: list[str | None] = []
    ctx = server_ctx(ca, "callback.test")
    ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,misc]
    good, wrong = await serve(ctx=ctx), await serve(ctx=server_ctx(ca, "other.test"))
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.2", "127.0.0.1"] if host == "callback.test" else ["127.0.0.1"]  # each in turn

    t = H1Transport(10, 30, resolve=resolve)
    try:
        for _ in range(2):
            assert await get(t, f"https://callback.test:{good.port}/x", method="POST", body=b"v") == (200, b"echo:v")
        assert asked == [("callback.test", good.port)] and good.connections == 1  # resolved per connection
        assert sni == ["callback.test"] and good.requests[0].headers["host"] == f"callback.test:{good.port}"
        with pytest.raises(ConnectFailed):  # the certificate is checked against the name, not the address
            await get(t, f"https://callback.test:{wrong.port}/x")
        assert wrong.requests == []
    finally:
        await t.close()


async def test_resolve_hook_errors_surface_as_the_cause_and_nothing_connects(serve: Any) -> None:
    class Refused(OSError):
        pass

    async def refuse(host: str, port: int) -> list[str]:
        raise Refused(f"refused: callback host {host} resolves to a refused address")
    server = await serve()
    t = H1Transport(10, 30, resolve=refuse)
    try:
        with pytest.raises(ConnectFailed) as info:
            await get(t, f"http://name.test:{server.port}/x")
        assert isinstance(info.value.__cause__, Refused) and server.connections == 0
        assert t._pools == {}  # nothing left behind
    finally:
        await t.close()


async def test_idle_connections_expire_and_are_capped(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = await serve(), await serve(), await serve()
    t = H1Transport(10, 30, max_idle=2)
    try:
        for server in (a, b, c):
            assert await get(t, server.url()) == (200, b"echo:")
        await a.closed.wait()  # the longest idle is closed beyond max_idle, its pool forgotten
        assert sorted(k[2] for k in t._pools) == sorted((b.port, c.port)) and len(t._idle) == 2
        monkeypatch.setattr(_h1, "KEEPALIVE_S", 0.05)
        assert await get(t, c.url()) == (200, b"echo:")
        assert t._reaper is not None  # due 15 s after the first parking: run it now, under the short keep-alive
        t._reaper.cancel()
        t._reap()  # closes what has been idle 0.05 s, and comes back when the rest will have been
        await asyncio.wait_for(b.closed.wait(), 5)
        await asyncio.wait_for(c.closed.wait(), 5)
        assert t._pools == {} and t._idle == {} and t._reaper is None
    finally:
        await t.close()


async def test_idle_reaper_closes_connections_with_no_traffic(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_h1, "KEEPALIVE_S", 0.05)
    server = await serve()
    t = H1Transport(10, 30)
    try:
        assert await get(t, server.url()) == (200, b"echo:")
        await asyncio.wait_for(server.closed.wait(), 5)  # closed by the reaper, no request needed
        assert t._pools == {} and t._idle == {}
    finally:
        await t.close()


async def test_read_some_reads_what_arrived_and_drops_a_longer_answer(serve: Any, h1: H1Transport) -> None:
    release = asyncio.get_running_loop().create_future()

    async def various(req: Req, w: asyncio.StreamWriter) -> bool | None:
        if req.target == "/part":  # the head and part of the body, the rest held
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
            await w.drain()
            await release
            w.write(b"56789")
            return None
        w.write(answer(b"x" * int(req.target[1:])))
        return None
    server = await serve(various)
    try:
        # 9 bytes: more than read, that connection is dropped (the next answer comes on another)
        for size, got, connections in ((8, b"x" * 8, 1), (0, b"", 1), (9, b"x" * 8, 1), (8, b"x" * 8, 2)):
            async with h1.request("GET", server.url(f"/{size}"), headers={}) as resp:
                assert await resp.read_some(8) == got
            assert server.connections == connections, size
        async with h1.request("GET", server.url("/part"), headers={}) as resp:
            assert await resp.read_some(8) == b"01234"  # not waiting for the rest
        assert await get(h1, server.url("/3")) == (200, b"xxx") and server.connections == 3
    finally:
        release.set_result(None)


async def test_a_complete_unread_answer_past_high_water_is_reused(
        serve: Any, h1: H1Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_h1, "HIGH_WATER", 10)  # the answer pauses reading as it completes
    server = await serve()
    async with h1.request("POST", server.url(), headers={}, body=b"y" * 100) as resp:
        assert resp.status == 200
    assert await get(h1, server.url(), method="POST", body=b"z", timeouts=Timeout(total=5)) == (200, b"echo:z")
    assert server.connections == 1


async def test_a_prebuilt_url_is_sent_as_encoded(serve: Any, h1: H1Transport) -> None:
    from yarl import URL
    server = await serve()
    await get(h1, URL(server.url("/cb?a=b+c&d=%7e%2f|"), encoded=True))  # type: ignore[arg-type]
    assert server.requests[0].target == "/cb?a=b+c&d=%7e%2f|"
