"""The connection fast path (``shim.web_fastpath`` driven by ``web_server.V1RequestHandler``): the hot
routes answer byte for byte as aiohttp's path does (bar the date and the fresh ids), every other or
odd request still goes aiohttp's way, and the connection's life (keep-alive, pipelining, closing,
shutdown, slow heads) is unchanged."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from shim.keys import FAST_PATH, METRICS, STORE
from shim.web_fastpath import FastRoutes

from .conftest import CB_PASS, CB_USER, USER, Harness, auth, wait_until
from .gateway.test_callbacks import v2_event

AUTH = auth(USER["api_token"], USER["api_secret"])["Authorization"].encode()
CB_AUTH = auth(CB_USER, CB_PASS)["Authorization"].encode()
SEND = b'{"from":"+15551230001","to":"+15551230002","text":"fast"}'
SEND_PATH = b"/v1/users/u-test/messages"


def post(path: bytes = SEND_PATH, body: bytes = SEND, headers: bytes = b"", authz: bytes | None = AUTH,
         version: bytes = b"1.1") -> bytes:
    head = b"POST %s HTTP/%s\r\nHost: x\r\n" % (path, version)
    if authz is not None:
        head += b"Authorization: " + authz + b"\r\n"
    return head + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


def ingest(events: Any, authz: bytes | None = CB_AUTH, headers: bytes = b"") -> bytes:
    return post(b"/callbacks/v2", json.dumps(events).encode(), headers, authz)


class Reply:
    def __init__(self, status_line: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_line, self.headers, self.body = status_line, headers, body

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def normalized(self, base: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """Without what differs between two servers answering the same request: their URL, the
        date, fresh ids (a request id given by the caller is kept)."""
        ids = re.compile(rb"(?<=/messages/)[^\"/]+")

        def plain(value: bytes) -> bytes:
            return ids.sub(b"ID", value.replace(base.encode(), b"BASE"))

        fixed = {"date": "DATE", "x-request-id": "RID"}
        headers = [(k, fixed.get(k.lower(), plain(v.encode()).decode()) if v != "caller-id-1" else v)
                   for k, v in self.headers]
        return self.status_line, headers, plain(self.body)


async def exchange(h: Harness, chunks: list[bytes], replies: int, timeout: float = 5) -> tuple[list[Reply], bool]:
    """Write ``chunks`` one after the other on one connection; read ``replies`` responses, then
    whether the server closed the connection (waits at most a short while for that)."""
    reader, writer = await connect(h)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        out = []
        for _ in range(replies):
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).decode("latin-1")
            first, *lines = head[:-4].split("\r\n")
            headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines)]
            length = int(next(v for k, v in headers if k.lower() == "content-length"))
            out.append(Reply(first, headers, await asyncio.wait_for(reader.readexactly(length), timeout)))
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False
        return out, closed
    finally:
        writer.close()


def fast(h: Harness) -> FastRoutes:
    return h.app[FAST_PATH]


def sends_served(h: Harness) -> int:
    """v1 sends the fast path served (the sandbox's own callbacks to shim are served there too)."""
    return fast(h).served["/v1/users/{userId}/messages"]


async def connect(h: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = h.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def send_held_at_v2(h: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose send is in flight: v2 (the sandbox, ``upstream_delay_s``) holds it."""
    reader, writer = await connect(h)
    writer.write(post())
    await wait_until(lambda: h.v2_in_flight["now"] == 1)
    return reader, writer


async def bound_messages(h: Harness) -> int:
    rows = await h.app[STORE].query("SELECT count(*) FROM messages WHERE bound = 1")
    return int(next(iter(rows))[0])


# Requests the fast path serves; each must be answered exactly as aiohttp's path answers it.
SERVED = [
    pytest.param([post()], id="send"),
    pytest.param([post(authz=None)], id="send-no-credentials"),
    pytest.param([post(b"/v1/users/u-other/messages")], id="send-someone-elses-user"),
    pytest.param([post(body=b"{nope")], id="send-bad-json"),
    pytest.param([post(body=b"")], id="send-empty-body"),
    pytest.param([post(body=b'{"from":"+15551230001","text":"x"}')], id="send-missing-to"),
    pytest.param([post(body=b"[" + SEND + b"," + SEND + b"]")], id="batch"),
    pytest.param([post(headers=b"X-Request-Id: caller-id-1\r\n")], id="send-request-id"),
    pytest.param([post(headers=b"Content-Encoding: identity\r\n")], id="send-identity-encoding"),
    pytest.param([post(version=b"1.0")], id="send-http10"),
    pytest.param([post(version=b"1.0", headers=b"Connection: keep-alive\r\n")], id="send-http10-keep-alive"),
    pytest.param([post(headers=b"Connection: close\r\n")], id="send-connection-close"),
    pytest.param([post()[:40], post()[40:]], id="send-split-head"),
    pytest.param([post()[:-5], post()[-5:]], id="send-split-body"),
    pytest.param([ingest([v2_event("m-unknown")])], id="ingest"),
    pytest.param([ingest([v2_event("m-unknown")], authz=None)], id="ingest-no-credentials"),
    pytest.param([ingest([{"type": "message-delivered"}])], id="ingest-invalid-event"),
    pytest.param([ingest("x")], id="ingest-not-an-array"),
]


@pytest.mark.parametrize("chunks", SERVED)
async def test_served_fast_exactly_as_aiohttp_serves_it(make_harness: Any, chunks: list[bytes]) -> None:
    route = "/callbacks/v2" if b"/callbacks/" in chunks[0] else "/v1/users/{userId}/messages"
    on, off = await make_harness(), await make_harness(server__fast_path=False)
    assert FAST_PATH not in off.app
    (got,), got_closed = await exchange(on, chunks, 1)
    assert fast(on).served[route] == 1
    (want,), want_closed = await exchange(off, chunks, 1)
    assert got.normalized(on.url) == want.normalized(off.url)
    assert got_closed == want_closed
    # The same request counted the same way (route, method, status), by the same metric.
    labels = {"route": route, "method": "POST", "status": str(got.status)}
    assert on.app[METRICS].registry.get_sample_value("shim_http_requests_total", labels) == 1
    assert off.app[METRICS].registry.get_sample_value("shim_http_requests_total", labels) == 1


async def test_a_fast_send_is_a_real_send(harness: Harness) -> None:
    (reply,), closed = await exchange(harness, [post(headers=b"X-Request-Id: rid-fast-1\r\n")], 1)
    assert reply.status == 201 and not closed
    assert reply.header("X-Request-Id") == "rid-fast-1"
    location = reply.header("Location")
    assert location is not None and location.startswith(f"{harness.url}/v1/users/u-test/messages/")
    assert [m["text"] for m in harness.v2_requests] == ["fast"]
    stored = await harness.stored(location.rsplit("/", 1)[1])
    assert stored["text"] == "fast" and stored["state"] == "sent"
    assert sends_served(harness) == 1


# Requests on the hot routes that go aiohttp's way, and what aiohttp answers.
NOT_SERVED = [
    pytest.param(b"POST /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH
                 + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SEND), SEND), 201,
                 id="chunked"),
    pytest.param(post(headers=b"Content-Encoding: gzip\r\n"), 400, id="gzip-that-is-not"),
    pytest.param(post(path=b"/v1/users/u%2Dtest/messages"), 201, id="percent-encoded-user"),
    pytest.param(post(path=b"/v1/users/u-test/messages?x=1"), 201, id="query-string"),
    pytest.param(post(body=b" " * (1024 * 1024 + 1)), 413, id="over-the-body-limit"),
    pytest.param(post(headers=b"".join(b"X-%d: 1\r\n" % i for i in range(130))), 431, id="too-many-headers"),
    pytest.param(post(headers=b"X-Big: " + b"a" * 9000 + b"\r\n"), 431, id="header-too-large"),
    pytest.param(b"PUT /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, id="put"),
    pytest.param(b"GET /v1/users/u-test/messages HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH + b"\r\n\r\n",
                 200, id="list"),
]


@pytest.mark.parametrize(("raw", "status"), NOT_SERVED)
async def test_other_requests_go_aiohttps_way(harness: Harness, raw: bytes, status: int) -> None:
    (reply,), _ = await exchange(harness, [raw], 1)
    assert reply.status == status, reply.body
    assert sends_served(harness) == 0


async def test_expect_continue_goes_aiohttps_way(harness: Harness) -> None:
    raw = post(headers=b"Expect: 100-continue\r\n")
    head, body = raw[: -len(SEND)], raw[-len(SEND):]
    reader, writer = await connect(harness)
    writer.write(head)
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 201")
    writer.close()
    assert sends_served(harness) == 0


async def test_keep_alive_pipelining_and_order(harness: Harness) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await connect(harness)
    # One request at a time on one kept-alive connection: sends fast, the rest aiohttp's way.
    statuses = []
    for raw in (post(), get, post(), post(), get, post()):
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        statuses.append(int(head.split(b" ")[1]))
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
    writer.close()
    assert statuses == [201, 200, 201, 201, 200, 201]
    assert sends_served(harness) == 4
    # All in one write (pipelined): aiohttp's way, answered in order.
    replies, closed = await exchange(harness, [post() + get + post() + post() + get], 5)
    assert [r.status for r in replies] == [201, 200, 201, 201, 200] and not closed
    assert len({r.header("Location") for r in replies if r.status == 201}) == 3
    assert len(harness.v2_requests) == 7


async def test_a_request_that_follows_a_fast_one_waits_for_its_answer(make_harness: Any) -> None:
    h = await make_harness(upstream_delay_s=0.5)
    reader, writer = await send_held_at_v2(h)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post())
    first = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 201"), first
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    second = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    assert second.startswith(b"HTTP/1.1 200"), second
    writer.close()
    assert sends_served(h) == 1


async def test_a_slow_head_on_a_hot_route_times_out(make_harness: Any) -> None:
    h = await make_harness(server__header_timeout_s=0.3)
    replies, closed = await exchange(h, [post()[:30]], 1)
    assert replies[0].status == 408 and closed
    assert sends_served(h) == 0 and h.v2_requests == []


def connections(h: Harness) -> list[Any]:
    """shim's open connections (their ``V1RequestHandler``s)."""
    assert h.server is not None and h.server.runner is not None and h.server.runner.server is not None
    return list(h.server.runner.server.connections)


async def test_an_idle_kept_alive_connection_is_closed(harness: Harness) -> None:
    """aiohttp's keep-alive timeout applies after a fast answer too (else idle sockets pile up)."""
    reader, writer = await connect(harness)
    await wait_until(lambda: len(connections(harness)) == 1)
    (conn,) = connections(harness)
    conn._keepalive_timeout = 0.2  # this connection's, as if configured so
    for _ in range(2):
        writer.write(post())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 201")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server once idle
    writer.close()
    assert sends_served(harness) == 2


async def test_shutdown_waits_for_a_fast_request_in_flight(make_harness: Any) -> None:
    h = await make_harness(upstream_delay_s=0.5)
    reader, writer = await send_held_at_v2(h)
    # What a graceful stop does to the connections (``AppRunner.cleanup``), the store kept open.
    assert h.server is not None and h.server.runner is not None and h.server.runner.server is not None
    server = h.server.runner.server
    server.pre_shutdown()
    closing = asyncio.ensure_future(server.shutdown(10))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 201"), head
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
    await closing
    writer.close()
    assert await bound_messages(h) == 1


async def test_a_client_gone_mid_send_leaves_the_send_recorded(make_harness: Any) -> None:
    h = await make_harness(upstream_delay_s=0.3)
    _, writer = await send_held_at_v2(h)
    writer.close()

    async def bound() -> bool:
        return await bound_messages(h) == 1

    await wait_until(bound)
    (reply,), _ = await exchange(h, [post()], 1)  # and the server still serves
    assert reply.status == 201


async def test_a_failure_outside_the_handler_is_a_v1_500_and_a_closed_connection(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    import shim.web_server

    real = shim.web_server.render

    def broken(resp: Any, version: str, keep_alive: bool) -> bytes:
        if resp.status == 201:
            raise RuntimeError("cannot write this answer")
        return real(resp, version, keep_alive)

    monkeypatch.setattr(shim.web_server, "render", broken)
    (reply,), closed = await exchange(harness, [post()], 1)
    assert reply.status == 500 and closed
    assert reply.header("Content-Type") == "application/json" and reply.header("Connection") == "close"
    assert json.loads(reply.body)["message"] == "An internal error occurred"
    monkeypatch.setattr(shim.web_server, "render", real)
    (reply,), _ = await exchange(harness, [post()], 1)  # still serving
    assert reply.status == 201
