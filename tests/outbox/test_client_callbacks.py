"""One callback attempt against real receivers on loopback (``CallbackClient``)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from shim.basic_auth import basic_header
from shim.config import CallbacksConfig
from shim.core import DeliverySpec, Route
from shim.outbox import USER_AGENT, AddressPolicy, AttemptResult, CallbackClient, _url_safety, signature
from shim.outbox.client_callbacks import MAX_RESPONSE_BYTES

from ..conftest import free_port

CHUNK = 1024 * 1024
HUGE = 400 * CHUNK


@pytest.mark.parametrize("kind", ["httptools", "aiohttp"])
async def test_a_huge_response_body_is_not_read(kind: str) -> None:
    """A receiver answering 200 with a 400 MiB body: the attempt succeeds after reading a few KiB,
    and the receiver is cut off long before it has written its body."""
    written = {"bytes": 0}
    finished = asyncio.Event()

    async def flood(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.content_length = HUGE
        await resp.prepare(request)
        try:
            chunk = b"x" * CHUNK
            while written["bytes"] < HUGE:
                await resp.write(chunk)
                written["bytes"] += CHUNK
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass
        finally:
            finished.set()
        return resp

    app = web.Application()
    app.router.add_post("/cb", flood)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = CallbackClient(AddressPolicy(["127.0.0.0/8"], []), concurrency=4, per_host=4, http_client=kind)
    await client.start()
    try:
        spec = DeliverySpec.to(Route(url=f"http://127.0.0.1:{server.port}/cb", timeout_ms=10_000),
                               event_id="evt_1", order_key="m", user_id="u", body={"a": 1})
        result = await client.attempt(spec, spec.url)
        assert result.ok, result.error
        await asyncio.wait_for(finished.wait(), 10)
        # The receiver got cut off: only what fits in the socket buffers beyond our small read.
        assert written["bytes"] < 64 * CHUNK, written
        assert MAX_RESPONSE_BYTES <= 64 * 1024
    finally:
        await client.close()
        await server.close()


# -- both clients (callbacks.http_client), same results ------------------------------------------
CLIENTS = ["httptools", "aiohttp"]
SECRET = "whsec_" + base64.b64encode(b"a-signing-key-of-some-bytes").decode()


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes
    peer: Any


@dataclass
class Receiver:
    """Real loopback receiver: /ok, /503 (Retry-After), /redirect, /hang, /big (a complete 100 KiB answer)."""
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(request.method, request.path_qs, CIMultiDict(request.headers), await request.read(), peer))
        if request.path == "/503":
            return web.Response(status=503, headers={"Retry-After": "7"})
        if request.path == "/redirect":
            raise web.HTTPFound("/ok")
        if request.path == "/hang":
            await self.release.wait()
        if request.path == "/big":
            return web.Response(body=b"b" * 100_000)
        return web.Response(text="ok")

    def at(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path_qs.split("?")[0] == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", r.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    r.port = server.port or 0
    yield r
    r.release.set()
    await server.close()


# A fake DNS for SafeResolver: name -> addresses (aiohttp's ResolveResult shape).
NAMES: dict[str, list[str]] = {}


class FakeDns:
    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        if host not in NAMES:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": 0} for a in NAMES[host]]

    async def close(self) -> None:
        return None


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    monkeypatch.setattr(_url_safety, "DefaultResolver", FakeDns)
    NAMES.clear()
    yield NAMES
    NAMES.clear()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[CallbackClient]]]:
    made: list[CallbackClient] = []

    async def make(kind: str, policy: AddressPolicy | None = None, **kw: Any) -> CallbackClient:
        client = CallbackClient(policy or AddressPolicy(["127.0.0.0/8"], []), concurrency=8, per_host=4,
                                signing_secrets=[SECRET], wall_clock=lambda: 1_700_000_000.5, http_client=kind, **kw)
        await client.start()
        made.append(client)
        return client
    yield make
    for c in made:
        await c.close()


def spec_for(url: str, method: str = "POST", timeout_ms: int = 5000, **kw: Any) -> DeliverySpec:
    spec = DeliverySpec.to(Route(url=url, method=method, timeout_ms=timeout_ms),  # type: ignore[arg-type]
                           event_id="evt_m1_sent", order_key="m1", user_id="u",
                           body={"eventType": "sms", "messageId": "m1", "text": "hé & =/+", "from": "+15550001",
                                 "media": ["https://a.example/1.png", "https://a.example/2 x.png"], "n": 1, "b": True})
    return spec.model_copy(update=kw)


async def attempt(client: CallbackClient, url: str, **kw: Any) -> AttemptResult:
    return await client.attempt(spec_for(url, **kw), url)


WIRE_HEADERS = ("Host", "User-Agent", "Accept", "Content-Type", "Content-Length", "Authorization", "webhook-id",
                "webhook-timestamp", "webhook-signature", "X-Request-Id", "X-Shim-Reconciled")


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_the_wire_is_the_same_on_both_clients(receiver: Receiver, clients: Any, method: str) -> None:
    url = f"http://app%20user:p%40ss@127.0.0.1:{receiver.port}/cb?x=1&y=a%20b"
    for kind in CLIENTS:
        result = await attempt(await clients(kind), url, method=method, request_id="req-1", reconciled=True)
        assert result == AttemptResult(True), kind
    h1, aio = receiver.seen
    assert (h1.method, h1.path_qs, h1.body) == (aio.method, aio.path_qs, aio.body)
    for name in WIRE_HEADERS:
        assert h1.headers.get(name) == aio.headers.get(name), name
    got = h1.headers
    assert got["Authorization"] == basic_header("app user", "p@ss") and got["User-Agent"] == USER_AGENT
    assert (got["webhook-id"], got["webhook-timestamp"], got["X-Request-Id"], got["X-Shim-Reconciled"]) == (
        "evt_m1_sent", "1700000000", "req-1", "true")
    assert "Location" not in got and h1.method == method
    if method == "GET":
        raw_query = h1.path_qs.split("?", 1)[1]
        assert raw_query.startswith("x=1&y=a%20b&eventType=sms&") and h1.body == b"" and "Content-Type" not in got
        assert raw_query.endswith("&media=https%3A%2F%2Fa.example%2F1.png&media=https%3A%2F%2Fa.example%2F2+x.png&n=1&b=true")
        signed = raw_query
    else:
        assert got["Content-Type"] == "application/json; charset=utf-8"
        assert json.loads(h1.body)["text"] == "hé & =/+"
        signed = h1.body.decode()
    expected = signature(SECRET, "evt_m1_sent", 1700000000, signed)
    assert got["webhook-signature"] == expected


@pytest.mark.parametrize("kind", CLIENTS)
async def test_answers_timeouts_and_connection_errors(receiver: Receiver, clients: Any, kind: str) -> None:
    client = await clients(kind)
    base = f"http://127.0.0.1:{receiver.port}"
    assert await attempt(client, f"{base}/503") == AttemptResult(False, "HTTP 503", 7.0)
    assert await attempt(client, f"{base}/redirect") == AttemptResult(False, "HTTP 302")  # never followed
    assert receiver.at("/ok") == []
    assert await attempt(client, f"{base}/hang", timeout_ms=200) == AttemptResult(False, "timeout after 200 ms")
    closed = free_port()
    result = await attempt(client, f"http://user:secret@127.0.0.1:{closed}/cb")
    assert not result.ok and not result.permanent and result.retry_after_s is None
    assert result.error.startswith("ClientConnectorError: ") and str(closed) in result.error, result.error
    assert "secret" not in result.error
    refused = await attempt(client, "http://10.0.0.1/cb")
    assert refused == AttemptResult(False, "refused: address 10.0.0.1 is not allowed", permanent=True)


async def test_connection_errors_read_the_same_on_both_clients(clients: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/cb"  # nothing listens
    h1, aio = [await attempt(await clients(kind), url) for kind in CLIENTS]
    assert h1 == aio and h1.error.startswith("ClientConnectorError: ")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb"
        h1, aio = [await attempt(await clients(kind), url) for kind in CLIENTS]
        assert h1 == aio == AttemptResult(False, "ServerDisconnectedError: Server disconnected")
    finally:
        server.close()


@pytest.mark.parametrize("kind", CLIENTS)
async def test_names_are_judged_on_the_addresses_connected_to(
        receiver: Receiver, clients: Any, dns: dict[str, list[str]], kind: str) -> None:
    """DNS rebinding: a name with any refused address is refused as a whole, before any connection;
    private, metadata and shim's own listener addresses are refused behind names too."""
    port, own = receiver.port, free_port()
    dns.update({"good.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1", "10.0.0.1"], "private.test": ["10.1.2.3"],
                "meta.test": ["169.254.169.254"], "mapped.test": ["::ffff:192.168.0.1"]})
    client = await clients(kind, AddressPolicy(["127.0.0.0/8", "169.254.0.0/16"], [], self_ports=[own]))
    only = "resolves only to refused addresses"
    for name, at, error in (("mixed.test", port, "resolves to a refused address"), ("private.test", port, only),
                            ("meta.test", port, only), ("mapped.test", port, only), ("good.test", own, only)):
        result = await attempt(client, f"http://{name}:{at}/cb")
        assert result == AttemptResult(False, f"refused: callback host {name} {error}", permanent=True), (name, result)
    assert receiver.seen == []
    # The name whose address is permitted (not on shim's own port): delivered to that address, Host unchanged.
    assert await attempt(client, f"http://good.test:{port}/cb") == AttemptResult(True)
    (seen,) = receiver.seen
    assert seen.headers["Host"] == f"good.test:{port}" and seen.peer is not None
    unknown = await attempt(client, f"http://nowhere.test:{port}/cb")
    assert not unknown.ok and not unknown.permanent and unknown.error.startswith("ClientConnectorDNSError: "), unknown


@pytest.mark.parametrize("kind", CLIENTS)
async def test_keep_alive_but_a_long_answer_drops_its_connection(receiver: Receiver, clients: Any, kind: str) -> None:
    client = await clients(kind)
    base = f"http://127.0.0.1:{receiver.port}"
    for _ in range(3):
        assert await attempt(client, f"{base}/ok") == AttemptResult(True)
    assert len({s.peer for s in receiver.seen}) == 1
    assert await attempt(client, f"{base}/big") == AttemptResult(True)  # more than MAX_RESPONSE_BYTES
    assert await attempt(client, f"{base}/ok") == AttemptResult(True)
    assert [s.peer for s in receiver.seen].count(receiver.seen[-1].peer) == 1  # a new connection after /big


async def test_config_picks_the_client(clients: Any) -> None:
    assert CallbacksConfig().http_client == "auto"
    for kind in ("auto", "httptools", "aiohttp"):
        client = await clients(CallbacksConfig(http_client=kind).http_client)  # type: ignore[arg-type]
        assert (client._h1 is None) == (kind == "aiohttp") and (client._session is None) == (kind != "aiohttp")
