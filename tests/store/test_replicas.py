"""Two shim replicas on one PostgreSQL behind a round-robin balancer: sends and callbacks spread
over both, one replica SIGKILLed mid-delivery, the survivor takes over its leased work."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shim.sandbox import CallbackTarget, build_sandbox_app
from shim.store.migrations import MIGRATIONS

from ..conftest import CB_PASS, CB_USER, USER, auth, free_port, wait_until
from ..pg import fresh_database
from ..process import ShimProcess, send_with_receipts

pytestmark = pytest.mark.usefixtures("postgres_server")


class Balancer:
    """Round-robin HTTP forwarder that skips a replica it cannot reach."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.turn = itertools.count()
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        start = next(self.turn)
        for i in range(len(self.targets)):
            target = self.targets[(start + i) % len(self.targets)]
            try:
                async with self.session.request(request.method, target + request.path_qs, data=body,
                                                headers=headers) as r:
                    data = await r.read()
                    out = {k: v for k, v in r.headers.items() if k.lower() in ("www-authenticate", "location")}
                    return web.Response(status=r.status, body=data, headers=out)
            except aiohttp.ClientConnectionError:
                continue
        return web.Response(status=502)


async def test_two_replicas_one_killed(tmp_path: Path) -> None:
    arrivals: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.2)
        arrivals.append(request.headers["webhook-id"])
        return web.Response()

    rapp = web.Application()
    rapp.router.add_post("/cb", receive)
    receiver = TestServer(rapp, host="127.0.0.1")
    await receiver.start_server()
    ports = [free_port(), free_port()]
    lb = Balancer([f"http://127.0.0.1:{p}" for p in ports])
    lb_app = web.Application()
    lb_app.router.add_route("*", "/{tail:.*}", lb.handle)
    lb_server = TestServer(lb_app, host="127.0.0.1")
    await lb_server.start_server()
    lb.session = aiohttp.ClientSession()
    lb_url = str(lb_server.make_url("")).rstrip("/")
    sandbox = build_sandbox_app({(USER["v2_username"], USER["v2_password"])},
                                CallbackTarget(f"{lb_url}/callbacks/v2", CB_USER, CB_PASS), delay_s=0.01)
    sandbox_server = TestServer(sandbox, host="127.0.0.1")
    await sandbox_server.start_server()
    replicas: list[ShimProcess] = []
    try:
        async with fresh_database() as db_url:
            for i, port in enumerate(ports):
                cfg = {
                    "server": {"host": "127.0.0.1", "port": port, "public_url": lb_url},
                    "store": {"url": db_url},
                    "upstream": {"mode": "bandwidth", "base_url": str(sandbox_server.make_url("")).rstrip("/")},
                    "callbacks": {"username": CB_USER, "password": CB_PASS, "lease_s": 25,
                                  "retry_schedule_s": [0.5, 1, 1, 2], "per_host_concurrency": 8,
                                  "allow_cidrs": ["127.0.0.0/8"]},
                    "users": [USER],
                }
                replicas.append(ShimProcess(cfg, tmp_path, f"replica{i}"))
            for r in replicas:
                await r.start()
            a, b = replicas
            ids = await send_with_receipts(lb_url, 40, "+1555400", f"{receiver.make_url('/cb')}",
                                           auth(USER["api_token"], USER["api_secret"]))
            async with aiohttp.ClientSession() as s:
                # Every message is readable through either replica.
                for replica in replicas:
                    async with s.get(f"{replica.url}/v1/users/u-test/messages/{ids[0]}",
                                     headers=auth(USER["api_token"], USER["api_secret"])) as resp:
                        assert resp.status == 200
            await wait_until(lambda: len(arrivals) >= 12, timeout=30)
            # While both replicas hold leases, no event was delivered twice.
            assert max(Counter(arrivals).values()) == 1
            conn = await asyncpg.connect(db_url)
            try:
                assert a.proc is not None
                held_by_a = await conn.fetchval(
                    "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND lease_owner LIKE $1",
                    f"%-{a.proc.pid}-%")
                owners = await conn.fetchval(
                    "SELECT COUNT(DISTINCT lease_owner) FROM outbox WHERE lease_owner IS NOT NULL")
            finally:
                await conn.close()
            assert held_by_a > 0 and owners >= 1  # the victim dies holding leased work
            a.kill()
            expected = {f"evt_{m}_{k}" for m in ids for k in ("sent", "receipt")}
            await wait_until(lambda: expected <= set(arrivals), timeout=60)
            duplicates = sum(n - 1 for n in Counter(arrivals).values())
            # At-least-once: only attempts the victim had in flight may repeat.
            assert duplicates <= held_by_a
            # The survivor serves on.
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{b.url}/v1/users/u-test/messages/{ids[-1]}",
                                 headers=auth(USER["api_token"], USER["api_secret"])) as resp:
                    stored: dict[str, Any] = await resp.json()
                    assert stored["deliveryState"] == "delivered"
    finally:
        for r in replicas:
            r.stop()
        await lb.session.close()
        await sandbox_server.close()
        await lb_server.close()
        await receiver.close()


async def test_replicas_starting_together_create_the_schema_once() -> None:
    from shim.config import parse_config
    from shim.gateway import Gateway
    from shim.store import PostgresStore

    async with fresh_database() as url:
        rules = Gateway(parse_config({"users": [USER]}))
        stores = [PostgresStore(url, rules, min_size=1, max_size=2) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            await asyncio.gather(*(s.ping() for s in stores))
            assert (await stores[0].outbox_counts())["pending"] == 0
            assert [a[0] for a in await stores[0].applied_migrations()] == [m.version for m in MIGRATIONS]
        finally:
            await asyncio.gather(*(s.close() for s in stores))
