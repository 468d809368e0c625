"""``make bench``: shim's send and callback paths measured against a bare forwarder, in one run.

The layout of the performance issue: shim (and the bare aiohttp forwarder it is compared with)
pinned to core 0; the nginx v2 upstream (plain HTTP and TLS), the legacy callback receiver,
PostgreSQL, the load generator (wrk, one thread, 32 connections) and this script on core 1.
Without taskset/affinity, nginx, wrk or PostgreSQL the bench says so and falls back (unpinned;
the Python upstream; a Python load generator; SQLite only).

Everything talks to 127.0.0.1 only, with bounded request counts and durations. Figures are
printed, never asserted (machines are noisy); compare the ratios, taken in the same run, and the
CPU per request, the steadier figure.

    python bench/run.py [--quick] [--postgres URL] [--baseline PATH] [--shim-src PATH ...]

``--postgres URL`` (or SHIM_BENCH_POSTGRES_URL) uses that server (its tables are dropped);
otherwise a throwaway cluster is started with ``tests/pg.py`` when PostgreSQL's binaries exist.
``--baseline PATH`` / ``--shim-src PATH`` also run the shim package of another checkout
(``PYTHONPATH=PATH python -m shim serve``, same config) and print its figures beside the current.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from yarl import URL

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import nginx  # noqa: E402  (bench/nginx.py, beside this script)

USER = {"user_id": "u-bench", "api_token": "t-bench", "api_secret": "s-bench-secret", "account_id": "1",
        "application_id": "app-bench", "v2_username": "v2", "v2_password": "v2pw"}
SEND_AUTH = "Basic " + base64.b64encode(b"t-bench:s-bench-secret").decode()
CB_AUTH_VALUE = "Basic " + base64.b64encode(b"bw:cbpw-bench-secret").decode()
AUTH = {"Authorization": SEND_AUTH, "Content-Type": "application/json"}
CB_AUTH = {"Authorization": CB_AUTH_VALUE, "Content-Type": "application/json"}
SEND_PATH = "/v1/users/u-bench/messages"
# The v2 passthrough (issue 10): the v2 API through shim with the user's own v2 credentials.
V2_PATH = "/api/v2/users/1/messages"
V2_AUTH_VALUE = "Basic " + base64.b64encode(b"v2:v2pw").decode()
CONNECTIONS = 32
PROXY_CORE, LOAD_CORE = 0, 1
# Targets of performance issue 9, printed next to the figures.
T_SEND = {"SQLite": 1.0, "PostgreSQL": 0.8}
T_ADDED_P99_MS = 5.0
T_INGEST = {"SQLite": 5000.0, "PostgreSQL": 2000.0}
T_DELIVERED = 2500.0
T_DEAD = 0.9
T_RSS_MB = 150.0

PROCS: list[subprocess.Popen[bytes]] = []


@dataclass
class Tools:
    pin: bool = False
    wrk: str | None = None
    nginx: str | None = None
    cert: tuple[Path, Path] | None = None
    notes: list[str] = field(default_factory=list)

    def on(self, core: int) -> list[str]:
        """The command prefix that pins a process to ``core`` (nothing without taskset)."""
        return ["taskset", "-c", str(core)] if self.pin else []


TOOLS = Tools()


@dataclass
class Src:
    label: str
    path: Path


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]

    def ok(self) -> bool:
        return not any(self.errors.values())


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            if proc is not None and proc.poll() is not None:
                break
            try:
                async with s.get(url, ssl=False) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up\n{log_tail(log) if log else ''}")


@contextmanager
def scope() -> Iterator[None]:
    """Processes started inside are stopped on leaving (they would eat CPU and connections)."""
    mark = len(PROCS)
    try:
        yield
    finally:
        stop(PROCS[mark:])
        del PROCS[mark:]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    if TOOLS.cert is not None:
        env["SSL_CERT_FILE"] = str(TOOLS.cert[0])  # shim and the forwarder trust the upstream's cert
    return env


async def helper(tmp: Path, role: str, *extra: str, core: int = LOAD_CORE) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = tmp / f"{role}-{port}.log"
    proc = subprocess.Popen([*TOOLS.on(core), sys.executable, str(HERE / "servers.py"), role, "--port", str(port),
                             *extra], stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=child_env())
    PROCS.append(proc)
    scheme = "https" if "--cert" in extra else "http"
    await wait_http(f"{scheme}://127.0.0.1:{port}/" + ("summary" if role == "receiver" else ""), proc, log)
    return f"{scheme}://127.0.0.1:{port}", proc


async def upstreams(tmp: Path) -> dict[str, str]:
    """The fast v2 upstream: {"plain": url, "TLS": url}, nginx if there, else the Python one."""
    if TOOLS.nginx:
        port, tls_port = free_port(), free_port()
        conf = nginx.config(tmp / "nginx", port, tls_port if TOOLS.cert else None, TOOLS.cert)
        proc = subprocess.Popen([*TOOLS.on(LOAD_CORE), TOOLS.nginx, "-p", str(tmp / "nginx"), "-c", str(conf),
                                 "-e", str(tmp / "nginx" / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=open(tmp / "nginx" / "stderr.log", "wb"))
        PROCS.append(proc)
        await wait_http(f"http://127.0.0.1:{port}/", proc, tmp / "nginx" / "error.log")
        out = {"plain": f"http://127.0.0.1:{port}"}
        if TOOLS.cert:
            await wait_http(f"https://127.0.0.1:{tls_port}/", proc, tmp / "nginx" / "error.log")
            out["TLS"] = f"https://127.0.0.1:{tls_port}"
        return out
    out = {"plain": (await helper(tmp, "upstream"))[0]}
    if TOOLS.cert:
        out["TLS"] = (await helper(tmp, "upstream", "--cert", str(TOOLS.cert[0]), "--key", str(TOOLS.cert[1])))[0]
    return out


async def start_shim(src: Src, upstream: str, store_url: str, tmp: Path, name: str,
                     **callbacks: Any) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "upstream": {"mode": "bandwidth", "base_url": upstream, "timeout_s": 10},
        "store": {"url": store_url},
        "callbacks": {"username": "bw", "password": "cbpw-bench-secret", "allow_cidrs": ["127.0.0.0/8"], **callbacks},
        "users": [USER],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp / f"{name}.log"
    # INFO: one access line per request, as in production (a guarantee the figures must include).
    env = child_env(SHIM_LOG_LEVEL=os.environ.get("SHIM_LOG_LEVEL", "INFO"), PYTHONPATH=str(src.path))
    # cwd is the bench's tmp dir: `python -m` puts the cwd first on sys.path, which would shadow PYTHONPATH.
    proc = subprocess.Popen([*TOOLS.on(PROXY_CORE), sys.executable, "-m", "shim", "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env, cwd=tmp)
    PROCS.append(proc)
    await wait_http(f"http://127.0.0.1:{port}/healthz", proc, log)
    return f"http://127.0.0.1:{port}", proc


def shim_origin(src: Src, tmp: Path) -> str:
    """Where `python -m shim` imports shim from, run exactly as the bench runs it."""
    done = subprocess.run([sys.executable, "-c", "import shim; print(shim.__file__)"], capture_output=True, text=True,
                          env=child_env(PYTHONPATH=str(src.path)), cwd=tmp, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[-1]


def cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user + system, every thread) a child process has used so far."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def log_tail(path: Path, n: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    lines = [x for x in path.read_text(errors="replace").splitlines() if '"logger":"shim.access"' not in x]
    return "\n".join("      | " + x for x in lines[-n:])


# -- load generators -----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def wrk(url: str, auth: str, seconds: float, *, mode: str = "send", ids: Path | None = None,
              connections: int = CONNECTIONS) -> Load:
    """wrk, one thread pinned to the load core, ``connections`` keep-alive connections. With
    ``ids`` (event mode) it ends once every event is answered; its rate is over that span."""
    assert TOOLS.wrk
    done = Path(f"{ids}.done") if ids else None
    env = dict(os.environ, BENCH_MODE=mode, BENCH_AUTH=auth, BENCH_IDS=str(ids or ""), BENCH_LIMIT="0",
               BENCH_DONE=str(done or "/dev/null"))
    proc = await asyncio.create_subprocess_exec(
        *TOOLS.on(LOAD_CORE), TOOLS.wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(HERE / "wrk_post.lua"), url, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    span = None
    if done is not None:
        # wrk's main thread sleeps the whole -d even after the Lua script stopped its thread:
        # SIGINT ends it early (wrk then reports as usual).
        for _ in range(int(seconds * 20) + 100):
            if proc.returncode is not None or read_span(done) is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        span = read_span(done)
    out, err = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("WRK_JSON "):
            r = json.loads(line[9:])
            errors = {k: int(r[k]) for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")}
            secs = span if span else r["duration_us"] / 1e6
            return Load(r["requests"] / secs, r["p50_us"] / 1000, r["p99_us"] / 1000, r["requests"], errors)
    raise RuntimeError(f"wrk gave no result: {out.decode()[-1000:]} {err.decode()[-1000:]}")


def read_span(done: Path) -> float | None:
    """Seconds from wrk's first request to its last response (the Lua script's stop file)."""
    if not done.exists():
        return None
    first, last = (float(x) for x in done.read_text().split())
    return last - first


def v2_body(i: int) -> bytes:
    return json.dumps({"applicationId": "app-bench", "to": [f"+1555{i % 10_000_000:07d}"], "from": "+15551230001",
                       "text": f"bench {i}"}).encode()


def send_body(i: int, **extra: Any) -> bytes:
    return json.dumps({"from": "+15551230001", "to": f"+1555{i % 10_000_000:07d}", "text": f"bench {i}", **extra}).encode()


def event(mid: str) -> bytes:
    return json.dumps([{"type": "message-delivered", "time": "2026-01-01T00:00:00Z", "to": "+15550000000",
                        "description": "ok", "message": {"id": mid, "owner": "+15551230001", "applicationId": "app-bench",
                                                         "time": "2026-01-01T00:00:00Z", "segmentCount": 1, "direction": "out",
                                                         "to": ["+15550000000"], "from": "+15551230001", "text": ""}}]).encode()


async def closed_loop(session: aiohttp.ClientSession, url: str, make: Callable[[int], bytes], n: int,
                      concurrency: int, headers: dict[str, str]) -> Load:
    """The Python load generator (fallback without wrk): n requests, ``concurrency`` at a time."""
    counter = iter(range(n))
    lat: list[float] = []
    bad = 0

    async def worker() -> None:
        nonlocal bad
        for i in counter:
            t0 = time.perf_counter()
            async with session.post(url, data=make(i), headers=headers) as r:
                await r.read()
                bad += r.status >= 300
            lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Load(n / (time.perf_counter() - t0), pct(lat, 50), pct(lat, 99), n, {"status_errors": bad})


async def load(session: aiohttp.ClientSession, url: str, seconds: float, *, mode: str = "send",
               ids: list[str] | None = None, tmp: Path | None = None, connections: int = CONNECTIONS) -> Load:
    """Closed-loop load: wrk if there, else the Python generator (as many requests as wrk would send)."""
    if TOOLS.wrk:
        ids_file = None
        if ids is not None:
            assert tmp is not None
            ids_file = tmp / f"ids-{time.monotonic_ns()}.txt"
            ids_file.write_text("\n".join(ids) + "\n")
        auth = {"event": CB_AUTH_VALUE, "v2send": V2_AUTH_VALUE}.get(mode, SEND_AUTH)
        return await wrk(url, auth, seconds, mode=mode, ids=ids_file, connections=connections)
    if ids is not None:
        got = ids
        return await closed_loop(session, url, lambda i: event(got[i]), len(ids), connections, CB_AUTH)
    if mode == "v2send":
        return await closed_loop(session, url, v2_body, int(seconds * 1500), connections,
                                 {"Authorization": V2_AUTH_VALUE, "Content-Type": "application/json"})
    return await closed_loop(session, url, send_body, int(seconds * 1500), connections, AUTH)


async def timed_sends(session: aiohttp.ClientSession, url: str, rate: float, seconds: float
                      ) -> tuple[list[tuple[float, float]], int]:
    """Sends at a fixed rate, not waiting for answers (Python, pinned to the load core): each one's
    start (``time.monotonic``) and latency in ms, and how many were not 201."""
    out: list[tuple[float, float]] = []
    bad = 0

    async def one(i: int) -> None:
        nonlocal bad
        t0 = time.monotonic()
        async with session.post(url, data=send_body(i), headers=AUTH) as r:
            await r.read()
            bad += r.status != 201
        out.append((t0, (time.monotonic() - t0) * 1000))

    await at_rate(rate, seconds, one)
    return out, bad


async def open_loop(url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Sends at a fixed rate, never waiting for an answer before the next is due: each one's
    latency in ms counted from when it was due (a late start counts against the server, as in
    wrk2), and how many were not 201. Raw keep-alive connections and pre-built requests, not
    aiohttp's client: at ~2 000 sends/s on the load core aiohttp's own loop lag was 5–14 ms of
    the p99 it reported, for the bare forwarder as much as for shim."""
    parsed = URL(url)
    host, port, path = parsed.host or "127.0.0.1", parsed.port or 80, parsed.raw_path_qs
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())).encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []
    latencies: list[float] = []
    bad = 0

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if idle:
            return idle.pop()
        reader, writer = await asyncio.open_connection(host, port)
        opened.append(writer)
        return reader, writer

    async def one(i: int, due: float) -> None:
        nonlocal bad
        body = send_body(i)
        reader, writer = await connection()
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        length = 0
        for header in rest.split(b"\r\n"):
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append((time.monotonic() - due) * 1000)
        bad += status_line.split(b" ", 2)[1] != b"201"
        idle.append((reader, writer))

    for _ in range(64):  # connections ready before the clock starts (as a keep-alive pool would be)
        idle.append(await connection())
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic() + 0.01
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for writer in opened:
        writer.close()
    return latencies, bad


async def at_rate(rate: float, seconds: float, one: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """``one(i)`` started ``rate`` times a second for ``seconds``, never waiting for an answer
    before the next start (an open loop); then every one awaited."""
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


# -- report ----------------------------------------------------------------------------------------


def line(label: str, value: str) -> None:
    print(f"  {label:<62} {value}", flush=True)


def fmt_load(x: Load) -> str:
    errs = "" if x.ok() else f"  ERRORS {x.errors}"
    return f"{x.rps:7.0f} req/s  p50 {x.p50_ms:6.2f} ms  p99 {x.p99_ms:6.2f} ms{errs}"


# Per backend, per source label: figure name -> value (the summary tables at the end).
RESULTS: dict[str, dict[str, dict[str, float]]] = {}


def record(backend: str, who: str, **figures: float) -> None:
    RESULTS.setdefault(backend, {}).setdefault(who, {}).update(figures)


def record_rss(backend: str, who: str, *procs: subprocess.Popen[bytes]) -> None:
    now = max(rss_mb(p) for p in procs)
    old = RESULTS.get(backend, {}).get(who, {}).get("rss", 0.0)
    record(backend, who, rss=max(old, now))


# -- phases ----------------------------------------------------------------------------------------


async def send_path(tmp: Path, src: Src, backend: str, store: Callable[[], str], ups: dict[str, str],
                    quick: bool) -> None:
    """Closed loop at 32 connections: shim vs the bare forwarder, plain and TLS upstream; CPU per
    request; open loop at half of shim's peak for the added p99."""
    seconds, rounds = (3.0, 2) if quick else (8.0, 3)
    print(f"send path ({backend}, shim {src.label}): single sends, {CONNECTIONS} connections, "
          f"{seconds:g} s each, best of {rounds} (CPU: lowest)", flush=True)
    conn = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=conn) as s:
        for kind, upstream in ups.items():
            with scope():
                fwd, fwd_proc = await helper(tmp, "forwarder", "--upstream", upstream, core=PROXY_CORE)
                name = f"send-{backend}-{src.label}-{kind}"
                shim_url, shim_proc = await start_shim(src, upstream, store(), tmp, name)
                async with s.post(shim_url + SEND_PATH, data=send_body(0), headers=AUTH) as r:
                    if r.status != 201:
                        line(f"shim -> {kind} upstream: a send answered", f"{r.status} {(await r.text())[:300]}")
                        print(log_tail(tmp / f"{name}.log"))
                        continue
                procs = {"forwarder": fwd_proc, "shim": shim_proc}
                urls = {"forwarder": fwd + SEND_PATH, "shim": shim_url + SEND_PATH}
                for who in procs:  # warm up (connections, caches, the store's first pages)
                    await load(s, urls[who], 1.0)
                best: dict[str, Load] = {}
                cpu: dict[str, float] = {}
                for _ in range(rounds):
                    for who in procs:
                        before = cpu_s(procs[who])
                        res = await load(s, urls[who], seconds)
                        used = (cpu_s(procs[who]) - before) / max(res.requests, 1) * 1e6
                        cpu[who] = min(cpu.get(who, used), used)
                        if who not in best or res.rps > best[who].rps:
                            best[who] = res
                        if not res.ok():
                            print(log_tail(tmp / f"{name}.log", 10) if who == "shim" else "")
                ratio = best["shim"].rps / best["forwarder"].rps
                line(f"{kind} upstream: forwarder", fmt_load(best["forwarder"]))
                line(f"{kind} upstream: shim", fmt_load(best["shim"]))
                line(f"{kind} upstream: shim / forwarder (target >= {T_SEND[backend]:.1f}x)", f"{ratio:.2f}x")
                line(f"{kind} upstream: CPU per send, forwarder / shim (all threads)",
                     f"{cpu['forwarder']:6.0f} us  {cpu['shim']:6.0f} us  ({cpu['shim'] / cpu['forwarder']:.2f}x)")
                record(backend, src.label, **{f"rps_{kind}": best["shim"].rps, f"ratio_{kind}": ratio,
                                              f"p50_{kind}": best["shim"].p50_ms, f"p99_{kind}": best["shim"].p99_ms,
                                              f"cpu_{kind}": cpu["shim"]})
                # The v2 passthrough through the same shim, in the same run (best of the rounds).
                passthrough: Load | None = None
                pcpu = float("inf")
                async with s.post(shim_url + V2_PATH, data=v2_body(0),
                                  headers={"Authorization": V2_AUTH_VALUE, "Content-Type": "application/json"}) as r:
                    has_passthrough = r.status == 202
                for _ in range(rounds if has_passthrough else 0):
                    before = cpu_s(shim_proc)
                    res = await load(s, shim_url + V2_PATH, seconds, mode="v2send")
                    pcpu = min(pcpu, (cpu_s(shim_proc) - before) / max(res.requests, 1) * 1e6)
                    if passthrough is None or res.rps > passthrough.rps:
                        passthrough = res
                    if not res.ok():
                        print(log_tail(tmp / f"{name}.log", 10))
                if passthrough is None:
                    line(f"{kind} upstream: v2 passthrough", "not in this shim")
                else:
                    line(f"{kind} upstream: v2 passthrough through shim", fmt_load(passthrough))
                    line(f"{kind} upstream: passthrough / forwarder; CPU per request",
                         f"{passthrough.rps / best['forwarder'].rps:.2f}x  {pcpu:6.0f} us")
                    record(backend, src.label, **{f"pass_rps_{kind}": passthrough.rps,
                                                  f"pass_ratio_{kind}": passthrough.rps / best["forwarder"].rps,
                                                  f"pass_cpu_{kind}": pcpu})
                record(backend, f"forwarder ({src.label} run)", **{f"rps_{kind}": best["forwarder"].rps,
                                                                   f"p50_{kind}": best["forwarder"].p50_ms,
                                                                   f"p99_{kind}": best["forwarder"].p99_ms,
                                                                   f"cpu_{kind}": cpu["forwarder"]})
                if kind == "plain":
                    rate = best["shim"].rps / 2
                    secs = 3.0 if quick else 6.0
                    runs: dict[str, list[list[float]]] = {"forwarder": [], "shim": []}
                    for _ in range(2):
                        for who in procs:
                            lat, bad = await open_loop(urls[who], rate, secs)
                            runs[who].append(lat)
                            if bad:
                                line(f"open loop: {who} answers other than 201", str(bad))
                    fl = min(runs["forwarder"], key=lambda v: pct(v, 99))
                    sl = min(runs["shim"], key=lambda v: pct(v, 99))
                    added = pct(sl, 99) - pct(fl, 99)
                    line(f"open loop at half of shim's peak ({rate:.0f} req/s, {secs:g} s, best of 2): forwarder",
                         f"p50 {pct(fl, 50):6.2f} ms  p99 {pct(fl, 99):6.2f} ms")
                    line(f"{'shim':>{62}}", f"p50 {pct(sl, 50):6.2f} ms  p99 {pct(sl, 99):6.2f} ms")
                    line(f"p99 added by shim (target <= {T_ADDED_P99_MS:g} ms)", f"{added:6.2f} ms")
                    record(backend, src.label, added_p99=added)
                record_rss(backend, src.label, shim_proc)
                line("shim peak RSS so far (VmHWM)", f"{rss_mb(shim_proc):6.1f} MB")


async def batch_path(tmp: Path, src: Src) -> None:
    with scope():
        upstream, _ = await helper(tmp, "upstream", "--delay", "0.05")
        shim_url, _ = await start_shim(src, upstream, f"sqlite:///{tmp}/batch-{src.label}.db", tmp, f"batch-{src.label}")
        url = shim_url + SEND_PATH
        async with aiohttp.ClientSession() as s:
            single: list[float] = []
            for i in range(20):
                t0 = time.perf_counter()
                async with s.post(url, data=send_body(i), headers=AUTH) as r:
                    await r.read()
                single.append((time.perf_counter() - t0) * 1000)
            batch = json.dumps([json.loads(send_body(i)) for i in range(50)]).encode()
            batched: list[float] = []
            for _ in range(10):
                t0 = time.perf_counter()
                async with s.post(url, data=batch, headers=AUTH) as r:
                    await r.read()
                batched.append((time.perf_counter() - t0) * 1000)
    print(f"batch vs single (SQLite, shim {src.label}), upstream answering in 50 ms")
    line("single send / batch of 50, mean latency",
         f"{statistics.mean(single):7.1f} ms  {statistics.mean(batched):7.1f} ms  "
         f"({statistics.mean(batched) / statistics.mean(single):.2f}x, target <= 2x)")


async def create(s: aiohttp.ClientSession, url: str, n: int, callback: str, tmp: Path, log: Path,
                 timeout_ms: int = 10000) -> list[str]:
    """n messages with callbackUrl ``callback``, by batches of 50; their ids. A failed item is
    printed with shim's log (it would leave an event without its message)."""
    ids: list[str] = []
    failed: list[dict[str, Any]] = []
    for start in range(0, n, 50):
        items = [json.loads(send_body(i, callbackUrl=callback, callbackTimeout=timeout_ms))
                 for i in range(start, min(n, start + 50))]
        async with s.post(url, data=json.dumps(items), headers=AUTH) as r:
            body = await r.json()
            if r.status != 202:
                raise RuntimeError(f"batch send answered {r.status}: {body}\n{log_tail(log)}")
        for x in body:
            if "location" in x:
                ids.append(x["location"].rsplit("/", 1)[1])
            else:
                failed.append(x)
    if failed:
        line(f"WARNING: {len(failed)} of {n} batch items failed; the first", json.dumps(failed[0])[:400])
        print(log_tail(log, 40))
    return ids


async def wait_delivered(s: aiohttp.ClientSession, receiver: str, n: int, deadline_s: float) -> dict[str, float]:
    deadline = time.time() + deadline_s
    summary: dict[str, float] = {"count": 0, "first": 0.0, "last": 0.0}
    while time.time() < deadline:
        async with s.get(f"{receiver}/summary") as r:
            summary = await r.json()
        if summary["count"] >= n:
            break
        await asyncio.sleep(0.2)
    return summary


async def callback_path(tmp: Path, src: Src, backend: str, store_url: str, upstream: str, quick: bool,
                        replicas: int = 1) -> None:
    """Events for existing messages (made by batch sends, written to a file wrk reads), one per
    POST, 32 connections, while delivery runs; then the same with a dead receiver holding slots."""
    n = 4000 if quick else 15000
    reps = f", {replicas} replicas on the one core" if replicas > 1 else ""
    print(f"callback path ({backend}{reps}, shim {src.label}): {n} v2 events for {n} messages, 1 per POST, "
          f"{CONNECTIONS} connections", flush=True)
    with scope():
        receiver, _ = await helper(tmp, "receiver")
        dead, _ = await helper(tmp, "receiver", "--hang")
        names = [f"cb-{backend}-{src.label}-{replicas}r-{i}" for i in range(replicas)]
        shims = [await start_shim(src, upstream, store_url, tmp, name) for name in names]
        log0 = tmp / f"{names[0]}.log"
        send_url = shims[0][0] + SEND_PATH
        ingest_urls = [f"{u}/callbacks/v2" for u, _ in shims]
        results: dict[str, tuple[float, float, float]] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
            for phase in ("healthy", "with-dead"):
                async with s.post(f"{receiver}/reset"):
                    pass
                if phase == "with-dead":
                    # The dead receiver's callbacks go first and hang (each until its 2 s timeout,
                    # then retried), holding their slots while the healthy load runs as before.
                    dead_ids = await create(s, send_url, n // 5, f"{dead}/cb", tmp, log0, 2000)
                    await asyncio.gather(*(load(s, u, 60, mode="event", ids=dead_ids[i::replicas], tmp=tmp,
                                                connections=CONNECTIONS // replicas)
                                           for i, u in enumerate(ingest_urls)))
                    await asyncio.sleep(0.5)
                t_create = time.perf_counter()
                ids = await create(s, send_url, n, f"{receiver}/cb", tmp, log0)
                create_rate = len(ids) / (time.perf_counter() - t_create)
                cpu0 = sum(cpu_s(p) for _, p in shims)
                t0 = time.time()
                # One wrk per replica, each with its share of the ids and of the connections.
                ingests = await asyncio.gather(*(load(s, u, 60, mode="event", ids=ids[i::replicas], tmp=tmp,
                                                      connections=CONNECTIONS // replicas)
                                                 for i, u in enumerate(ingest_urls)))
                t_ingest = max(x.requests / x.rps for x in ingests)
                ingest = len(ids) / t_ingest
                errors = {k: sum(x.errors.get(k, 0) for x in ingests) for k in ingests[0].errors}
                summary = await wait_delivered(s, receiver, len(ids), 60)
                got = int(summary["count"])
                delivered = got / max(summary["last"] - t0, 1e-6) if got else 0.0
                cpu_ev = (sum(cpu_s(p) for _, p in shims) - cpu0) / max(got, 1) * 1e6
                results[phase] = (ingest, delivered, cpu_ev)
                label = "" if phase == "healthy" else f" (while {n // 5} callbacks hang at a dead receiver)"
                line(f"{phase}: ingest, durably acknowledged, delivery running{label}",
                     f"{ingest:7.0f} events/s  p50 {statistics.mean(x.p50_ms for x in ingests):6.2f} ms  "
                     f"p99 {max(x.p99_ms for x in ingests):6.2f} ms" + ("" if not any(errors.values()) else f"  ERRORS {errors}"))
                line(f"{phase}: ingest -> delivered to the receiver", f"{delivered:7.0f} callbacks/s")
                if phase == "healthy":
                    line("healthy: shim CPU per event, ingest + delivery (all threads, all replicas)", f"{cpu_ev:7.0f} us")
                    line("(messages made for it by batch sends at)", f"{create_rate:7.0f} sends/s")
                if got < len(ids):
                    line("WARNING: callbacks missing at the deadline", f"{len(ids) - got}")
                    print(log_tail(log0, 20))
            record_rss(backend, src.label, *(p for _, p in shims))
        dead_ratio = results["with-dead"][1] / max(results["healthy"][1], 1e-6)
        line(f"healthy throughput with dead receiver / without (target >= {T_DEAD:.1f}x)", f"{dead_ratio:.2f}x")
        key = "" if replicas == 1 else f"_{replicas}r"
        record(backend, src.label, **{f"ingest{key}": results["healthy"][0], f"delivered{key}": results["healthy"][1],
                                      f"cpu_event{key}": results["healthy"][2], f"dead{key}": dead_ratio})


# -- PostgreSQL ------------------------------------------------------------------------------------


class Postgres:
    """A server for the PostgreSQL figures and a fresh database (or, on a given server, fresh
    tables) per phase."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.cluster: Any = None
        self.count = 0

    def start(self) -> str | None:
        """None when there is no server to use, after saying why."""
        if self.url:
            return self.url
        sys.path.insert(0, str(ROOT))
        try:
            from tests import pg  # the test suite's throwaway cluster
        except ImportError as err:
            print(f"(PostgreSQL figures skipped: cannot import tests/pg.py: {err})")
            return None
        bindir = pg.find_bindir()
        if bindir is None:
            print("(PostgreSQL figures skipped: no initdb/pg_ctl/postgres found; set SHIM_BENCH_POSTGRES_URL or --postgres)")
            return None
        # Durable, like production (fsync, synchronous_commit on); more shared buffers than the default.
        pg.SERVER_SETTINGS = {**pg.SERVER_SETTINGS, "fsync": "on", "synchronous_commit": "on",
                              "full_page_writes": "on", "shared_buffers": "'256MB'", "max_connections": "300"}
        self.cluster = pg.Cluster(bindir)
        self.cluster.as_user = [*TOOLS.on(LOAD_CORE), *self.cluster.as_user]  # the server on the load core
        self.url = str(self.cluster.start())
        where = f", pinned to core {LOAD_CORE}" if TOOLS.pin else ""
        print(f"  PostgreSQL: throwaway cluster from tests/pg.py on {self.url}{where}; fsync and synchronous_commit on, "
              "shared_buffers 256MB")
        return self.url

    async def fresh(self) -> str:
        import asyncpg

        assert self.url
        conn = await asyncpg.connect(self.url)
        try:
            if self.cluster is not None:
                self.count += 1
                name = f"bench_{self.count}"
                await conn.execute(f'CREATE DATABASE "{name}"')
                return f"{self.url.rpartition('/')[0]}/{name}"
            # A server we were given: drop every table of its current schema (the migrations rebuild them).
            tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
            if tables:
                await conn.execute("DROP TABLE IF EXISTS " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
            return self.url
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


# -- summary ---------------------------------------------------------------------------------------


def summary(backend: str, srcs: list[Src], tls: bool) -> None:
    data = RESULTS.get(backend, {})
    if not data:
        return
    fwd = data.get(f"forwarder ({srcs[0].label} run)", {})
    cols = [s.label for s in srcs]
    print(f"\nsummary, {backend} (shim pinned to core {PROXY_CORE} if pinning works; see the notes above)")
    print(f"  {'':<44}" + "".join(f"{c:>14}" for c in ["forwarder", *cols]) + "   target")

    def row(label: str, key: str, fmt: str, target: str = "", forwarder: bool = False) -> None:
        vals = [fwd.get(key) if forwarder else None] + [data.get(c, {}).get(key) for c in cols]
        if all(v is None for v in vals):
            return
        print(f"  {label:<44}" + "".join(f"{format(v, fmt):>14}" if v is not None else f"{'-':>14}" for v in vals)
              + f"   {target}")

    kinds = ["plain", "TLS"] if tls else ["plain"]
    for k in kinds:
        row(f"send, {k} upstream (req/s)", f"rps_{k}", ".0f", "", True)
        row("  shim / forwarder", f"ratio_{k}", ".2f", f">= {T_SEND[backend]:.1f}x")
        row("  p50 (ms)", f"p50_{k}", ".2f", "", True)
        row("  p99 (ms)", f"p99_{k}", ".2f", "", True)
        row("  CPU per send (us, all threads)", f"cpu_{k}", ".0f", "", True)
        row("  v2 passthrough (req/s)", f"pass_rps_{k}", ".0f")
        row("  v2 passthrough / forwarder", f"pass_ratio_{k}", ".2f")
        row("  v2 passthrough CPU per request (us)", f"pass_cpu_{k}", ".0f")
    row("p99 added at half of shim's peak (ms)", "added_p99", ".2f", f"<= {T_ADDED_P99_MS:g} ms")
    per = " per replica" if backend == "PostgreSQL" else ""
    row("ingest (events/s, durable)", "ingest", ".0f", f">= {T_INGEST[backend]:.0f}/s{per}")
    row("ingest -> delivered (callbacks/s)", "delivered", ".0f", f">= {T_DELIVERED:.0f}/s" if backend == "SQLite" else "")
    row("CPU per event, ingest + delivery (us)", "cpu_event", ".0f")
    row("dead receiver: healthy with / without", "dead", ".2f", f">= {T_DEAD:.1f}x")
    row("2 replicas: ingest (events/s, total)", "ingest_2r", ".0f", f">= {2 * T_INGEST[backend]:.0f}/s (2 x per replica)")
    row("2 replicas: delivered (callbacks/s)", "delivered_2r", ".0f")
    row("2 replicas: dead receiver with / without", "dead_2r", ".2f", f">= {T_DEAD:.1f}x")
    row("peak RSS, VmHWM (MB)", "rss", ".1f", f"<= {T_RSS_MB:.0f} MB")


# -- main ------------------------------------------------------------------------------------------


def probe_tools(tmp: Path, use_wrk: bool) -> None:
    t = TOOLS
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        ok = subprocess.run(["taskset", "-c", str(PROXY_CORE), "true"], capture_output=True, check=False).returncode == 0
        try:
            os.sched_setaffinity(0, {LOAD_CORE})  # this script (the open loop, batch sends) on the load core
        except OSError:
            ok = False
        t.pin = ok
    if not t.pin:
        t.notes.append("NOTE: no pinning (taskset/affinity unavailable or fewer than 2 cores): figures are noisier "
                       "and the load generator shares shim's core")
    t.wrk = shutil.which("wrk") if use_wrk else None
    if t.wrk is None:
        t.notes.append("NOTE: wrk not found (or --python-load): the Python load generator is used; it may be the wall")
    t.nginx = nginx.nginx_binary()
    if t.nginx is None:
        t.notes.append("NOTE: nginx not found: the Python aiohttp upstream is used")
    t.cert = nginx.make_cert(tmp)
    if t.cert is None:
        t.notes.append("NOTE: openssl not found: no TLS upstream figures")


async def main_async(args: argparse.Namespace, srcs: list[Src]) -> None:
    pg_url = args.postgres or os.environ.get("SHIM_BENCH_POSTGRES_URL")
    with tempfile.TemporaryDirectory(prefix="shim-bench-") as d:
        tmp = Path(d)
        if args.keep_tmp:
            tmp = Path(tempfile.mkdtemp(prefix="shim-bench-kept-"))
        probe_tools(tmp, not args.python_load)
        print(f"shim benchmarks on {os.cpu_count()} cores, python {sys.version.split()[0]}, "
              f"{'quick' if args.quick else 'full'} run, tmp {tmp}")
        print(f"  layout: shim and forwarder on core {PROXY_CORE}; upstream ({'nginx' if TOOLS.nginx else 'Python'}), "
              f"receiver, PostgreSQL, load ({'wrk -t1' if TOOLS.wrk else 'Python'}) on core {LOAD_CORE}"
              if TOOLS.pin else "  layout: unpinned")
        for note in TOOLS.notes:
            print("  " + note)
        for src in srcs:
            print(f"  shim {src.label}: {src.path} -> imports {shim_origin(src, tmp)}")
        ups = await upstreams(tmp)
        print(f"  upstreams: {ups}\n", flush=True)
        backends: list[tuple[str, Callable[[], Any]]] = []
        counter = iter(range(10_000))
        backends.append(("SQLite", lambda: f"sqlite:///{tmp}/store-{next(counter)}.db"))
        pg = Postgres(pg_url)
        try:
            if not args.sqlite_only and pg.start() is not None:
                backends.append(("PostgreSQL", pg.fresh))
            phases = set(args.phases.split(","))
            for backend, make_store in backends:
                for src in srcs if "send" in phases else []:
                    if backend == "SQLite":
                        store_fn: Callable[[], str] = make_store
                        await send_path(tmp, src, backend, store_fn, ups, args.quick)
                    else:
                        # One database per shim instance of the send phase (plain, TLS).
                        urls = iter([await pg.fresh() for _ in ups])
                        await send_path(tmp, src, backend, functools.partial(next, urls), ups, args.quick)
                    print()
                if backend == "SQLite" and "batch" in phases:
                    for src in srcs:
                        await batch_path(tmp, src)
                    print()
                for src in srcs if "callback" in phases else []:
                    store = make_store() if backend == "SQLite" else await pg.fresh()
                    await callback_path(tmp, src, backend, store, ups["plain"], args.quick)
                    print()
                if backend == "PostgreSQL" and "replicas" in phases:
                    for src in srcs:
                        await callback_path(tmp, src, backend, await pg.fresh(), ups["plain"], args.quick, replicas=2)
                        print()
        finally:
            stop(PROCS)
            PROCS.clear()
            pg.stop()
        for backend, _ in backends:
            summary(backend, srcs, "TLS" in ups)
        if not pg_url and len(backends) == 1:
            print("\n(no PostgreSQL figures)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs (make bench's default)")
    p.add_argument("--postgres", help="PostgreSQL URL for the PostgreSQL figures (its tables are dropped)")
    p.add_argument("--baseline", action="append", metavar="PATH",
                   help="also run the shim package of this checkout, labelled baseline (repeatable)")
    p.add_argument("--shim-src", action="append", metavar="PATH",
                   help="also run the shim package of this checkout, labelled by its directory name (repeatable)")
    p.add_argument("--sqlite-only", action="store_true", help="no PostgreSQL figures")
    p.add_argument("--phases", default="send,batch,callback,replicas",
                   help="comma-separated subset of send,batch,callback,replicas (default: all)")
    p.add_argument("--python-load", action="store_true", help="the Python load generator even if wrk is there")
    p.add_argument("--keep-tmp", action="store_true", help="keep the tmp dir (configs, shim logs, stores)")
    args = p.parse_args()
    srcs = [Src("current", ROOT)]
    for i, path in enumerate(args.baseline or []):
        srcs.append(Src("baseline" if i == 0 else f"baseline{i + 1}", Path(path).resolve()))
    for path in args.shim_src or []:
        srcs.append(Src(Path(path).resolve().name, Path(path).resolve()))
    try:
        asyncio.run(main_async(args, srcs))
    finally:
        stop(PROCS)


if __name__ == "__main__":
    main()
