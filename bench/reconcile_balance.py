"""A bench-sized reconciliation run, printed as a balance: N v1 sends through shim and the
sandbox, a share of them with every callback "lost" by the sandbox (some of those failing), one
reconcile run, every owed callback delivered to a receiver; then sent = final + unresolvable.

    python bench/reconcile_balance.py [--n 2000] [--lost 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from shim.config import parse_config
from shim.keys import RECONCILER, SANDBOX, STORE
from shim.sandbox import CallbackTarget, build_sandbox_app
from shim.web_app import build_app, make_runner

USER = {"user_id": "u-bench", "api_token": "t-bench", "api_secret": "s-bench-secret", "account_id": "1",
        "application_id": "app-bench", "v2_username": "v2", "v2_password": "v2pw-bench"}
AUTH = {"Authorization": "Basic " + base64.b64encode(b"t-bench:s-bench-secret").decode(),
        "Content-Type": "application/json"}


async def main(n: int, lost_share: float) -> None:
    received: dict[str, int] = {"reconciled": 0, "plain": 0}

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        received["reconciled" if request.headers.get("X-Shim-Reconciled") == "true" else "plain"] += 1
        return web.Response()

    rapp = web.Application()
    rapp.router.add_post("/{tail:.*}", receive)
    rserver = TestServer(rapp, host="127.0.0.1")
    await rserver.start_server()
    tmp = tempfile.mkdtemp()
    cfg = parse_config({
        "server": {"host": "127.0.0.1", "port": 0},
        "store": {"url": f"sqlite:///{tmp}/bench.db"},
        "upstream": {"mode": "sandbox"},
        "callbacks": {"username": "bw", "password": "cbpw-bench-secret", "allow_cidrs": ["127.0.0.0/8"]},
        "reconcile": {"enabled": False, "after_s": 0.01, "batch_size": 200},
        "users": [USER],
    })
    sandbox = build_sandbox_app({("v2", "v2pw-bench")}, None, delay_s=0.01)
    sserver = TestServer(sandbox, host="127.0.0.1")
    await sserver.start_server()
    cfg.upstream.base_url = str(sserver.make_url("")).rstrip("/")
    app = build_app(cfg)
    server = TestServer(app, host="127.0.0.1")

    async def runner(**kw: Any) -> web.AppRunner:
        return make_runner(app, cfg, **kw)

    server._make_runner = runner  # type: ignore[method-assign]
    await server.start_server()
    shim_url = str(server.make_url("")).rstrip("/")
    sandbox[SANDBOX].target = CallbackTarget(f"{shim_url}{cfg.callbacks.path}", "bw", "cbpw-bench-secret")
    lost_every = max(1, round(1 / lost_share)) if lost_share > 0 else 0
    lost_numbers: set[str] = set()
    bodies = []
    for i in range(n):
        lost = bool(lost_every) and i % lost_every == 0
        if i % 7 == 0:  # a failing message: 4720 when its callbacks are lost, 4750 when not
            to = "+15550004720" if lost else "+15550004750"
        else:
            to = f"+1919{i:07d}"
        if lost:
            lost_numbers.add(to)
        bodies.append({"from": "+15551230001", "to": to, "text": f"m{i}", "receiptRequested": "all",
                       "callbackUrl": f"{rserver.make_url('/cb')}"})
    sandbox[SANDBOX].lose_to |= lost_numbers
    started = time.perf_counter()
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as s:
        async def send(body: dict[str, Any]) -> None:
            async with sem, s.post(f"{shim_url}/v1/users/u-bench/messages", data=json.dumps(body), headers=AUTH) as r:
                assert r.status == 201, await r.text()
        await asyncio.gather(*(send(b) for b in bodies))
    store = app[STORE]
    for _ in range(6000):  # every event posted or lost
        if sandbox[SANDBOX].callbacks_lost + sandbox[SANDBOX].callbacks_posted >= n:
            break
        await asyncio.sleep(0.05)
    before = await store.outbound_balance()
    t0 = time.perf_counter()
    report = await app[RECONCILER].run()
    reconcile_s = time.perf_counter() - t0
    after = await store.outbound_balance()
    for _ in range(6000):  # every owed callback delivered
        if not (await store.outbox_counts())["pending"]:
            break
        await asyncio.sleep(0.05)
    counts = await store.outbox_counts()
    print(json.dumps({
        "sent": n, "callbacks_lost_by_sandbox": sandbox[SANDBOX].callbacks_lost,
        "before_reconcile": before, "reconcile_run": report.as_dict(), "reconcile_seconds": round(reconcile_s, 2),
        "searches": sandbox[SANDBOX].searches, "after_reconcile": after,
        "balance_holds": after["sent"] == n and after["final"] + after["unresolvable"] == n,
        "outbox": counts, "receiver": received, "total_seconds": round(time.perf_counter() - started, 1),
    }, indent=2))
    await server.close()
    await sserver.close()
    await rserver.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--lost", type=float, default=0.25)
    a = p.parse_args()
    asyncio.run(main(a.n, a.lost))
