"""One callback attempt against real receivers on loopback (``CallbackClient``)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from shim.core import DeliverySpec, Route
from shim.outbox import AddressPolicy, CallbackClient
from shim.outbox.client_callbacks import MAX_RESPONSE_BYTES

from ..conftest import free_port

CHUNK = 1024 * 1024
HUGE = 400 * CHUNK


async def test_a_huge_response_body_is_not_read() -> None:
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
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    client = CallbackClient(AddressPolicy(["127.0.0.0/8"], []), concurrency=4, per_host=4)
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
