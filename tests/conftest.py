"""Shared fixtures: a real shim on loopback, the sandbox upstream, and a real callback receiver.

Every v2 request the sandbox receives is validated against the official spec shipped in the
package (``shim/data/messaging-v2.yml``); a test fails if shim ever sends an invalid one.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, get_port_socket
from multidict import CIMultiDict

from shim.basic_auth import basic_header
from shim.config import Config, parse_config
from shim.core import message_request_errors
from shim.keys import SANDBOX
from shim.sandbox import CallbackTarget, build_sandbox_app
from shim.web_app import build_app, make_runner

from . import compat
from .pg import postgres_server  # noqa: F401 - the session's PostgreSQL, for the tests that ask

USER = {
    "user_id": "u-test",
    "api_token": "t-test-token",
    "api_secret": "s3cret-value",
    "account_id": "9900001",
    "application_id": "aaaaaaaa-1111-2222-3333-444444444444",
    "v2_username": "v2user",
    "v2_password": "v2pass-secret",
}
OTHER_USER = {
    "user_id": "u-other",
    "api_token": "t-other-token",
    "api_secret": "other-secret",
    "account_id": "9900002",
    "application_id": "bbbbbbbb-1111-2222-3333-444444444444",
    "v2_username": "v2other",
    "v2_password": "v2other-secret",
}
CB_USER, CB_PASS = "bandwidth", "cb-pass-secret"
# Standard Webhooks form (whsec_ + base64 key), as the reference library requires.
SIGNING_SECRET = "whsec_c2hpbS10ZXN0LXNpZ25pbmcta2V5LTAxMjM0NTY3ODk="


def pytest_itemcollected(item: pytest.Item) -> None:
    """A ``compat`` marker is what ``tests/compat.py`` reads from the source (literal arguments, a
    known status), so ``docs/compatibility.md`` lists exactly the markers pytest sees."""
    seen = [m for m in item.iter_markers("compat")]
    if not seen or not isinstance(item, pytest.Function):
        return
    test = f"{item.path.relative_to(compat.ROOT).as_posix()}::{item.originalname}"
    scanned = sorted((m.endpoint, m.field, m.status, m.note) for m in compat.scan_file(item.path) if m.test == test)
    got = sorted((*m.args, " ".join(str(m.kwargs.get("note", "")).split())) for m in seen)
    if got != scanned:
        raise compat.MarkerError(f"{test}: compat markers must be literal decorators on the test itself: {got} != {scanned}")


def auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": basic_header(user, password)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``cond`` (a plain or async predicate) until it returns True.

    The predicate must return a real ``bool``: anything else (a list, a dict, an un-awaited
    coroutine's result) is a TypeError, because "truthy" waits are how a wait ends up meaning
    nothing (``outbox_counts()`` is a non-empty dict at once)."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, bool):
            raise TypeError(f"wait_until: the condition returned {type(result).__name__}, not bool")
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def outbox_is(store: Any, **expected: int) -> Callable[[], Awaitable[bool]]:
    """A wait_until predicate: the store's outbox counts match ``expected`` (e.g. pending=0, delivered=1)."""
    async def check() -> bool:
        counts = await store.outbox_counts()
        return all(counts[k] == v for k, v in expected.items())
    return check


async def sql_rows(store: Any, sql: str, *args: Any) -> list[Any]:
    """Read-only SQL against a harness store (``?`` placeholders, any backend), for assertions."""
    return list(await store.query(sql, *args))


class ShimTestServer(TestServer):
    """``TestServer`` serving through ``make_runner``, exactly as ``shim serve`` does."""

    def __init__(self, app: web.Application, cfg: Config, **kw: Any) -> None:
        super().__init__(app, **kw)
        self.cfg = cfg

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return make_runner(self.app, self.cfg, **kwargs)


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: CIMultiDict[str]
    body: bytes
    raw_query: str = ""  # the exact query string (what a GET callback's signature covers)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A legacy app's callback endpoint. ``script[path]`` lists statuses to answer in turn
    (last one repeats); a status of ``"hang"`` never answers in time."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    script: dict[str, list[Any]] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(
            request.method, request.path,
            {k: request.query.getall(k) for k in request.query}, CIMultiDict(request.headers), body,
            request.raw_path.partition("?")[2],
        ))
        steps = self.script.get(request.path, [200])
        status = steps.pop(0) if len(steps) > 1 else steps[0]
        if status == "hang":
            await asyncio.sleep(30)
            status = 200
        return web.Response(status=int(status), headers=self.headers.get(request.path))


@dataclass
class Harness:
    url: str
    cfg: Config
    app: web.Application
    sandbox: web.Application
    receiver: Receiver
    session: aiohttp.ClientSession
    v2_requests: list[Any]
    v2_headers: list[CIMultiDict[str]] = field(default_factory=list)
    # Most v2 sends the sandbox saw in flight at once.
    v2_in_flight: dict[str, int] = field(default_factory=lambda: {"now": 0, "max": 0})
    auth: dict[str, str] = field(default_factory=lambda: auth(USER["api_token"], USER["api_secret"]))
    server: ShimTestServer | None = None  # shim's own server (its runner, its connections)

    @property
    def messages_url(self) -> str:
        return f"{self.url}/v1/users/u-test/messages"

    async def post(self, body: Any, raw: bytes | None = None, **kw: Any) -> aiohttp.ClientResponse:
        data: Any = raw if raw is not None else json.dumps(body).encode()
        if len(data) > 512 * 1024:
            data = io.BytesIO(data)
        headers = {"Content-Type": "application/json"} | kw.pop("auth", self.auth) | kw.pop("headers", {})
        resp = await self.session.post(self.messages_url, data=data, headers=headers, **kw)
        await resp.read()
        return resp

    async def get_json(self, url: str, **kw: Any) -> tuple[aiohttp.ClientResponse, Any]:
        resp = await self.session.get(url, headers=kw.pop("auth", self.auth), **kw)
        body = await resp.read()
        return resp, (json.loads(body) if body else None)

    async def send(self, **fields: Any) -> str:
        body = {"from": "+15551230001", "to": "+15551230002", "text": "hi"} | fields
        resp = await self.post(body)
        assert resp.status == 201, await resp.text()
        return resp.headers["Location"].rsplit("/", 1)[1]

    async def stored(self, message_id: str) -> dict[str, Any]:
        resp, body = await self.get_json(f"{self.messages_url}/{message_id}")
        assert resp.status == 200
        assert isinstance(body, dict)
        return body

    @property
    def sandbox_state(self) -> Any:
        return self.sandbox[SANDBOX]


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []
    checks: list[list[Any]] = []
    reserved: list[socket.socket] = []  # shim's sockets, bound before its server (closed with it)

    async def factory(store_url: str | None = None, upstream_delay_s: float = 0, **overrides: Any) -> Harness:
        receiver = Receiver()
        rapp = web.Application()
        rapp.router.add_route("*", "/{tail:.*}", receiver.handle)
        rserver = TestServer(rapp, host="127.0.0.1")  # port 0: bound at once, no race for it
        await rserver.start_server()
        servers.append(rserver)
        receiver.url = str(rserver.make_url("")).rstrip("/")

        # shim's port is in its config, so it is known before its server starts: bound now and
        # kept (a port only looked up here could be taken meanwhile: seen once as EADDRINUSE).
        shim_sock = get_port_socket("127.0.0.1", 0, socket.AF_INET)
        reserved.append(shim_sock)
        port = int(shim_sock.getsockname()[1])
        user = dict(USER) | {"incoming": {"url": f"{receiver.url}/incoming", "timeout_ms": 2000}}
        raw: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": port},
            "store": {"url": store_url or f"sqlite:///{tmp_path}/shim-{len(servers)}.db"},
            "upstream": {"mode": "sandbox", "timeout_s": 3, "connect_retries": 1},
            "callbacks": {"username": CB_USER, "password": CB_PASS,
                          "retry_schedule_s": [0.2, 0.2, 0.2], "signing_secret": SIGNING_SECRET,
                          "unmatched_grace_s": 1, "allow_cidrs": ["127.0.0.0/8"],
                          # On as in production, but brief: tests that fail a receiver on purpose
                          # (every receiver is one host) still see their retries within seconds.
                          "breaker": {"open_s": 0.3, "max_open_s": 1}},
            "users": [user, OTHER_USER],
        }
        # "{receiver}" in an override stands for the receiver's base URL.
        overrides = json.loads(json.dumps(overrides).replace("{receiver}", receiver.url))
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            if name:
                raw.setdefault(section, {})[name] = value
            else:
                raw[section] = value
        cfg = parse_config(raw)

        v2_requests: list[Any] = []
        v2_headers: list[CIMultiDict[str]] = []
        in_flight = {"now": 0, "max": 0}
        checks.append(v2_requests)
        creds = {(u.v2_username, u.v2_password.get_secret_value()) for u in cfg.users}
        target = CallbackTarget(f"http://127.0.0.1:{port}{cfg.callbacks.path}", CB_USER, CB_PASS)
        sapp = build_sandbox_app(creds, target, delay_s=0.02)
        cfg.sandbox.callback_delay_s = 0.02

        @web.middleware
        async def capture(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "POST" and request.path.endswith("/messages"):
                v2_requests.append(json.loads(await request.read()))
                v2_headers.append(CIMultiDict(request.headers))
                in_flight["now"] += 1
                in_flight["max"] = max(in_flight["max"], in_flight["now"])
                try:
                    await asyncio.sleep(upstream_delay_s)
                    return await handler(request)
                finally:
                    in_flight["now"] -= 1
            return await handler(request)

        sapp.middlewares.append(capture)
        sserver = TestServer(sapp, host="127.0.0.1")
        await sserver.start_server()
        servers.append(sserver)
        cfg.upstream.base_url = str(sserver.make_url("")).rstrip("/")

        app = build_app(cfg)
        server = ShimTestServer(app, cfg, host="127.0.0.1", port=port, socket_factory=lambda *_: shim_sock)
        await server.start_server()
        servers.append(server)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Harness(f"http://127.0.0.1:{port}", cfg, app, sapp, receiver, session, v2_requests, v2_headers, in_flight,
                       server=server)

    yield factory
    for s in sessions:
        await s.close()
    # The simulator first (it stops posting callbacks), then shim, then the receivers.
    for srv in sorted(reversed(servers), key=lambda s: s.app is None or SANDBOX not in s.app):
        await srv.close()
    for sock in reserved:  # (a factory that failed before its server started)
        sock.close()
    for requests in checks:
        for body in requests:
            errors = message_request_errors(body)
            assert not errors, f"shim sent an invalid v2 request {body}: {errors[0].message}"


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    return await make_harness()
