"""The console's timeline page for a message with 20 callback attempts: its weight and the time to
first render in headless Chromium (issue 13). Printed, never asserted.

    python bench/console.py [--loads 30]

shim runs as ``shim serve`` (SQLite, the sandbox upstream) on 127.0.0.1; a receiver answers the
message's callback with 500 nineteen times, then 200 (retry schedule of 19 short delays, breaker
off), so the timeline holds 20 real attempts. Chromium loads the page ``--loads`` times (cache
on: the stylesheet comes from cache after the first load, as for an operator) and once more
with the cache off; the figures come from the browser's own Navigation and Paint Timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from run import SEND_AUTH, SEND_PATH, USER, free_port, wait_http  # noqa: E402  (bench/run.py, beside this script)

from shim.basic_auth import basic_header as basic  # noqa: E402

ADMIN = ("admin", "bench-admin-password")
ATTEMPTS = 20


async def receiver() -> tuple[web.AppRunner, str, list[int]]:
    seen: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append(1)
        return web.Response(status=200 if len(seen) >= ATTEMPTS else 500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", seen


async def prepare(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str, web.AppRunner]:
    rrunner, rurl, _ = await receiver()
    port = free_port()
    cfg = {
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"url": f"sqlite:///{tmp}/console.db"},
        "upstream": {"mode": "sandbox"},
        "admin": {"username": ADMIN[0], "password": ADMIN[1]},
        "callbacks": {"retry_schedule_s": [0.01] * (ATTEMPTS - 1), "breaker": {"enabled": False},
                      "allow_cidrs": ["127.0.0.0/8"]},
        "users": [USER],
    }
    (tmp / "shim.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "shim", "serve", "--config", str(tmp / "shim.yaml")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / "shim.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": basic(*ADMIN)}
    await wait_http(f"{base}/healthz", proc, tmp / "shim.log")
    async with aiohttp.ClientSession() as s:
        body = {"from": "+15551230001", "to": "+15551230002", "text": "console bench", "callbackUrl": f"{rurl}/cb"}
        async with s.post(f"{base}{SEND_PATH}", json=body, headers={"Authorization": SEND_AUTH}) as r:
            assert r.status == 201, await r.text()
            mid = r.headers["Location"].rsplit("/", 1)[1]
        deadline = time.monotonic() + 60
        while True:
            async with s.get(f"{base}/admin/messages/{mid}/timeline", headers=admin) as r:
                t = await r.json()
            if r.status == 200 and any(c["status"] == "delivered" for c in t["callbacks"]):
                break
            assert time.monotonic() < deadline, t
            await asyncio.sleep(0.1)
    assert len(t["attempts"]) >= ATTEMPTS, len(t["attempts"])
    return proc, base, mid, rrunner


async def static_twin(base: str, mid: str) -> tuple[web.AppRunner, str]:
    """The same page and stylesheet, fetched once from shim and served as bytes by a bare aiohttp
    app: the floor that the browser and loopback alone cost, for a ratio taken in the same run."""
    admin = {"Authorization": basic(*ADMIN)}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/admin/ui/messages/{mid}", headers=admin) as r:
            html = await r.read()
            page_headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "cache-control")}
        css_path = html.split(b'rel="stylesheet" href="')[1].split(b'"')[0].decode()
        async with s.get(f"{base}{css_path}", headers=admin) as r:
            css = await r.read()
            css_headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "cache-control")}

    async def page(request: web.Request) -> web.Response:
        resp = web.Response(body=html, headers=page_headers)
        resp.enable_compression()
        return resp

    async def style(request: web.Request) -> web.Response:
        resp = web.Response(body=css, headers=css_headers)
        resp.enable_compression()
        return resp

    app = web.Application()
    app.router.add_get(f"/admin/ui/messages/{mid}", page)
    app.router.add_get(css_path.split("?")[0], style)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


METRICS_JS = """
const n = performance.getEntriesByType('navigation')[0];
const p = performance.getEntriesByName('first-contentful-paint')[0];
const r = performance.getEntriesByType('resource');
return {htmlTransfer: n.transferSize, htmlBytes: n.decodedBodySize, ttfb: n.responseStart, html: n.responseEnd,
        fcp: p ? p.startTime : null, dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,
        resources: r.map(x => ({name: x.name, transfer: x.transferSize, bytes: x.decodedBodySize})),
        rows: document.querySelectorAll('#ath + table tbody tr').length};
"""


def measure(driver: Any) -> dict[str, Any]:
    """The page's timings once its first paint is recorded (the entry can land just after load)."""
    for _ in range(100):
        m: dict[str, Any] = driver.execute_script(METRICS_JS)
        if m["fcp"] is not None:
            return m
        time.sleep(0.02)
    return m


def new_driver(tmp: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1366,900", f"--user-data-dir={tmp / 'chromium'}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver") or "chromedriver"),
                            options=opts)


def browse(base: str, mid: str, loads: int, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    driver = new_driver(tmp)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": basic(*ADMIN)}})
        url = f"{base}/admin/ui/messages/{mid}"
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        driver.get(url)
        cold = measure(driver)
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
        driver.get(url)  # the stylesheet into the cache
        warm = []
        for _ in range(loads):
            driver.get(url)
            warm.append(measure(driver))
        return warm, cold
    finally:
        driver.quit()


def browse_many(urls: list[str], loads: int, tmp: Path) -> list[list[dict[str, Any]]]:
    """Warm loads of each URL, interleaved (so a noisy moment hits both alike)."""
    driver = new_driver(tmp)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": basic(*ADMIN)}})
        for url in urls:
            driver.get(url)
        out: list[list[dict[str, Any]]] = [[] for _ in urls]
        for _ in range(loads):
            for i, url in enumerate(urls):
                driver.get(url)
                out[i].append(measure(driver))
        return out
    finally:
        driver.quit()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


async def main_async(loads: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="shim-console-bench-"))
    proc, base, mid, rrunner = await prepare(tmp)
    twin, twin_base = await static_twin(base, mid)
    try:
        warm, cold = await asyncio.to_thread(browse, base, mid, loads, tmp)
        path = f"/admin/ui/messages/{mid}"
        pair = await asyncio.to_thread(browse_many, [base + path, twin_base + path], loads, tmp / "pair")
    finally:
        proc.terminate()
        proc.wait(10)
        await rrunner.cleanup()
        await twin.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    css = [r for r in cold["resources"] if "console.css" in r["name"]]
    total_transfer = cold["htmlTransfer"] + sum(r["transfer"] for r in cold["resources"])
    total_bytes = cold["htmlBytes"] + sum(r["bytes"] for r in cold["resources"])
    print(f"timeline page, message with {cold['rows']} attempts (headless Chromium, loopback)")
    print(f"  requests: {1 + len(cold['resources'])} (HTML + {', '.join(r['name'].rsplit('/', 1)[1] for r in cold['resources'])})")
    print(f"  weight, cold cache: {total_transfer / 1024:.1f} KiB transferred (gzip), {total_bytes / 1024:.1f} KiB"
          f" decoded (HTML {cold['htmlBytes'] / 1024:.1f} KiB, CSS {sum(r['bytes'] for r in css) / 1024:.1f} KiB)")
    print(f"  cold cache: first contentful paint {cold['fcp']:.0f} ms, HTML complete {cold['html']:.0f} ms")
    fcp = [w["fcp"] for w in warm if w["fcp"] is not None]
    ttfb = [w["ttfb"] for w in warm]
    print(f"  warm ({len(warm)} loads): first contentful paint median {statistics.median(fcp):.0f} ms,"
          f" p90 {pct(fcp, 0.9):.0f} ms; time to first byte median {statistics.median(ttfb):.1f} ms;"
          f" HTML transferred {statistics.median([w['htmlTransfer'] for w in warm]) / 1024:.1f} KiB")
    shim_fcp = statistics.median([m["fcp"] for m in pair[0]])
    twin_fcp = statistics.median([m["fcp"] for m in pair[1]])
    shim_ttfb = statistics.median([m["ttfb"] for m in pair[0]])
    twin_ttfb = statistics.median([m["ttfb"] for m in pair[1]])
    print(f"  vs the same bytes from a bare aiohttp server (interleaved, {len(pair[0])} loads each): first contentful"
          f" paint {shim_fcp:.0f} vs {twin_fcp:.0f} ms ({shim_fcp / twin_fcp:.2f}x), time to first byte"
          f" {shim_ttfb:.1f} vs {twin_ttfb:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", type=int, default=30)
    args = ap.parse_args()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("console bench skipped: no chromium/chromedriver (apt-get install chromium chromium-driver)")
        return
    os.environ.setdefault("SE_AVOID_STATS", "true")
    asyncio.run(main_async(args.loads))


if __name__ == "__main__":
    main()
