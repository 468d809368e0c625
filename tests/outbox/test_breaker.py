"""The per-host circuit breaker end to end: a live shim, a receiver that fails then recovers, and a
healthy receiver on another host that keeps being delivered to meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shim.keys import DELIVERY, STORE

from ..conftest import Harness, HarnessFactory, Receiver, auth, outbox_is, sql_rows, wait_until

ADMIN = auth("admin", "adm1n-pass-long")


@pytest.fixture
async def other_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    receiver.url = str(server.make_url("")).rstrip("/")
    yield receiver
    await server.close()


async def host_view(h: Harness, host: str) -> dict[str, Any] | None:
    resp = await h.session.get(f"{h.url}/admin/hosts", headers=ADMIN)
    assert resp.status == 200
    return next((x for x in await resp.json() if x["host"] == host), None)


async def metric(h: Harness, line_start: str) -> float | None:
    text = await (await h.session.get(f"{h.url}/metrics")).text()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_breaker_opens_holds_back_probes_and_closes(make_harness: HarnessFactory, other_receiver: Receiver) -> None:
    h = await make_harness(
        admin={"username": "admin", "password": "adm1n-pass-long"},
        callbacks__retry_schedule_s=[0.2] * 20,
        callbacks__breaker={"failure_threshold": 3, "open_s": 2},
    )
    store, engine = h.app[STORE], h.app[DELIVERY]
    down = h.receiver.url.removeprefix("http://")
    up = other_receiver.url.removeprefix("http://")
    h.receiver.script["/down"] = [500]

    for _ in range(5):
        await h.send(callbackUrl=f"{h.receiver.url}/down")

    async def is_open() -> bool:
        view = await host_view(h, down)
        return view is not None and view["state"] == "open"

    await wait_until(is_open)
    view = await host_view(h, down)
    assert view is not None
    assert view["failures"] >= 3 and view["successes"] == 0 and view["successRate"] == 0.0
    assert view["consecutiveFailures"] >= 3 and view["openS"] == 2
    assert view["openedAt"] < view["nextProbeAt"] and view["latencyMs"]["samples"] >= 3
    assert await metric(h, f'shim_callback_host_state{{host="{down}"}}') == 2.0
    assert await metric(h, 'shim_callback_breaker_transitions_total{to="open"}') == 1.0
    seen_at_open = len(h.receiver.at("/down"))

    # While it is open: the healthy host is delivered to; the failing one hears nothing.
    for _ in range(3):
        await h.send(callbackUrl=f"{other_receiver.url}/ok")
    await wait_until(lambda: len(other_receiver.at("/ok")) >= 3)
    still = await host_view(h, down)
    assert still is not None and still["state"] == "open" and still["openedAt"] == view["openedAt"]
    assert len(h.receiver.at("/down")) == seen_at_open
    assert engine.health.state(up) == "closed"
    assert await metric(h, f'shim_callback_host_state{{host="{up}"}}') == 0.0
    # Held back, not failed: pending, nothing dead, no attempt counted while open.
    attempts_at_open = [r[0] for r in await sql_rows(store, "SELECT attempts FROM outbox WHERE host = ?", down)]
    assert (await store.outbox_counts())["dead"] == 0

    # The receiver recovers; after open_s one probe goes through, closes the breaker and the
    # backlog is delivered.
    h.receiver.script["/down"] = [200]

    async def closed() -> bool:
        v = await host_view(h, down)
        return v is not None and v["state"] == "closed"

    await wait_until(closed, timeout=15)
    await wait_until(outbox_is(store, pending=0, dead=0), timeout=15)
    assert await metric(h, f'shim_callback_host_state{{host="{down}"}}') == 0.0
    assert await metric(h, 'shim_callback_breaker_transitions_total{to="half-open"}') == 1.0
    assert await metric(h, 'shim_callback_breaker_transitions_total{to="closed"}') == 1.0
    # Each held-back delivery was attempted once more (the probe, then the rest): none twice.
    rows = await sql_rows(store, "SELECT attempts FROM outbox WHERE host = ?", down)
    assert sorted(r[0] for r in rows) == sorted(a + 1 for a in attempts_at_open)
    assert len(h.receiver.at("/down")) == seen_at_open + len(rows)
