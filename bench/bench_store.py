"""Store-level microbenchmark (no HTTP): the send path and the callback path, on each backend.

* send: ``record_intent`` then ``bind_send`` (what ``shim.facade`` does around v2's 202);
* ingest: one v2 status event per ``ingest`` call, on messages that exist (what a callback
  request carrying one event costs the store).

``--concurrency`` coroutines share the work. Printed per path: CPU µs per operation (this
process, every thread: the SQLite writer included; PostgreSQL's own CPU is shown apart when its
processes are readable) and operations per second (wall clock), the best of the rounds and their
median. Figures are printed, never asserted. PostgreSQL: ``--postgres URL`` (or ``SHIM_BENCH_POSTGRES_URL``), else a throwaway
cluster started with ``tests/pg.py``; ``--backend sqlite`` skips it.

    python bench/bench_store.py [--ops N] [--concurrency C] [--rounds R] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from shim.config import parse_config  # noqa: E402
from shim.core import MessageRecord, bind_v2, pending_id, v2_tag  # noqa: E402
from shim.gateway import Gateway  # noqa: E402
from shim.store import IncomingEvent, Store, open_store  # noqa: E402

APP = "aaaaaaaa-1111-2222-3333-444444444444"
USER = {"user_id": "u-bench", "api_token": "t-bench", "api_secret": "s-bench-secret", "account_id": "1",
        "application_id": APP, "v2_username": "v2", "v2_password": "v2pw"}
GW = Gateway(parse_config({"users": [USER]}))


def intent(run: str, i: int) -> MessageRecord:
    key = f"{run}-{i:09d}"
    return MessageRecord(
        id=pending_id(key), user_id="u-bench", direction="out", from_="+15551230001", to="+15550000001",
        text=f"hello {i}", time="2026-01-01T00:00:00.000Z", time_us=1_000_000 + i, send_key=key,
        callback_url="http://127.0.0.1:9/cb", receipt_requested="all",
    )


def delivered(mid: str, key: str) -> dict[str, Any]:
    message = {"id": mid, "owner": "+15551230001", "applicationId": APP, "time": "2026-01-01T00:00:00Z",
               "segmentCount": 1, "direction": "out", "to": ["+15550000001"], "from": "+15551230001",
               "text": "", "tag": v2_tag(key, None)}
    return {"type": "message-delivered", "time": "2026-01-01T00:00:01Z", "to": "+15550000001",
            "description": "ok", "message": message}


# The postmaster of the cluster this run started (its CPU and its children's is shown apart).
POSTMASTER: int | None = None


def pg_cpu_ticks() -> int | None:
    """User+system clock ticks of ``POSTMASTER`` and its children (None when not known)."""
    if POSTMASTER is None:
        return None
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(pid) == POSTMASTER or int(fields[1]) == POSTMASTER:
            total += int(fields[11]) + int(fields[12])
    return total


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> tuple[float, float, float | None]:
    """Run ``one(i)`` for i in range(n) on ``concurrency`` workers: (CPU µs/op, ops/s, PG CPU µs/op)."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await one(i)

    tick = os.sysconf("SC_CLK_TCK")
    pg0 = pg_cpu_ticks()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    pg1 = pg_cpu_ticks()
    pg = (pg1 - pg0) / tick * 1e6 / n if pg0 is not None and pg1 is not None else None
    return cpu * 1e6 / n, n / wall, pg


async def bench_send(store: Store, n: int, concurrency: int) -> tuple[float, float, float | None]:
    run = uuid.uuid4().hex[:8]

    async def one(i: int) -> None:
        rec = intent(run, i)
        await store.record_intent(rec)
        await store.bind_send(bind_v2(rec, f"v2-{run}-{i}", "2026-01-01T00:00:01.000Z", 1))

    return await timed(n, concurrency, one)


async def bench_ingest(store: Store, n: int, concurrency: int) -> tuple[float, float, float | None]:
    run = uuid.uuid4().hex[:8]
    # Messages that exist (sent through the store), and one event each, prepared beforehand.
    recs = [bind_v2(intent(run, i), f"v2-{run}-{i}") for i in range(n)]
    for start in range(0, n, 500):
        await asyncio.gather(*(store.insert_message(r) for r in recs[start:start + 500]))
    events: list[IncomingEvent] = [GW.prepare(delivered(r.id, r.send_key or "")) for r in recs]

    async def one(i: int) -> None:
        await store.ingest([events[i]])

    return await timed(n, concurrency, one)


async def run_backend(name: str, url: str, ops: int, concurrency: int, rounds: int) -> None:
    store = open_store(url, GW, pool_size=max(20, concurrency))
    await store.open()
    try:
        for path, fn in (("send", bench_send), ("ingest", bench_ingest)):
            await fn(store, min(ops, 500), concurrency)  # warm up
            results = [await fn(store, ops, concurrency) for _ in range(rounds)]
            # Best and median of the rounds: on a shared machine the best is the steadier figure.
            cpus, rates = [r[0] for r in results], [r[1] for r in results]
            pgs = [r[2] for r in results if r[2] is not None]
            pg = f"  server CPU {min(pgs):6.1f} µs/op" if pgs else ""
            print(f"{name:8} {path:6}  CPU {min(cpus):6.1f} µs/op (median {statistics.median(cpus):6.1f})"
                  f"  {max(rates):7.0f} ops/s (median {statistics.median(rates):7.0f}){pg}"
                  f"   (n={ops}, c={concurrency}, {rounds} rounds)", flush=True)
    finally:
        await store.close()


async def reset_pg(url: str) -> str:
    """A fresh database on the server at ``url``."""
    name = f"shim_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{url.rpartition('/')[0]}/{name}"


async def main() -> None:
    global POSTMASTER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--postgres", default=os.environ.get("SHIM_BENCH_POSTGRES_URL"))
    args = ap.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            await run_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.ops, args.concurrency, args.rounds)
    if args.backend in ("postgres", "both"):
        cluster = None
        base = args.postgres
        if not base:
            from tests.pg import Cluster, find_bindir

            bindir = find_bindir()
            if bindir is None:
                print("postgres: server binaries not found; skipped")
                return
            cluster = Cluster(bindir)
            base = cluster.start()
            POSTMASTER = int((cluster.data / "postmaster.pid").read_text().split()[0])
        try:
            await run_backend("postgres", await reset_pg(base), args.ops, args.concurrency, args.rounds)
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
