"""Tail latency of v1 sends under open-loop load (performance issue 9, "p99 added at half of peak").

    python bench/tail.py [--rate 500] [--seconds 8] [--runs 3] [--trace] [--who shim,forwarder]
                         [--shim-src PATH ...]

Starts the v2 upstream (nginx, else the Python one) and, per run, a fresh shim (SQLite store in a
temp dir) and/or the bare forwarder, laid out as ``bench/run.py`` lays them out (shim on core 0,
everything else on core 1), then sends ``rate`` v1 sends a second for ``seconds`` without waiting
for answers, recording every request's start time and latency. Printed per run: p50/p90/p99/max,
the slow requests (over ``--slow`` ms) grouped into bursts (slow requests less than 50 ms apart),
each burst's start modulo 1 s, and the gaps between bursts (the period). The load generator's
own event-loop lag is printed too: a burst it shares is the client's, not shim's.

``--trace`` runs shim under ``bench/tail_probe.py`` (event-loop lag, SQLite writer batches and
commits, checkpoints, per-request store waits) and prints what of it falls inside each burst.
``--shim-src PATH`` runs another checkout's shim package as well (runs interleaved).
Everything talks to 127.0.0.1 only; requests are bounded (rate × seconds per run).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (bench/run.py, beside this script)
from run import PROCS, SEND_PATH, TOOLS, USER, Src, pct, scope  # noqa: E402


async def start_shim(src: Src, upstream: str, tmp: Path, name: str, trace: Path | None,
                     env_extra: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    """``run.start_shim``, optionally under the probes of ``bench/tail_probe.py``."""
    port = run.free_port()
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "upstream": {"mode": "bandwidth", "base_url": upstream, "timeout_s": 10},
        "store": {"url": f"sqlite:///{tmp}/{name}.db"},
        "callbacks": {"username": "bw", "password": "cbpw-bench-secret", "allow_cidrs": ["127.0.0.0/8"]},
        "users": [USER],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp / f"{name}.log"
    env = run.child_env(SHIM_LOG_LEVEL=os.environ.get("SHIM_LOG_LEVEL", "INFO"), PYTHONPATH=str(src.path),
                        **env_extra)
    cmd = [sys.executable, "-m", "shim"]
    if trace is not None:
        env["SHIM_TAIL_TRACE"] = str(trace)
        cmd = [sys.executable, str(HERE / "tail_probe.py")]
    proc = subprocess.Popen([*TOOLS.on(run.PROXY_CORE), *cmd, "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env, cwd=tmp)
    PROCS.append(proc)
    await run.wait_http(f"http://127.0.0.1:{port}/healthz", proc, log)
    return f"http://127.0.0.1:{port}", proc


async def open_loop(session: aiohttp.ClientSession, url: str, rate: float, seconds: float
                    ) -> tuple[list[tuple[float, float]], int, list[tuple[float, float]]]:
    """``run.timed_sends`` (each request's start with its latency, ms), in start order; also this
    process's own loop lag (start, ms late) while it runs."""
    lags: list[tuple[float, float]] = []
    done = False

    async def probe() -> None:
        while not done:
            t0 = time.monotonic()
            await asyncio.sleep(0.001)
            late = (time.monotonic() - t0 - 0.001) * 1000
            if late > 2:
                lags.append((t0, late))

    lag_task = asyncio.create_task(probe())
    out, bad = await run.timed_sends(session, url, rate, seconds)
    done = True
    await lag_task
    return sorted(out), bad, lags


def bursts(reqs: list[tuple[float, float]], slow_ms: float, gap_s: float = 0.05) -> list[tuple[float, float, int, float]]:
    """Slow requests grouped: (first start, last start, count, worst ms)."""
    out: list[tuple[float, float, int, float]] = []
    for t, ms in reqs:
        if ms < slow_ms:
            continue
        if out and t - out[-1][1] <= gap_s:
            first, _, n, worst = out[-1]
            out[-1] = (first, t, n + 1, max(worst, ms))
        else:
            out.append((t, t, 1, ms))
    return out


def report(label: str, reqs: list[tuple[float, float]], bad: int, lags: list[tuple[float, float]], slow_ms: float,
           trace: list[list[Any]] | None, verbose: bool) -> dict[str, float]:
    lat = [ms for _, ms in reqs]
    t_start = reqs[0][0] if reqs else 0.0
    figures = {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": max(lat, default=float("nan"))}
    print(f"  {label:<28} p50 {figures['p50']:6.2f}  p90 {figures['p90']:6.2f}  p99 {figures['p99']:6.2f}  "
          f"max {figures['max']:6.1f} ms  ({len(lat)} requests{f', {bad} not 201' if bad else ''})", flush=True)
    bs = bursts(reqs, slow_ms)
    slow = sum(b[2] for b in bs)
    gaps = [b2[0] - b1[0] for b1, b2 in itertools.pairwise(bs)]
    print(f"    {slow} requests over {slow_ms:g} ms in {len(bs)} bursts; gaps between bursts (s): "
          + " ".join(f"{g:.2f}" for g in gaps[:30]))
    client_lag = [x for x in lags if x[1] > slow_ms]
    if client_lag:
        print(f"    load generator's own loop lag over {slow_ms:g} ms: {len(client_lag)} times, worst "
              f"{max(x[1] for x in client_lag):.1f} ms at " + " ".join(f"{t - t_start:.2f}" for t, _ in client_lag[:20]))
    if not verbose:
        if trace is not None:
            summarize_trace(trace, t_start)
        return figures
    for first, last, n, worst in bs:
        print(f"    burst at {first - t_start:7.3f} s (mod 1 s: {(first - t_start) % 1:.3f}), {(last - first) * 1000:5.1f} ms "
              f"long, {n:3d} slow, worst {worst:5.1f} ms")
        if trace is None:
            continue
        lo, hi = first - 0.06, last + worst / 1000 + 0.01
        for rec in trace:
            kind = rec[0]
            if kind == "lag" and lo <= rec[1] <= hi and rec[2] > 0.004:
                print(f"        loop lag    at {rec[1] - t_start:7.3f}: {rec[2] * 1000:5.1f} ms late")
            elif kind == "ckpt" and rec[2] >= lo and rec[1] <= hi:
                print(f"        checkpoint  at {rec[1] - t_start:7.3f}: {(rec[2] - rec[1]) * 1000:5.1f} ms {rec[3]}")
            elif kind == "batch" and lo <= rec[2] <= hi and (rec[4] - rec[1]) > 0.004:
                print(f"        writer batch of {rec[3]:3d} handed {rec[1] - t_start:7.3f}, "
                      f"began +{(rec[2] - rec[1]) * 1000:5.1f} ms, ran {(rec[4] - rec[2]) * 1000:5.1f} ms")
            elif kind == "commit" and lo <= rec[1] <= hi and sum(rec[2:]) > 0.003:
                print(f"        tx at {rec[1] - t_start:7.3f}: BEGIN {rec[2] * 1000:5.1f} ms, work {rec[3] * 1000:5.1f} ms, "
                      f"COMMIT {rec[4] * 1000:5.1f} ms")
    if trace is not None:
        summarize_trace(trace, t_start)
    return figures


def summarize_trace(trace: list[list[Any]], t_start: float) -> None:
    ck = [r for r in trace if r[0] == "ckpt" and r[1] >= t_start]
    if ck:
        durs = sorted((r[2] - r[1]) * 1000 for r in ck)
        cpu = sum(float(r[3][-1].split()[1]) for r in ck if str(r[3][-1]).startswith("cpu"))
        span = max(ck[-1][2] - t_start, 1e-9)
        print(f"    checkpoint thread CPU: {cpu / span:.1f} ms per second")
        print(f"    checkpoints: {len(ck)}, ms: p50 {pct(durs, 50):.1f} max {durs[-1]:.1f}; at (mod 1 s) "
              + " ".join(f"{(r[1] - t_start) % 1:.2f}" for r in ck[:12]))
        # The frames each checkpoint saw: shim's own count, or the PRAGMA's row (older shims).
        frames = [r[3][0] if isinstance(r[3][0], int) else r[3][0][1] for r in ck if isinstance(r[3][0], (int, list))]
        restarts = sum(b < a for a, b in itertools.pairwise(frames))
        print(f"    WAL frames at the checkpoints: last {frames[-1] if frames else '?'}, max {max(frames, default=0)}; "
              f"WAL restarted {restarts} times")
    commits = [r for r in trace if r[0] == "commit" and r[1] >= t_start]
    if commits:
        c = sorted(r[4] * 1000 for r in commits)
        b = sorted(r[2] * 1000 for r in commits)
        w = sorted(r[3] * 1000 for r in commits)
        print(f"    writer txs: {len(commits)}; BEGIN p99 {pct(b, 99):.2f} max {b[-1]:.1f}; work p99 {pct(w, 99):.2f} "
              f"max {w[-1]:.1f}; COMMIT p99 {pct(c, 99):.2f} max {c[-1]:.1f} ms")
        # Slow writer transactions, and how many of them overlap a checkpoint (the correlation).
        slow = [r for r in commits if sum(r[2:]) > 0.003]
        during = [r for r in slow if any(k[1] <= r[1] + sum(r[2:]) and r[1] <= k[2] for k in ck)]
        busy = sum(k[2] - k[1] for k in ck) / max(commits[-1][1] - t_start, 1e-9)
        print(f"    writer txs over 3 ms: {len(slow)}, {len(during)} of them during a checkpoint "
              f"(checkpoints run {busy:.0%} of the time)")
    for name in ("record_intent", "bind_send"):
        w = sorted(r[3] * 1000 for r in trace if r[0] == "wait" and r[1] == name and r[2] >= t_start)
        if w:
            print(f"    a request's wait for {name}: p50 {pct(w, 50):.2f} p99 {pct(w, 99):.2f} max {w[-1]:.1f} ms "
                  f"({sum(x > 5 for x in w)} over 5 ms)")
    lag = [r for r in trace if r[0] == "lag" and r[1] >= t_start]
    if lag:
        print(f"    shim loop lag over 2 ms: {len(lag)} times, worst {max(r[2] for r in lag) * 1000:.1f} ms")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="shim-tail-") as d:
        tmp = Path(d)
        run.probe_tools(tmp, use_wrk=False)
        TOOLS.cert = None  # plain upstream only
        for note in TOOLS.notes:
            if "openssl" not in note and "wrk" not in note:
                print("  " + note)
        ups = await run.upstreams(tmp)
        srcs = [Src("current", run.ROOT)] + [Src(p.name, p) for p in args.shim_src or []]
        whos = args.who.split(",")
        print(f"tail: {args.rate:g} sends/s for {args.seconds:g} s, {args.runs} runs, upstream {ups['plain']}, "
              f"{'pinned' if TOOLS.pin else 'unpinned'}", flush=True)
        results: dict[str, list[dict[str, float]]] = {}
        conn = aiohttp.TCPConnector(limit=400)
        async with aiohttp.ClientSession(connector=conn) as s:
            for i in range(args.runs):
                for who in whos:
                    for src in srcs if who == "shim" else [Src("forwarder", run.ROOT)]:
                        with scope():
                            label = f"{who} {src.label}" if who == "shim" else who
                            trace_path = tmp / f"trace-{i}-{src.label}.jsonl" if args.trace and who == "shim" else None
                            if who == "shim":
                                url, proc = await start_shim(src, ups["plain"], tmp, f"shim-{i}-{src.label}", trace_path,
                                                             dict(e.split("=", 1) for e in args.env or []))
                            else:
                                url, proc = await run.helper(tmp, "forwarder", "--upstream", ups["plain"],
                                                             core=run.PROXY_CORE)
                            await open_loop(s, url + SEND_PATH, args.rate, 1.0)  # warm up
                            cpu0 = run.cpu_s(proc)
                            reqs, bad, lags = await open_loop(s, url + SEND_PATH, args.rate, args.seconds)
                            cpu_us = (run.cpu_s(proc) - cpu0) / max(len(reqs), 1) * 1e6
                            proc.terminate()
                            proc.wait(20)
                        trace = None
                        if trace_path is not None and trace_path.exists():
                            trace = [json.loads(x) for x in trace_path.read_text().splitlines()]
                        figs = report(f"run {i + 1}: {label}", reqs, bad, lags, args.slow, trace, args.verbose)
                        figs["cpu_us"] = cpu_us
                        print(f"    CPU per send (all of the process's threads): {cpu_us:.0f} us")
                        results.setdefault(label, []).append(figs)
        print("\nsummary (ms, per run)")
        for label, runs in results.items():
            for key in ("p50", "p99", "max", "cpu_us"):
                vals = [r[key] for r in runs]
                print(f"  {label:<28} {key:>4}: " + " ".join(f"{v:6.2f}" for v in vals)
                      + f"   median {sorted(vals)[len(vals) // 2]:6.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=500.0, help="sends per second (default 500)")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each run (default 8)")
    p.add_argument("--runs", type=int, default=3, help="runs per target, interleaved (default 3)")
    p.add_argument("--slow", type=float, default=5.0, help="a request slower than this (ms) is slow (default 5)")
    p.add_argument("--who", default="shim,forwarder", help="comma-separated: shim, forwarder (default both)")
    p.add_argument("--trace", action="store_true", help="run shim under bench/tail_probe.py and correlate")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="extra environment for shim (repeatable)")
    p.add_argument("--shim-src", action="append", metavar="PATH", help="also run this checkout's shim package")
    p.add_argument("-v", "--verbose", action="store_true", help="print every burst")
    args = p.parse_args()
    args.shim_src = [Path(x).resolve() for x in args.shim_src or []]
    try:
        asyncio.run(main_async(args))
    finally:
        run.stop(PROCS)


if __name__ == "__main__":
    main()
