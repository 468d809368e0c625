"""CPU µs per v2 send for each HTTP client candidate (performance issue 9).

A POST of a ~250-byte JSON body answered by a ~300-byte JSON body, keep-alive, 32 concurrent, on
loopback. The server is a raw asyncio server with a canned answer (so it is never the limit),
pinned to one core; each client runs in its own process pinned to the other, and the figure is
that process's CPU time (user + system, every thread) over the requests — not wall time.

    python bench/bench_client.py [--n 20000] [--rounds 3] [--only h1,aiohttp] [--no-tls]

Candidates: ``aiohttp`` (shim's ``AiohttpTransport``), ``aiohttp-tuned`` (a bare ClientSession with
no cookie jar, no auto headers, prebuilt URL and headers), ``h1`` (shim's ``H1Transport``), and,
when installed, the libraries ``httpx``, ``aiosonic``, ``niquests``, ``curl_cffi``, ``pyreqwest``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BODY = json.dumps({
    "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2", "to": ["+15554443333"], "from": "+15553334444",
    "text": "Hello from the benchmark " + "x" * 60, "tag": "bench-tag-0123456789", "priority": "default",
}, separators=(",", ":")).encode()
ANSWER = json.dumps({
    "id": "1589228074636lm4k2je7j7jklbn2", "owner": "+15553334444", "applicationId": "93de2206-9669-4e07-948d-329f4b722ee2",
    "time": "2020-05-11T20:14:34.636Z", "segmentCount": 1, "direction": "out", "to": ["+15554443333"],
    "from": "+15553334444", "text": "Hello from the benchmark " + "x" * 40, "tag": "bench-tag-0123456789",
}, separators=(",", ":")).encode()
HEADERS = {"Authorization": "Basic dXNlcm5hbWU6cGFzc3dvcmQxMjM0NTY3OA==", "Content-Type": "application/json",
           "X-Request-Id": "0123456789abcdef0123456789abcdef"}
LIBRARIES = ["httpx", "aiosonic", "niquests", "curl_cffi", "pyreqwest"]
CANDIDATES = ["aiohttp", "aiohttp-tuned", "h1", *LIBRARIES]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # shim serves on uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# -- the server: canned 202 for every request, keep-alive ---------------------------------------
def serve_canned(port: int, response: bytes, ctx: ssl.SSLContext | None = None) -> None:
    """A raw asyncio server answering every request with ``response``, keep-alive (never the limit)."""
    import httptools

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(response)

    loop = new_loop()
    server = loop.run_until_complete(loop.create_server(Proto, "127.0.0.1", port, ssl=ctx, backlog=1024))
    print("ready", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


def serve(port: int, cert: str | None, key: str | None) -> None:
    ctx = None
    if cert and key:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
    serve_canned(port, b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                 % (len(ANSWER), ANSWER), ctx)


# -- the clients: each returns (send one request, close) -----------------------------------------
Send = Callable[[], Awaitable[bytes]]


async def make_client(name: str, url: str, cafile: str | None) -> tuple[Send, Callable[[], Awaitable[None]]]:
    if name in ("aiohttp", "h1"):
        from shim.upstream import AiohttpTransport
        from shim.upstream._h1 import H1Transport
        t = AiohttpTransport(100, 10) if name == "aiohttp" else H1Transport(100, 10)

        async def send() -> bytes:
            async with t.request("POST", url, headers=HEADERS, body=BODY) as resp:
                return await resp.read()
        return send, t.close
    if name == "aiohttp-tuned":
        import aiohttp
        from multidict import CIMultiDict
        from yarl import URL
        ctx = ssl.create_default_context() if cafile else None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, ssl=ctx if ctx else True), cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=10), auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"), raise_for_status=False)
        u, h = URL(url, encoded=True), CIMultiDict(HEADERS)

        async def send() -> bytes:
            async with session.request("POST", u, headers=h, data=BODY) as resp:
                return await resp.read()
        return send, session.close
    mod: Any = importlib.import_module(name)
    if name == "httpx":
        client = mod.AsyncClient(limits=mod.Limits(max_connections=100), verify=ssl.create_default_context())

        async def send() -> bytes:
            r = await client.post(url, content=BODY, headers=HEADERS)
            return bytes(r.content)
        return send, client.aclose
    if name == "aiosonic":
        client = mod.HTTPClient(mod.TCPConnector(pool_configs={":default": {"size": 100}}))
        ctx = ssl.create_default_context()

        async def send() -> bytes:
            r = await client.post(url, data=BODY, headers=HEADERS, ssl=ctx if cafile else None)
            return bytes(await r.content())

        async def close() -> None:
            await client.connector.cleanup()
        return send, close
    if name == "niquests":
        lib_session: Any = mod.AsyncSession(pool_maxsize=100, disable_http2=True, disable_http3=True)

        async def send() -> bytes:
            r = await lib_session.post(url, data=BODY, headers=HEADERS, verify=cafile or True)
            return bytes(r.content)
        return send, lib_session.close
    if name == "curl_cffi":
        lib_session = importlib.import_module("curl_cffi.requests").AsyncSession(max_clients=32)

        async def send() -> bytes:
            r = await lib_session.post(url, data=BODY, headers=HEADERS, verify=cafile or True)
            return bytes(r.content)
        return send, lib_session.close
    if name == "pyreqwest":
        builder = importlib.import_module("pyreqwest.client").ClientBuilder().http1_only()
        if cafile:
            builder = builder.add_root_certificate_pem(Path(cafile).read_bytes())  # noqa: ASYNC240
        client = builder.build()

        async def send() -> bytes:
            r = await client.post(url).headers(HEADERS).body_bytes(BODY).build().send()
            return bytes(await r.bytes())
        return send, client.close
    raise SystemExit(f"unknown candidate {name}")


def cpu_s() -> float:
    return time.process_time()  # this process, every thread: user + system


async def run_client(name: str, url: str, n: int, concurrency: int, cafile: str | None) -> dict[str, float]:
    send, close = await make_client(name, url, cafile)
    assert (await send()) == ANSWER, "the answer does not match"
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send()

    left = n // 10  # warm-up: connections opened, caches filled
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    left = n
    c0, w0 = cpu_s(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    c1, w1 = cpu_s(), time.perf_counter()
    await close()
    return {"cpu_us": (c1 - c0) / n * 1e6, "rps": n / (w1 - w0)}


# -- the driver ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_cert(tmp: Path) -> tuple[str, str, str]:
    """A CA and a 127.0.0.1 certificate: trustme if installed, else openssl."""
    ca_pem, cert, key = str(tmp / "ca.pem"), str(tmp / "cert.pem"), str(tmp / "key.pem")
    try:
        trustme: Any = importlib.import_module("trustme")
        ca = trustme.CA()
        ca.cert_pem.write_to_path(ca_pem)
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(key)
        leaf.cert_chain_pems[0].write_to_path(cert)
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        shutil.copy(cert, ca_pem)
    return ca_pem, cert, key


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="requests per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per candidate (the median is shown)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated candidates")
    ap.add_argument("--no-tls", action="store_true")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--cafile", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.cert, args.key)
        return
    if args.client:
        result = new_loop().run_until_complete(run_client(args.client, args.url, args.n, args.concurrency, args.cafile))
        print(json.dumps(result))
        return

    names = [c for c in (args.only.split(",") if args.only else CANDIDATES) if c]
    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = make_cert(Path(tmp))
        print(f"POST {len(BODY)} B → {len(ANSWER)} B, keep-alive, {args.concurrency} concurrent, {args.n} requests, "
              f"median of {args.rounds}; client CPU µs per request (lower is better)")
        for tls in ([False] if args.no_tls else [False, True]):
            port = free_port()
            server = subprocess.Popen([*pinned(1), *me, "--serve", str(port), *(["--cert", cert, "--key", key] if tls else [])],
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None and server.stdout.readline().strip() == "ready"
                url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/users/9900000/messages"
                env = os.environ | ({"SSL_CERT_FILE": ca} if tls else {})
                for name in names:
                    runs = []
                    for _ in range(args.rounds):
                        p = subprocess.run([*pinned(0), *me, "--client", name, "--url", url, "--n", str(args.n),
                                            "--concurrency", str(args.concurrency), *(["--cafile", ca] if tls else [])],
                                           capture_output=True, text=True, env=env)
                        if p.returncode != 0:
                            err = (p.stderr.strip().splitlines() or ["?"])[-1]
                            print(f"  {'tls ' if tls else 'http'} {name:14} unavailable: {err[:100]}")
                            break
                        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
                    if runs:
                        cpu = statistics.median(r["cpu_us"] for r in runs)
                        rps = statistics.median(r["rps"] for r in runs)
                        print(f"  {'tls ' if tls else 'http'} {name:14} {cpu:7.1f} µs CPU/request   ({rps:,.0f} req/s)", flush=True)
            finally:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
