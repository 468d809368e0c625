"""The HTTP connection layer under the app: answers aiohttp's own parser errors (bad framing,
oversized heads, unknown methods, undecodable bodies) as v1 JSON errors, closes connections
whose request head does not arrive within ``server.header_timeout_s``, and serves the hot routes
on the connection's fast path (``web_fastpath``) when ``server.fast_path`` is on."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import httptools
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from shim.core import v1_json_bytes
from shim.errors import BodyTooLarge, ShimError, error_body
from shim.web_fastpath import MAX_HEAD_BYTES, FastRoutes, Message, ShadowParser, fast_request, render

log = logging.getLogger("shim.http")
# Bytes kept while a fast-path request is being served before the connection stops reading.
MAX_QUEUED_BYTES = 256 * 1024
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def _excerpt(text: str, limit: int = 120) -> str:
    text = text.split("\n", 1)[0].strip().rstrip(":")
    text = _PRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    return text if len(text) <= limit else text[:limit] + "..."


def _exc_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) and message else str(exc)


class BadRequestLine(ShimError):
    status = 400
    category = "bad-request"
    code = "bad-request"


def parser_error(status: int, exc: BaseException | None, first_line: bytes = b"") -> ShimError:
    """aiohttp's parser / protocol error → the v1 error shim answers instead."""
    if status == 504:
        return ShimError("The request took too long to handle", status=504, category="unavailable",
                         code="gateway-timeout")
    if status >= 500 and not isinstance(exc, BadHttpMethod):
        return ShimError("An internal error occurred")
    text = _excerpt(_exc_text(exc))
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytes | bytearray | str) and line[:1] in (b"/", "/"):
            return ShimError("The request URL is longer than the limit", status=414,
                             category="bad-request", code="uri-too-long")
        return ShimError("A request header is larger than the limit", status=431,
                         category="bad-request", code="request-header-fields-too-large")
    if isinstance(exc, BadHttpMethod):
        if "HTTPS" in text or not _TOKEN.match(first_line):
            return BadRequestLine("The request line is not a valid HTTP request line")
        return ShimError("The request method is not supported", status=501, category="bad-request",
                         code="method-not-implemented")
    if "Too many headers" in text:
        return ShimError("The request has more headers than the limit", status=431,
                         category="bad-request", code="request-header-fields-too-large")
    if isinstance(exc, ContentEncodingError) or "content-encoding" in text.lower():
        return undecodable_body()
    if status == 413:
        return BodyTooLarge("The request body is larger than the limit")
    return BadRequestLine(f"The request is not valid HTTP: {text or 'malformed'}")


def undecodable_body() -> ShimError:
    return BadRequestLine(
        "The request Content-Encoding is not supported or the body could not be decoded "
        "(supported: gzip, deflate, identity)"
    )


def error_response(err: ShimError, remote: str | None = None) -> web.Response:
    details = {"remoteAddress": remote or ""}
    return web.Response(body=v1_json_bytes(error_body(err, details)), status=err.status,
                        headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})


class V1RequestHandler(RequestHandler):
    """aiohttp's connection handler with v1 JSON errors, a request-head timeout and the fast path."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float = 10.0,
                 fast: FastRoutes | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._first_line = b""
        # The fast path: the shadow parser (None: this connection is aiohttp's for good), the
        # bytes of a request being read for it, and bytes that came while one was being served.
        self._fast = fast
        self._shadow = ShadowParser(fast) if fast is not None else None
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._held_msg: Message | None = None
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._fast_paused = False
        self._fast_task: asyncio.Task[None] | None = None  # the request being served on the fast path
        self._aio_messages = 0  # requests the shadow parser saw in the bytes given to aiohttp
        self._remote: str | None = None

    # --- v1 errors ---------------------------------------------------------------------------
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send the error")
        err = parser_error(status, exc, self._first_line)
        if status >= 500 and err.status >= 500:
            log.error("error handling request", exc_info=exc)
        else:
            log.info("malformed request", extra={"status": err.status, "error": _excerpt(_exc_text(exc) or message or "")})
        resp = error_response(err, request.remote)
        resp.force_close()
        return resp

    # --- request-head timeout ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, list | tuple) and peer else None
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _to_aiohttp(self, data: bytes) -> None:
        waiting = self._waiter is not None and not self._waiter.done() and not self._messages
        if waiting:
            self._head_started(data)
        super().data_received(data)
        if self._messages or (self._waiter is not None and self._waiter.done()):
            self._cancel_head_timer()
            self._head_bytes = 0

    def _head_started(self, data: bytes) -> None:
        if self._head_bytes == 0:
            self._first_line = data[:64]
        self._head_bytes += len(data)
        if self._head_timer is None:
            self._arm_head_timer()

    # --- the fast path -----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        shadow = self._shadow
        if shadow is None or self._force_close or self._close:
            self._to_aiohttp(data)
            return
        if self._fast_task is not None:  # answers go out in order: this waits for the one being served
            self._queued.append(data)
            self._queued_bytes += len(data)
            if self._queued_bytes > MAX_QUEUED_BYTES and not self._fast_paused and self.transport is not None:
                self._fast_paused = True
                self.transport.pause_reading()
            return
        free = shadow.current is None and self._aiohttp_idle()
        try:
            shadow.feed(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Not a request the fast path serves, nor any after it: aiohttp's parser decides.
            self._shadow = None
            self._give(data)
            return
        held = self._held_msg
        if held is not None:  # the rest of a request being read for the fast path
            if shadow.started or (held.head_done and held.route is None) or self._too_much_held(data):
                self._give(data)  # another request follows it, or it is not one to serve here
            elif held.complete:
                self._serve_fast(held)
            else:
                self._hold(held, data)
            return
        started = shadow.started
        msg = started[0] if len(started) == 1 else None
        if not free or msg is None or (msg.head_done and msg.route is None) or (
            not msg.complete and self._too_much_held(data)
        ):
            self._give(data)
        elif msg.complete:
            self._serve_fast(msg)
        else:
            self._hold(msg, data)

    def _aiohttp_idle(self) -> bool:
        """aiohttp waits for a request (or was never given one: its loop may not have started yet
        on a new connection) and its parser is between requests (it made a request of every one
        the shadow parser saw in the bytes it was given)."""
        waiter = self._waiter
        return ((self._request_count == 0 or (waiter is not None and not waiter.done())) and not self._messages
                and not self._upgraded and self._payload_parser is None and self._request_count == self._aio_messages)

    def _give(self, data: bytes) -> None:
        """This request (and the bytes held for it) to aiohttp."""
        chunks = [*self._held, data]
        held = self._held_msg
        self._aio_messages += len(self._shadow.started if self._shadow is not None else ()) + (held is not None)
        self._held, self._held_bytes, self._held_msg = [], 0, None
        for chunk in chunks:
            self._to_aiohttp(chunk)

    def _too_much_held(self, data: bytes) -> bool:
        """A request that does not come whole within ``MAX_HEAD_BYTES`` goes aiohttp's way: a head
        that long, or a body that slow (its reads would be held, and its body copied, for as long
        as the client likes; aiohttp reads a body only as its handler asks, and answers a request
        refused from its head (401, 404) without waiting for the body)."""
        return self._held_bytes + len(data) > MAX_HEAD_BYTES

    def _hold(self, msg: Message, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        self._held_msg = msg
        if msg.head_done:
            # The head timer runs on while the body is held: past it the request goes aiohttp's way.
            self._head_bytes = 0
            if self._head_timer is None:
                self._arm_head_timer()
        else:
            self._head_started(data)

    def _serve_fast(self, msg: Message) -> None:
        assert self._fast is not None and msg.route is not None
        self._held, self._held_bytes, self._held_msg = [], 0, None
        self._cancel_head_timer()
        self._head_bytes = 0
        self._request_in_progress = True  # a graceful shutdown waits for it, as for aiohttp's
        self._fast_task = self._loop.create_task(self._run_fast(self._fast, msg))

    async def _run_fast(self, fast: FastRoutes, msg: Message) -> None:
        assert msg.route is not None
        keep_alive = msg.keep_alive
        try:
            try:
                resp = await fast.serve(fast_request(fast, msg, self._remote), msg.route[0].handler,
                                        msg.route[0].name)
                out = render(resp, msg.version, keep_alive)
            except Exception:
                log.exception("fast path failed")
                keep_alive = False
                out = render(error_response(ShimError("An internal error occurred"), self._remote), msg.version,
                             False)
            if self.transport is not None:
                self.transport.write(out)
        finally:
            self._request_in_progress = False
            if self._handler_waiter is not None and not self._handler_waiter.done():
                self._handler_waiter.set_result(None)
            self._fast_task = None
        if not keep_alive or self._force_close or self._close:
            self.force_close()  # the transport sends what it was given before it closes
            return
        self._keepalive = True
        close_at = self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        handle = self._keepalive_handle
        if handle is None or (isinstance(handle, asyncio.TimerHandle) and handle.when() > close_at):
            if handle is not None:
                handle.cancel()
            self._keepalive_handle = self._loop.call_at(close_at, self._process_keepalive)
        if self._fast_paused:
            self._fast_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        queued, self._queued, self._queued_bytes = self._queued, [], 0
        for chunk in queued:
            self.data_received(chunk)

    def _process_keepalive(self) -> None:
        if self._fast_task is not None or self._held_msg is not None:  # a request is being read or served
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        held = self._held_msg
        if held is not None and held.head_done and self._fast_task is None:
            # A whole head, its body still unfinished: aiohttp takes the request from here (it
            # answers a request refused from its head at once, and reads a body as its handler asks).
            if self._shadow is not None:
                self._shadow.started = []  # the held request is counted once, as held
            self._give(b"")
            return
        waiting = self._waiter is not None and not self._waiter.done() and not self._messages
        if not waiting or self.transport is None:
            return
        if self._head_bytes:
            err = ShimError("The request head did not arrive in time", status=408, category="bad-request",
                            code="request-timeout")
            body = v1_json_bytes(error_body(err))
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Cache-Control: no-cache\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
        log.info("request head timed out", extra={"bytes": self._head_bytes})
        self.force_close()


class V1Server(web.Server):
    def __init__(self, *args: Any, header_timeout_s: float = 10.0, fast: FastRoutes | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.fast = fast

    def __call__(self) -> RequestHandler:
        return V1RequestHandler(self, loop=self._loop, header_timeout_s=self.header_timeout_s, fast=self.fast,
                                **self._kwargs)


class V1AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``V1RequestHandler``."""

    def __init__(self, app: web.Application, *, header_timeout_s: float = 10.0, fast: FastRoutes | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.fast = fast

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return V1Server(
            base.request_handler, request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation, loop=base._loop,
            header_timeout_s=self.header_timeout_s, fast=self.fast, **base._kwargs,
        )
