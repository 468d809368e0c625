"""Crash safety: ``kill -9`` while callbacks are provably in flight and pending, restart on the
same store, and every v1 callback is still delivered (at least once); SIGTERM finishes what is
in flight, releases every lease and exits 0.

The receiver holds (does not answer) every callback until the test lets go, so what is in flight
at the kill or the SIGTERM is known exactly: the per-host cap's worth of held requests, with the
rest of the outbox pending in the store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shim.sandbox import CallbackTarget, build_sandbox_app

from .conftest import CB_PASS, CB_USER, USER, auth, free_port, wait_until
from .process import ShimProcess, send_with_receipts

PER_HOST = 4  # attempts in flight at once (callbacks.per_host_concurrency)


class HoldingReceiver:
    """Records every callback's webhook-id and holds each one unanswered until the test lets go:
    ``answer`` (a 200 to a live shim: delivered) or ``drop_all`` (after a kill: nobody is there)."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.held: list[str] = []  # arrived while holding
        self.answered: list[str] = []  # answered 200 to a live shim
        self.holding = True
        self._gates: dict[str, asyncio.Event] = {}

    @property
    def outstanding(self) -> list[str]:
        return [i for i, gate in self._gates.items() if not gate.is_set()]

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        wid = request.headers["webhook-id"]
        self.arrived.append(wid)
        if self.holding:
            self.held.append(wid)
            gate = self._gates[wid] = asyncio.Event()
            await gate.wait()
        else:
            self.answered.append(wid)
        return web.Response()

    def answer(self, *ids: str) -> None:
        for wid in ids:
            self.answered.append(wid)
            self._gates[wid].set()

    def answer_all(self) -> None:
        self.holding = False
        self.answer(*self.outstanding)

    def drop_all(self) -> None:
        self.holding = False
        for gate in self._gates.values():
            gate.set()


def outbox(db: Path) -> list[tuple[Any, ...]]:
    """(event_id, status, attempts, lease_owner) of every outbox row, read from the shim's SQLite file."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT event_id, status, attempts, lease_owner FROM outbox ORDER BY id").fetchall()


def states(db: Path) -> dict[str, int]:
    """Outbox rows by state: delivered, leased (claimed by a live or dead shim), pending (unclaimed)."""
    out = {"delivered": 0, "leased": 0, "pending": 0, "dead": 0}
    for _, status, _, owner in outbox(db):
        out["leased" if status == "pending" and owner is not None else status] += 1
    return out


async def hold_pipeline(receiver: HoldingReceiver, db: Path, rows: int) -> list[str]:
    """Wait until all ``rows`` callbacks are in the outbox, PER_HOST attempts are held open at the
    receiver, and more rows are leased inside shim waiting for a slot. How many shim claims at
    once depends on how the events trickled in, so held attempts are answered one at a time until
    a freed slot makes shim claim ahead. Returns the webhook-ids answered (delivered)."""
    await wait_until(lambda: len(outbox(db)) == rows and len(receiver.outstanding) == PER_HOST, timeout=20)
    answered: list[str] = []
    for _ in range(3):
        if states(db)["leased"] > PER_HOST:
            return answered
        answered.append(receiver.outstanding[0])
        receiver.answer(answered[-1])
        await wait_until(lambda: states(db)["delivered"] == len(answered) and len(receiver.outstanding) == PER_HOST,
                         timeout=20)
    raise AssertionError(f"shim never claimed ahead of its free slots: {states(db)}")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    receiver = HoldingReceiver()
    rapp = web.Application()
    rapp.router.add_post("/{tail:.*}", receiver.handle)
    rserver = TestServer(rapp, host="127.0.0.1")
    await rserver.start_server()
    port = free_port()
    sandbox = build_sandbox_app(
        {(USER["v2_username"], USER["v2_password"])},
        CallbackTarget(f"http://127.0.0.1:{port}/callbacks/v2", CB_USER, CB_PASS), delay_s=0.01)
    sserver = TestServer(sandbox, host="127.0.0.1")
    await sserver.start_server()
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"url": f"sqlite:///{tmp_path}/crash.db"},
        "upstream": {"mode": "bandwidth", "base_url": str(sserver.make_url("")).rstrip("/")},
        "callbacks": {"username": CB_USER, "password": CB_PASS, "retry_schedule_s": [0.5, 0.5, 1, 1, 2],
                      "per_host_concurrency": PER_HOST, "allow_cidrs": ["127.0.0.0/8"]},
        "users": [USER],
    }
    try:
        yield {"receiver": receiver, "receiver_url": str(rserver.make_url("")).rstrip("/"),
               "config": config, "tmp": tmp_path, "db": tmp_path / "crash.db"}
    finally:
        receiver.drop_all()
        await sserver.close()
        await rserver.close()


async def test_kill_9_loses_no_callback(world: dict[str, Any]) -> None:
    shim = ShimProcess(world["config"], world["tmp"])
    receiver: HoldingReceiver = world["receiver"]
    db: Path = world["db"]
    await shim.start()
    try:
        ids = await send_with_receipts(shim.url, 20, "+1555200", f"{world['receiver_url']}/cb",
                                       auth(USER["api_token"], USER["api_secret"]))
        expected = {f"evt_{m}_{k}" for m in ids for k in ("sent", "receipt")}
        delivered = await hold_pipeline(receiver, db, len(expected))
        shim.kill()
        # At the kill: exactly PER_HOST attempts in flight, more rows leased but not started, the
        # rest pending (none of them attempted yet).
        in_flight = receiver.outstanding
        assert len(in_flight) == PER_HOST
        at_kill = states(db)
        assert at_kill["delivered"] == len(delivered) and at_kill["leased"] > PER_HOST and at_kill["pending"] > 0
        assert sum(at_kill.values()) == len(expected) and {r[0] for r in outbox(db)} == expected
        assert receiver.answered == delivered and receiver.arrived == delivered + list(in_flight)
        receiver.drop_all()  # the held requests now answer a dead process

        await shim.start()
        await wait_until(lambda: expected <= set(receiver.answered), timeout=20)
        await wait_until(lambda: states(db)["delivered"] == len(expected), timeout=20)
        # At least once: the attempts cut by the kill were made again; nothing else was repeated.
        repeated = {i for i in receiver.arrived if receiver.arrived.count(i) > 1}
        assert repeated == set(in_flight)
        assert all(receiver.arrived.count(i) == 2 for i in in_flight)
        # Order per message held across the crash: every attempt of "sent" came before its receipt.
        for m in ids:
            last_sent = max(n for n, i in enumerate(receiver.arrived) if i == f"evt_{m}_sent")
            assert last_sent < receiver.arrived.index(f"evt_{m}_receipt")
    finally:
        shim.stop()


async def test_sigterm_is_graceful_and_releases_leases(world: dict[str, Any]) -> None:
    shim = ShimProcess(world["config"], world["tmp"], "graceful")
    receiver: HoldingReceiver = world["receiver"]
    db: Path = world["db"]
    await shim.start()
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(10):
                body = {"from": "+15551230001", "to": f"+1555300{i:04d}", "text": "g",
                        "callbackUrl": f"{world['receiver_url']}/cb"}
                async with s.post(f"{shim.url}/v1/users/u-test/messages", data=json.dumps(body),
                                  headers=auth(USER["api_token"], USER["api_secret"])) as r:
                    assert r.status == 201
        # PER_HOST attempts held open at the receiver, more rows leased and waiting inside shim.
        delivered = await hold_pipeline(receiver, db, 10)
        in_flight = set(receiver.outstanding)
        exit_code = asyncio.create_task(asyncio.to_thread(shim.terminate))

        async def stopped_listening() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{shim.url}/healthz") as r:
                    await r.read()
                return False
            except aiohttp.ClientConnectionError:
                return True

        # Shutting down (no longer accepting) with the held attempts still open: let them finish.
        await wait_until(stopped_listening, timeout=10)
        assert not exit_code.done()
        receiver.answer_all()
        assert await exit_code == 0
        # Graceful: the in-flight attempts completed and were recorded, nothing new was started,
        # and the rows that were waiting inside shim are unleased for the next run.
        assert len(receiver.arrived) == len(delivered) + PER_HOST
        done = len(delivered) + PER_HOST
        assert states(db) == {"delivered": done, "leased": 0, "pending": 10 - done, "dead": 0}
        assert in_flight <= {r[0] for r in outbox(db) if r[1] == "delivered"}

        await shim.start()
        await wait_until(lambda: states(db)["delivered"] == 10, timeout=20)
        assert len(receiver.arrived) == len(set(receiver.arrived)) == 10  # each exactly once: nothing cut
    finally:
        shim.stop()


async def test_kill_9_after_v2_accepted_before_the_record(world: dict[str, Any]) -> None:
    """The v2 stand-in receives the send and holds its 202 until shim has been SIGKILLed, so shim
    dies knowing nothing of the v2 id. After a restart the message is readable the moment its
    first event arrives (the event carries the send's correlation key in the tag), and the app gets
    every callback it is owed."""
    received: list[dict[str, Any]] = []
    arrived, release = asyncio.Event(), asyncio.Event()
    v2_id = "14762070468292kw2fuqty55yp2b2"

    async def accept_late(request: web.Request) -> web.Response:
        body = await request.json()
        received.append(body)
        arrived.set()
        await release.wait()
        return web.json_response({"id": v2_id, "owner": body["from"], "applicationId": body["applicationId"],
                                  "time": "2026-01-01T00:00:00.000Z", "segmentCount": 1, "direction": "out",
                                  "to": body["to"], "from": body["from"], "text": body["text"],
                                  "tag": body["tag"]}, status=202)

    v2 = web.Application()
    v2.router.add_post("/users/{account}/messages", accept_late)
    v2_server = TestServer(v2, host="127.0.0.1")
    await v2_server.start_server()
    config = world["config"] | {"upstream": {"mode": "bandwidth", "base_url": str(v2_server.make_url("")).rstrip("/")}}
    receiver: HoldingReceiver = world["receiver"]
    receiver.holding = False
    shim = ShimProcess(config, world["tmp"], "accepted")
    await shim.start()
    headers = auth(USER["api_token"], USER["api_secret"])
    try:
        async with aiohttp.ClientSession() as s:
            body = {"from": "+15551230001", "to": "+15551239999", "text": "survives", "tag": "order-9",
                    "receiptRequested": "all", "callbackUrl": f"{world['receiver_url']}/cb"}
            send = asyncio.create_task(s.post(f"{shim.url}/v1/users/u-test/messages", data=json.dumps(body),
                                              headers=headers))
            await asyncio.wait_for(arrived.wait(), 10)
            shim.kill()  # v2 has the send; shim never hears its answer
            release.set()
            with pytest.raises(aiohttp.ClientError):
                await send

            await shim.start()
            url = f"{shim.url}/v1/users/u-test/messages/{v2_id}"
            async with s.get(url, headers=headers) as r:
                assert r.status == 404  # not bound yet: shim never learnt the id
            (sent,) = received
            event = {"type": "message-delivered", "time": "2026-01-01T00:00:01.000Z", "to": "+15551239999",
                     "description": "ok", "message": {
                         "id": v2_id, "owner": "+15551230001", "applicationId": USER["application_id"],
                         "time": "2026-01-01T00:00:00.000Z", "segmentCount": 1, "direction": "out",
                         "to": ["+15551239999"], "from": "+15551230001", "text": "", "tag": sent["tag"]}}
            async with s.post(f"{shim.url}/callbacks/v2", json=[event], headers=auth(CB_USER, CB_PASS)) as r:
                assert r.status == 200
            async with s.get(url, headers=headers) as r:
                assert r.status == 200
                got = await r.json()
            assert (got["id"], got["text"], got["tag"], got["state"], got["deliveryState"]) == (
                v2_id, "survives", "order-9", "sent", "delivered")
            await wait_until(lambda: {f"evt_{v2_id}_sent", f"evt_{v2_id}_receipt"} <= set(receiver.answered),
                             timeout=20)
    finally:
        shim.stop()
        release.set()
        await v2_server.close()
