"""The connection fast path: the hot routes (a v1 send, a v2 callback POST) served straight from the
connection, without aiohttp's per-request machinery (request and response objects, router,
middleware chain, stream writer), which cost more than all of shim's own work on a send.

A shadow parser (httptools, llhttp like aiohttp's) reads every request head on the connection.
A request is served here only when it is simple and whole: a POST to a hot route with a
``Content-Length`` body within ``server.max_body_bytes``, no ``Transfer-Encoding``,
``Content-Encoding``, ``Expect`` or ``Upgrade``, a plain path, and begun on a connection aiohttp
is idle on. It then runs the same handler through the same ``serve_v1`` wrapper as aiohttp's path
(request id, v1 errors, access log, metrics, usage) and its response is written with the headers
aiohttp writes. Everything else — every other route, every odd request — is handed to aiohttp
byte for byte, so its parser, errors and limits decide as before. ``V1RequestHandler`` in
``web_server`` drives this; this module holds the pieces that need no connection.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import httptools
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict, CIMultiDictProxy

Handler = Callable[[Any], Awaitable[web.StreamResponse]]
Serve = Callable[[Any, Handler, str | None], Awaitable[web.StreamResponse]]

# A path segment taken as is: no percent-escapes and no dot segment (aiohttp would decode or
# normalise those; such requests go its way).
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
_USER_MESSAGES = re.compile(r"/v1/users/([^/]+)/messages")
# Request headers that send a request aiohttp's way (its parser and handlers own these cases).
_REFUSED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"sec-websocket-key1"})
# Headers aiohttp's request parser refuses to see twice (RFC 9110): such a request goes its way, to
# be answered 400 as it always was. Its own list, so an aiohttp upgrade that changes it changes this.
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)
# Heads past aiohttp's limits (its defaults: 8190-byte lines and fields, 128 headers) go its way,
# so it answers them as it always has (414/431); a request still unfinished past MAX_HEAD_BYTES too.
MAX_LINE, MAX_HEADERS = 8190, 128
MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class FastRoute:
    handler: Handler
    name: str  # the route's pattern, as aiohttp names it (access log, metrics, usage)


class FastRoutes:
    """The hot routes: a v1 send (``/v1/users/{userId}/messages``) and the callback path."""

    def __init__(self, app: web.Application, serve: Serve, send: Handler, callback_path: str,
                 ingest: Handler, max_body_bytes: int) -> None:
        self.app = app
        self.serve = serve
        self.max_body_bytes = max_body_bytes
        self._send = FastRoute(send, "/v1/users/{userId}/messages")
        self._callback_path = callback_path
        self._ingest = FastRoute(ingest, callback_path)
        self.served: Counter[str] = Counter()  # requests served here, by route (tests read it)

    def match(self, method: bytes, url: bytes) -> tuple[FastRoute, dict[str, str]] | None:
        if method != b"POST":
            return None
        try:
            path = url.decode("ascii")
        except UnicodeDecodeError:
            return None
        if path == self._callback_path:
            return self._ingest, {}
        m = _USER_MESSAGES.fullmatch(path)
        if m is not None and _SEGMENT.fullmatch(m.group(1)) and m.group(1) not in (".", ".."):
            return self._send, {"userId": m.group(1)}
        return None


class FastRequest(dict[Any, Any]):
    """A request as the v1 handlers see it (``facade.web_v1.V1Request``); its dict is the
    per-request state aiohttp's ``web.Request`` also carries."""

    __slots__ = ("_body", "app", "headers", "match_info", "method", "path", "remote")

    def __init__(self, app: web.Application, path: str, headers: CIMultiDictProxy[str],
                 match_info: dict[str, str], remote: str | None, body: bytes) -> None:
        super().__init__()
        self.app = app
        self.method = "POST"
        self.path = path
        self.headers = headers
        self.match_info = match_info
        self.remote = remote
        self._body = body

    async def read(self) -> bytes:
        return self._body


@dataclass
class Message:
    """One request as the shadow parser saw it."""

    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    head_done: bool = False
    complete: bool = False
    # Set at the end of the head: the route when the request may be served here, and its body.
    route: tuple[FastRoute, dict[str, str]] | None = None
    body: list[bytes] = field(default_factory=list)
    keep_alive: bool = True
    version: str = "1.1"


class ShadowParser:
    """llhttp over every byte of a connection, to know where requests begin and end and which can
    be served fast. ``feed`` raises httptools' errors (bad HTTP, upgrade): the caller then leaves the
    connection to aiohttp for good."""

    def __init__(self, routes: FastRoutes) -> None:
        self.routes = routes
        self._parser = httptools.HttpRequestParser(self)
        self.current: Message | None = None  # the request being read, None between requests
        self.started: list[Message] = []  # requests begun in the last ``feed``

    def feed(self, data: bytes) -> None:
        self.started = []
        self._parser.feed_data(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.current = Message()
        self.started.append(self.current)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        msg = self.current
        assert msg is not None
        msg.head_done = True
        msg.keep_alive = self._parser.should_keep_alive()
        msg.version = self._parser.get_http_version()
        if msg.version not in ("1.1", "1.0") or len(msg.url) > MAX_LINE or len(msg.headers) > MAX_HEADERS:
            return
        route = self.routes.match(self._parser.get_method(), msg.url)
        if route is None:
            return
        length = None
        seen: set[bytes] = set()
        for name, value in msg.headers:
            if len(name) + len(value) > MAX_LINE:
                return
            lname = name.lower()
            if lname in _REFUSED:
                return
            if lname in _SINGLETONS:
                if lname in seen:
                    return
                seen.add(lname)
            if lname == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                return
            if lname == b"content-length":
                length = int(value) if value.isdigit() else None
        if length is None or length > self.routes.max_body_bytes:
            return
        if msg.version == "1.1" and b"host" not in seen:  # aiohttp answers 400
            return
        msg.route = route

    def on_body(self, body: bytes) -> None:
        msg = self.current
        if msg is not None and msg.route is not None:
            msg.body.append(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.current = None


def fast_request(routes: FastRoutes, msg: Message, remote: str | None) -> FastRequest:
    assert msg.route is not None
    routes.served[msg.route[0].name] += 1
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in msg.headers:
        headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
    return FastRequest(routes.app, msg.url.decode("ascii"), CIMultiDictProxy(headers), msg.route[1],
                       remote, b"".join(msg.body))


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


_SERVER = SERVER_SOFTWARE.encode()
_OWN_HEADERS = frozenset({"content-length", "date", "server", "connection"})


def render(resp: web.StreamResponse, version: str, keep_alive: bool) -> bytes:
    """The response as aiohttp writes it: status line in the request's HTTP version, the handler's
    headers, then ``Content-Length``, ``Date``, ``Server`` and the ``Connection`` it would add."""
    body = resp.body if isinstance(resp, web.Response) else None
    if body is not None and not isinstance(body, bytes):
        raise TypeError("the fast path writes bytes bodies only")
    body = body or b""
    lines = [f"HTTP/{version} {resp.status} {resp.reason}".encode("latin-1")]
    for name, value in resp.headers.items():
        if name.lower() not in _OWN_HEADERS:
            lines.append(f"{name}: {value}".encode())
    lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Date: " + _date())
    lines.append(b"Server: " + _SERVER)
    if keep_alive and version == "1.0":
        lines.append(b"Connection: keep-alive")
    elif not keep_alive and version == "1.1":
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
