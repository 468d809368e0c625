"""``kill -9`` of ``shim reconcile`` in the middle of a run: the next run resumes from the cursor
the killed one recorded, every lost message ends final, the outbox holds each owed callback once,
and the receiver gets every one of them (at least once, marked reconciled)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from shim.keys import SANDBOX
from shim.sandbox import CallbackTarget, build_sandbox_app

from ..conftest import CB_PASS, CB_USER, USER, auth, free_port, wait_until
from ..process import ShimProcess, send_with_receipts

N, BATCH = 30, 5


def query(db: Path, sql: str) -> list[Any]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def final_count(db: Path) -> int:
    return int(query(db, "SELECT COUNT(*) FROM messages WHERE delivery_state IS NOT NULL OR state = 'error'")[0][0])


async def test_kill_9_in_the_middle_of_a_reconcile_run(tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append({"id": request.headers["webhook-id"], "reconciled": request.headers.get("X-Shim-Reconciled")})
        return web.Response()

    rapp = web.Application()
    rapp.router.add_post("/{tail:.*}", handle)
    rserver = TestServer(rapp, host="127.0.0.1")
    await rserver.start_server()
    port = free_port()
    sandbox = build_sandbox_app({(USER["v2_username"], USER["v2_password"])},
                                CallbackTarget(f"http://127.0.0.1:{port}/callbacks/v2", CB_USER, CB_PASS), delay_s=0.01)
    sserver = TestServer(sandbox, host="127.0.0.1")
    await sserver.start_server()
    state = sandbox[SANDBOX]
    db = tmp_path / "rc.db"
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"url": f"sqlite:///{db}"},
        "upstream": {"mode": "bandwidth", "base_url": str(sserver.make_url("")).rstrip("/")},
        "callbacks": {"username": CB_USER, "password": CB_PASS, "retry_schedule_s": [0.5, 0.5, 1],
                      "allow_cidrs": ["127.0.0.0/8"]},
        "reconcile": {"enabled": False, "after_s": 0.01, "batch_size": BATCH, "lease_s": 5},
        "users": [USER],
    }
    shim = ShimProcess(config, tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        state.lose_to |= {f"+1555123{i:04d}" for i in range(N)}
        await shim.start()
        ids = await send_with_receipts(shim.url, N, "+1555123", str(rserver.make_url('/cb')),
                                       auth(USER["api_token"], USER["api_secret"]))
        await wait_until(lambda: state.callbacks_lost == N, timeout=20)
        assert shim.terminate() == 0

        def reconcile() -> subprocess.Popen[bytes]:
            p = subprocess.Popen([sys.executable, "-m", "shim", "reconcile", "--config", str(shim.path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            procs.append(p)
            return p

        # A slow search: the run is provably in the middle (a batch done, more to go) at the kill.
        state.search_delay_s = 0.3
        first = reconcile()
        await wait_until(lambda: BATCH <= final_count(db) < N - BATCH
                         and query(db, "SELECT cursor_seq FROM reconcile_lease")[0][0] > 0, timeout=30, interval=0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.stdout is not None
        first.stdout.close()
        done_at_kill = final_count(db)
        [(owner, cursor)] = query(db, "SELECT owner, cursor_seq FROM reconcile_lease")
        assert owner is not None and cursor > 0 and done_at_kill < N  # a dead holder, a recorded cursor
        state.search_delay_s = 0

        # The dead run's lease must run out first (lease_s: 5): until then a run is skipped.
        report: dict[str, Any] = {}
        for _ in range(100):
            p = reconcile()
            out, _ = await asyncio.to_thread(p.communicate, None, 30)
            report = json.loads(out)
            if not report["skipped"]:
                break
            await asyncio.sleep(0.2)
        assert report["completed"] and report["errors"] == 0
        assert report["looked_up"] <= N - cursor + BATCH  # resumed from the cursor, not from the start
        assert report["balance"] == {"final": N, "unresolvable": 0, "open": 0, "sent": N}
        assert query(db, "SELECT owner, cursor_seq FROM reconcile_lease") == [(None, 0)]

        rows = query(db, "SELECT event_id, spec FROM outbox")
        expected = {f"evt_{mid}_{kind}" for mid in ids for kind in ("sent", "receipt")}
        assert sorted(r[0] for r in rows) == sorted(expected)  # each owed callback once
        assert all(json.loads(r[1])["reconciled"] for r in rows)

        await shim.start()  # serve delivers what the runs enqueued
        await wait_until(lambda: {g["id"] for g in got} == expected, timeout=30)
        assert all(g["reconciled"] == "true" for g in got)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()
        shim.stop()
        await sserver.close()
        await rserver.close()
