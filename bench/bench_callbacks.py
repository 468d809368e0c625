"""CPU µs per callback attempt (``CallbackClient.attempt``) for each HTTP client (performance issue 9).

A signed v1 message callback (POST of its JSON body, or GET with it as the query string) to a local
receiver answering ``200`` with an empty body, keep-alive, 32 concurrent, on loopback. The receiver
is a raw asyncio server with a canned answer (never the limit), pinned to one core; each client
runs in its own process pinned to the other, and the figure is that process's CPU time (user +
system, every thread; system shown apart) over the attempts — not wall time. Each attempt goes through the whole
client: address policy, headers, signature, the request, the answer.

    python bench/bench_callbacks.py [--n 20000] [--rounds 5] [--only httptools,aiohttp] [--method POST,GET]
                                    [--baseline PATH]

``--baseline``: also measure the client of another checkout (e.g. ``/work/main``; one from before
``callbacks.http_client`` has only aiohttp). Rounds are interleaved (every client once per round),
so a noisy neighbour weighs on all of them alike; the median and the least of the rounds are shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from bench_client import new_loop, pinned, serve_canned  # noqa: E402  (bench/bench_client.py, beside this script)

CLIENTS = ["aiohttp", "httptools"]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {
    "eventType": "sms", "direction": "out", "messageId": "m-1589228074636lm4k2je7j7jklbn2",
    "messageUri": "https://shim.example.com/v1/users/u-bench/messages/m-1589228074636lm4k2je7j7jklbn2",
    "from": "+15553334444", "to": "+15554443333", "text": "Hello from the benchmark " + "x" * 40,
    "time": "2026-01-01T00:00:00.000Z", "state": "sent", "segmentCount": 1, "tag": "bench-tag-0123456789",
}


# -- the receiver: canned 200 for every request, keep-alive --------------------------------------
def serve(port: int) -> None:
    serve_canned(port, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


# -- one client process ---------------------------------------------------------------------------
async def run_client(name: str, url: str, method: str, n: int, concurrency: int) -> dict[str, Any]:
    from shim.core import DeliverySpec, Route
    from shim.outbox import AddressPolicy, CallbackClient

    kw: dict[str, Any] = {"concurrency": 200, "per_host": concurrency, "signing_secrets": [SECRET]}
    try:
        client = CallbackClient(AddressPolicy(["127.0.0.0/8"], []), http_client=name, **kw)
    except TypeError:  # a checkout from before callbacks.http_client: aiohttp only
        client, name = CallbackClient(AddressPolicy(["127.0.0.0/8"], []), **kw), "aiohttp (only)"
    await client.start()
    spec = DeliverySpec.to(Route(url=url, method=method, timeout_ms=10_000),
                           event_id="evt_m-1589228074636lm4k2je7j7jklbn2_sent", order_key="m", user_id="u", body=BODY)
    first = await client.attempt(spec, url)
    assert first.ok, first.error
    left = 0

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            result = await client.attempt(spec, url)
            assert result.ok, result.error

    left = n // 10  # warm-up: connections opened, caches filled
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    left = n
    t0, w0 = os.times(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    t1, w1 = os.times(), time.perf_counter()
    await client.close()
    user, system = (t1.user - t0.user) / n * 1e6, (t1.system - t0.system) / n * 1e6
    return {"client": name, "cpu_us": user + system, "sys_us": system, "rps": n / (w1 - w0)}


# -- the driver ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="attempts per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="measurements per client (interleaved)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated clients: " + ",".join(CLIENTS))
    ap.add_argument("--method", default="POST,GET", help="comma-separated: POST, GET")
    ap.add_argument("--baseline", help="another shim checkout to measure alongside")
    ap.add_argument("--root", default=str(HERE.parents[1]), help=argparse.SUPPRESS)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.client:
        sys.path.insert(0, str(Path(args.root).resolve()))
        result = new_loop().run_until_complete(
            run_client(args.client, args.url, args.method, args.n, args.concurrency))
        print(json.dumps(result))
        return

    names = [c for c in (args.only.split(",") if args.only else CLIENTS) if c]
    here = str(HERE.parents[1])
    runs_of = [(name, here) for name in names] + ([("aiohttp", args.baseline)] if args.baseline else [])
    me = [sys.executable, str(HERE)]
    print(f"v1 callback attempts, keep-alive, {args.concurrency} concurrent, {args.n} attempts, {args.rounds} rounds"
          f" interleaved; client CPU µs per attempt, median (least), lower is better")
    port = free_port()
    server = subprocess.Popen([*pinned(1), *me, "--serve", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}/callbacks/sms"
        for method in args.method.split(","):
            results: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in runs_of}
            for _ in range(args.rounds):
                for name, root in runs_of:
                    p = subprocess.run([*pinned(0), *me, "--client", name, "--url", url, "--method", method,
                                        "--n", str(args.n), "--concurrency", str(args.concurrency), "--root", root],
                                       capture_output=True, text=True)
                    if p.returncode != 0:
                        err = (p.stderr.strip().splitlines() or ["?"])[-1]
                        raise SystemExit(f"{method} {name} ({root}) failed: {err[:200]}")
                    results[(name, root)].append(json.loads(p.stdout.strip().splitlines()[-1]))
            for (_name, root), runs in results.items():
                label = runs[0]["client"] + ("" if root == here else f" @ {root}")
                cpu = [r["cpu_us"] for r in runs]
                system = statistics.median(r["sys_us"] for r in runs)
                rps = statistics.median(r["rps"] for r in runs)
                print(f"  {method:4} {label:28} {statistics.median(cpu):6.1f} ({min(cpu):5.1f}) µs CPU/attempt,"
                      f" system {system:4.1f}   ({rps:,.0f} attempts/s)", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
