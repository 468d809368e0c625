"""Review of the connection fast path (``shim.web_fastpath``): requests an attacker controls byte for
byte, answered by a fast-path server and by a ``server.fast_path: false`` server; both must answer
the same (bar dates and fresh ids)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from .conftest import Harness, wait_until
from .test_web_fastpath import AUTH, SEND, connections, sends_served

ID = re.compile(rb"(?<=/messages/)[^\"/\r\n]+")
RID = re.compile(rb"(?im)^(x-request-id: )(?!caller-id-1\r)[^\r\n]*")
DATE = re.compile(rb"(?im)^date: [^\r\n]*")
RID_BODY = re.compile(rb'"requestId": ?"[^"]*"')


async def raw_answer(h: Harness, chunks: list[bytes], pause: float = 0.05, idle: float = 0.6) -> bytes:
    """Every byte the server writes back on one connection given ``chunks``, until it closes or
    stays quiet for ``idle`` seconds; ``<closed>`` marks a close."""
    host, port = h.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        try:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(pause)
        except ConnectionError:
            pass  # the server closed early: what it answered is still read
        out = b""
        while True:
            try:
                got = await asyncio.wait_for(reader.read(65536), idle)
            except TimeoutError:
                return out
            except ConnectionError:
                return out + b"<reset>"
            if not got:
                return out + b"<closed>"
            out += got
    finally:
        writer.close()


def normalized(h: Harness, raw: bytes) -> bytes:
    raw = raw.replace(h.url.encode(), b"BASE")
    raw = ID.sub(b"ID", raw)
    raw = DATE.sub(b"Date: DATE", raw)
    raw = RID.sub(rb"\1RID", raw)
    return RID_BODY.sub(b'"requestId":"RID"', raw)


async def both(make_harness: Any, chunks: list[bytes], **kw: Any) -> tuple[bytes, bytes, Harness]:
    on, off = await make_harness(), await make_harness(server__fast_path=False)
    got = normalized(on, await raw_answer(on, chunks, **kw))
    want = normalized(off, await raw_answer(off, chunks, **kw))
    return got, want, on


def req(head: bytes, body: bytes = SEND) -> bytes:
    return head + b"\r\n\r\n" + body


A = b"Authorization: " + AUTH
CL = b"Content-Length: %d" % len(SEND)
P = b"POST /v1/users/u-test/messages HTTP/1.1"


H = b"Host: x"
# Requests aiohttp's parser refuses (400) on top of llhttp's own checks: a HTTP/1.1 request with no
# Host, a repeated singleton header (RFC 9110), the old websocket key. The fast path served them:
# a 201 and a real send where aiohttp answers 400 and sends nothing.
REFUSED_BY_AIOHTTP = [
    pytest.param(req(b"\r\n".join([P, A, CL])), id="no-host"),
    pytest.param(req(b"\r\n".join([P, H, H, A, CL])), id="two-hosts"),
    pytest.param(req(b"\r\n".join([P, H, A, b"Content-Type: application/json", b"Content-Type: text/plain", CL])),
                 id="two-content-types"),
    pytest.param(req(b"\r\n".join([P, H, A, b"User-Agent: a", b"User-Agent: b", CL])), id="two-user-agents"),
    pytest.param(req(b"\r\n".join([P, H, A, b"Sec-WebSocket-Key1: x", CL])), id="sec-websocket-key1"),
]


@pytest.mark.parametrize("raw", REFUSED_BY_AIOHTTP)
async def test_requests_aiohttp_refuses_are_refused_on_the_fast_path(make_harness: Any, raw: bytes) -> None:
    got, want, on = await both(make_harness, [raw])
    assert want.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert got == want
    assert sends_served(on) == 0 and on.v2_requests == []


async def test_a_head_trickled_byte_by_byte_costs_linear_time(harness: Harness) -> None:
    """A request head held for the fast path, arriving one byte per read (a slow client, or one that
    means harm): each byte must not cost time in proportion to the bytes held before it. It did
    (``_head_too_long`` summed every held chunk on every read): 20,000 one-byte reads took seconds
    of the event loop, 60,000 (under ``MAX_HEAD_BYTES``) some 9 s from one connection."""
    host, port = harness.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    try:
        await wait_until(lambda: len(connections(harness)) == 1)
        (conn,) = connections(harness)
        head = P + b"\r\nHost: x\r\nX-Pad: " + b"a" * 20000
        started = time.process_time()
        for i in range(len(head)):
            conn.data_received(head[i:i + 1])
        spent = time.process_time() - started
        assert conn._held_msg is not None  # still held for the fast path
        assert spent < 1.0, f"{spent:.2f}s of CPU for a {len(head)}-byte head"
    finally:
        writer.close()


async def test_a_big_unfinished_body_is_not_held_for_the_fast_path(make_harness: Any) -> None:
    """Anyone (no credentials needed) could make a connection hold ``server.max_body_bytes`` (1 MiB)
    twice over (the held reads and the shadow parser's copy of the body), for as long as it likes:
    a head promising a 1 MiB body, then all of it but a byte. aiohttp's path answers such a request
    401 from its head and reads no more than its buffer; the fast path must not hold more than a head's
    worth either, so it hands the request to aiohttp, which answers as before."""
    body = b"x" * (1024 * 1024)
    raw = req(b"\r\n".join([P, H, b"Authorization: Basic eDp5", b"Content-Length: %d" % len(body)]), body[:-1])
    chunks = [raw[:4096], raw[4096:]]
    got, want, on = await both(make_harness, chunks, idle=1.5)
    assert want.split(b"\r\n", 1)[0] == b"HTTP/1.1 401 Unauthorized"
    assert got == want
    (conn,) = connections(on)[:1] or [None]
    assert conn is None or conn._held_bytes <= 64 * 1024


async def test_an_unfinished_body_is_not_held_for_ever(make_harness: Any) -> None:
    """A head whose (small) body never comes whole: aiohttp's path answers it from its head (401
    here, no credentials needed) and closes within its lingering time; the fast path held it, with
    no timer at all (the head timer stopped at the head, the keep-alive timer skips held requests),
    so one client could keep any number of connections for ever. Past ``server.header_timeout_s``
    the request must go aiohttp's way."""
    on = await make_harness(server__header_timeout_s=0.3)
    raw = req(b"\r\n".join([P, H, b"Authorization: Basic eDp5", b"Content-Length: 100"]), b"{")
    answer = await raw_answer(on, [raw], idle=2)
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), answer
    assert sends_served(on) == 0
