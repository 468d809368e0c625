"""A v1 send through shim in one process, no socket: the request's bytes parsed by the fast path's
shadow parser, served by the same handler and ``serve_v1`` wrapper (auth, validation, the intent
and bind in the real SQLite store, metrics, usage, access log), v2 answered by a canned 202 one
loop turn later, the 201 rendered to bytes. Printed: CPU µs a send (every thread of the process,
the SQLite checkpointer included), and the same with the store's two writes stubbed out (what
the store costs is the difference).

Why: end-to-end runs (``bench/run.py``) move by ±10 % with whatever else runs on a shared machine,
more than most single changes to the send path are worth; this moves by ~2 %, so a change of a
few µs shows. It leaves out what it cannot hold still: sockets, the kernel, the HTTP client.

    python bench/bench_inproc.py [--sends N] [--concurrency C] [--rounds R] [--src PATH ...]

``--src`` (repeatable): other checkouts' shim, each run in its own process, interleaved with this
one, round by round. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BODY = b'{"from":"+15551230001","to":"+15550000000","text":"bench"}'
RAW = (b"POST /v1/users/u-bench/messages HTTP/1.1\r\nHost: shim\r\nContent-Type: application/json\r\n"
       b"Authorization: Basic dC1iZW5jaDpzLWJlbmNoLXNlY3JldA==\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
CONFIG = {
    "server": {"public_url": "http://127.0.0.1:1"},
    "upstream": {"base_url": "http://127.0.0.1:2", "mode": "bandwidth"},
    "callbacks": {"username": "bw", "password": "cbpw-bench-secret"},
    "users": [{"user_id": "u-bench", "api_token": "t-bench", "api_secret": "s-bench-secret", "account_id": "1",
               "application_id": "app-bench", "v2_username": "v2", "v2_password": "v2pw"}],
}


class _Answer:
    status = 202

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body


class CannedV2:
    """v2's 202 for every send, one loop turn later (as an answer off the network would be)."""

    @asynccontextmanager
    async def request(self, method: str, url: str, *, headers: Any, body: Any = None,
                      timeouts: Any = None) -> AsyncIterator[_Answer]:
        await asyncio.sleep(0)
        mid = f"{time.time_ns() // 1_000_000:013d}{secrets.token_hex(8)}"
        yield _Answer(b'{"id":"%s","owner":"+15551230001","applicationId":"app-bench",'
                      b'"time":"2026-01-01T00:00:00.123Z","segmentCount":1,"direction":"out",'
                      b'"to":["+15550000000"],"from":"+15551230001","text":"bench"}' % mid.encode())

    async def close(self) -> None:
        return None


async def measure(sends: int, concurrency: int, stub_store: bool) -> float:
    """CPU µs a send, this process (the shim on ``sys.path``)."""
    from shim.config import parse_config
    from shim.keys import FAST_PATH, STORE
    from shim.web_app import build_app, make_runner
    from shim.web_fastpath import ShadowParser, fast_request, render

    with tempfile.TemporaryDirectory(prefix="shim-inproc-") as tmp:
        cfg = parse_config(CONFIG | {"store": {"url": f"sqlite:///{tmp}/s.db"}})
        app = build_app(cfg, transport=CannedV2(), start_workers=False)  # type: ignore[arg-type]
        runner = make_runner(app, cfg)
        await runner.setup()
        try:
            if stub_store:
                async def written(*args: Any, **kwargs: Any) -> int:
                    return 0
                for name in ("record_intent", "bind_send"):
                    setattr(app[STORE], name, written)
            fast = app[FAST_PATH]

            async def one() -> None:
                parser = ShadowParser(fast)
                parser.feed(RAW)
                msg = parser.started[0]
                assert msg.route is not None
                resp = await fast.serve(fast_request(fast, msg, "127.0.0.1"), msg.route[0].handler, msg.route[0].name)
                out = render(resp, msg.version, msg.keep_alive)
                if not out.startswith(b"HTTP/1.1 201"):
                    raise RuntimeError(out[:300].decode("latin-1"))

            async def worker(n: int) -> None:
                for _ in range(n):
                    await one()

            each = max(sends // concurrency, 1)
            await asyncio.gather(*(worker(max(each // 10, 1)) for _ in range(concurrency)))  # warm
            started = time.process_time()
            await asyncio.gather(*(worker(each) for _ in range(concurrency)))
            return (time.process_time() - started) / (each * concurrency) * 1e6
        finally:
            await runner.cleanup()


def child(src: str, sends: int, concurrency: int) -> tuple[float, float]:
    """One round in a fresh process on ``src``'s shim: (whole send, store stubbed)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--sends", str(sends), "--concurrency", str(concurrency)],
        cwd=src, env=os.environ | {"PYTHONPATH": src}, capture_output=True, text=True, check=True, timeout=600,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sends", type=int, default=8000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--src", action="append", default=[], metavar="PATH", help="another checkout's shim, compared")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        whole = asyncio.run(measure(args.sends, args.concurrency, stub_store=False))
        stubbed = asyncio.run(measure(args.sends, args.concurrency, stub_store=True))
        print(f"{whole:.2f} {stubbed:.2f}")
        return
    srcs = [str(HERE.parent), *(str(Path(s).resolve()) for s in args.src)]
    got: dict[str, list[tuple[float, float]]] = {s: [] for s in srcs}
    for _ in range(args.rounds):
        for src in srcs:
            got[src].append(child(src, args.sends, args.concurrency))
    print(f"in-process send ({args.sends} sends, {args.concurrency} at once, {args.rounds} rounds; CPU µs a send,"
          " median [min-max]):")
    for src, rounds in got.items():
        sends, stubs = [r[0] for r in rounds], [r[1] for r in rounds]
        store = [w - s for w, s in rounds]
        name = "this tree" if src == srcs[0] else src
        print(f"  {name:30s} whole {statistics.median(sends):6.1f} [{min(sends):.1f}-{max(sends):.1f}]"
              f"  store stubbed {statistics.median(stubs):6.1f}  the store {statistics.median(store):5.1f}")


if __name__ == "__main__":
    main()
