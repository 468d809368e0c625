"""The HTTP connection layer under the app: answers aiohttp's own parser errors (bad framing,
oversized heads, unknown methods, undecodable bodies) as v1 JSON errors, and closes connections
whose request head does not arrive within ``server.header_timeout_s``."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from shim.core import v1_json_bytes
from shim.errors import BodyTooLarge, ShimError, error_body

log = logging.getLogger("shim.http")
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
    """aiohttp's connection handler with v1 JSON errors and a request-head timeout."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._first_line = b""

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
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._waiter is not None and not self._waiter.done() and not self._messages
        if waiting:
            if self._head_bytes == 0:
                self._first_line = data[:64]
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm_head_timer()
        super().data_received(data)
        if self._messages or (self._waiter is not None and self._waiter.done()):
            self._cancel_head_timer()
            self._head_bytes = 0

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
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
    def __init__(self, *args: Any, header_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return V1RequestHandler(self, loop=self._loop, header_timeout_s=self.header_timeout_s, **self._kwargs)


class V1AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``V1RequestHandler``."""

    def __init__(self, app: web.Application, *, header_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return V1Server(
            base.request_handler, request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation, loop=base._loop,
            header_timeout_s=self.header_timeout_s, **base._kwargs,
        )
