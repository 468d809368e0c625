"""Command line: ``shim serve | check-config | healthcheck | sandbox | receiver | dead-letters | deliveries |
reconcile | report``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web
from pydantic import SecretStr

from shim import __version__
from shim.config import Config, ConfigError, demo_config, load_config, mask_userinfo, masked, parse_listen
from shim.ops import setup_logging
from shim.sandbox.web_sandbox import CallbackTarget, build_sandbox_app

if TYPE_CHECKING:
    from shim.store import Store


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where available: the same asyncio API, markedly less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


log = logging.getLogger("shim")


class StartupError(Exception):
    """shim could not start (port in use, store unreachable): one line, exit 2."""


def _config_path(path: str | None) -> str | None:
    return path or os.environ.get("SHIM_CONFIG") or None


def _load(path: str | None) -> Config:
    path = _config_path(path)
    return load_config(path) if path else demo_config()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def harden_demo(cfg: Config) -> bool:
    """The embedded demo's credentials are public (README, banner). Bound beyond loopback (in a
    container: ``SHIM_HOST=0.0.0.0``) they would open the API and the callback endpoint to anyone
    on the network, so the demo user's ``api_secret`` and the callback password are replaced with
    random ones for this run, shown only in the banner. Returns whether it did."""
    if is_loopback(cfg.server.host):
        return False
    for u in cfg.users:
        u.api_secret = SecretStr(secrets.token_urlsafe(18))
    cfg.callbacks.password = SecretStr(secrets.token_urlsafe(18))
    return True


def probe_url(cfg: Config) -> str:
    """Where this process's own ``/healthz`` answers: a wildcard bind is probed on loopback."""
    host = cfg.server.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host.strip('[]')}]"
    return f"http://{host}:{cfg.server.port}/healthz"


def healthcheck(cfg: Config, timeout: float) -> int:
    """The container's HEALTHCHECK: GET /healthz on the effective host and port (config file from
    ``SHIM_CONFIG`` or the demo, ``SHIM_*`` overrides). Exit 0 when it answers 200, else 1."""
    url = probe_url(cfg)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=timeout) as r:
            status = r.status
    except (OSError, ValueError) as e:
        print(f"shim: healthcheck {url}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"shim: healthcheck {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


async def start_sandbox(cfg: Config, shim_port: int) -> tuple[web.AppRunner, str]:
    """The embedded simulator on an ephemeral loopback port, calling back into shim."""
    creds = {(u.v2_username, u.v2_password.get_secret_value()) for u in cfg.users}
    pw = cfg.callbacks.password.get_secret_value() if cfg.callbacks.password else None
    host = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "::", "") else cfg.server.host
    target = CallbackTarget(f"http://{host}:{shim_port}{cfg.callbacks.path}", cfg.callbacks.username, pw)
    runner = web.AppRunner(build_sandbox_app(creds, target, cfg.sandbox.callback_delay_s),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def start_record(cfg: Config) -> dict[str, Any]:
    """The one startup log line's fields: no secret, the store URL masked."""
    return {"version": __version__, "upstream_mode": cfg.upstream.mode,
            "bind": f"{cfg.server.host}:{cfg.server.port}", "admin_listen": cfg.admin.listen,
            "store": mask_userinfo(cfg.store.url), "users": len(cfg.users)}


def banner(cfg: Config, sandbox_url: str | None, hardened: bool = False) -> str:
    """The embedded demo's banner (credentials and a curl line: the demo user is public, or made
    up for this run when the demo listens beyond loopback)."""
    base = cfg.server.public_url
    lines = [f"shim listening on {base}"]
    if hardened:
        lines.append(f"bound to {cfg.server.host}: the demo's published credentials are replaced by random ones"
                     " for this run (use a config file, SHIM_CONFIG, for fixed credentials)")
    if sandbox_url:
        lines.append(f"upstream: SANDBOX v2 simulator at {sandbox_url} (development aid, no real SMS)")
    else:
        lines.append(f"upstream: {cfg.upstream.base_url}")
    lines.append(f"store: {masked(cfg)['store']['url']}")
    lines.append(f"v2 callbacks: set the application's callback URL to {base}{cfg.callbacks.path}")
    if cfg.users:
        u = cfg.users[0]
        secret = u.api_secret.get_secret_value()
        lines.append(f"user {u.user_id}: api_token={u.api_token} api_secret={secret}")
        lines.append(
            f"try: curl -i -u {u.api_token}:{secret} -H 'Content-Type: application/json' "
            f"-d '{{\"from\":\"+15551230001\",\"to\":\"+15551230002\",\"text\":\"hello\"}}' "
            f"{base}/v1/users/{u.user_id}/messages"
        )
        lines.append(f"then: curl -u {u.api_token}:{secret} {base}/v1/users/{u.user_id}/messages  "
                     "(state and deliveryState follow the sandbox's callbacks)")
        if sandbox_url:
            inbound = json.dumps({"accountId": u.account_id, "applicationId": u.application_id,
                                  "from": "+15557654321", "to": ["+15551230001"], "text": "hi back"})
            lines.append(f"inbound: curl -H 'Content-Type: application/json' -d '{inbound}' {sandbox_url}/sandbox/inbound")
    return "\n".join(lines)


async def until_signalled(on_hup: Callable[[], None] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()


def reload_config(app: web.Application, path: str) -> None:
    """SIGHUP: read the config file again; apply its users, or keep everything and say why."""
    from shim.web_app import apply_reload

    try:
        new = load_config(path)
    except ConfigError as e:
        log.error("config reload refused; the running config stays", extra={"problems": e.problems})
        return
    restart = apply_reload(app, new)
    log.info("config reloaded", extra={"users": len(new.users), "not_applied_until_restart": restart})


async def serve(cfg: Config, demo: bool = False, path: str | None = None) -> None:
    from shim.web_app import build_admin_app, build_app, make_runner

    hardened = demo and harden_demo(cfg)
    sandbox_runner = None
    sandbox_url = None
    runners: list[web.AppRunner] = []
    try:
        if cfg.upstream.mode == "sandbox":
            sandbox_runner, sandbox_url = await start_sandbox(cfg, cfg.server.port)
            cfg.upstream.base_url = sandbox_url
        app = build_app(cfg)
        runner = make_runner(app, cfg, access_log=None, shutdown_timeout=10, handle_signals=False)
        runners.append(runner)
        await runner.setup()
        site = web.TCPSite(runner, cfg.server.host, cfg.server.port, reuse_address=True)
        await site.start()
        if cfg.admin.listen:
            admin_runner = make_runner(build_admin_app(app), cfg, access_log=None, handle_signals=False)
            runners.insert(0, admin_runner)
            await admin_runner.setup()
            host, port = parse_listen(cfg.admin.listen)
            await web.TCPSite(admin_runner, host, port, reuse_address=True).start()
    except Exception as e:
        for r in runners:
            await r.cleanup()
        if sandbox_runner:
            await sandbox_runner.cleanup()
        detail = " ".join(mask_userinfo(str(e)).split()) or type(e).__name__
        raise StartupError(f"cannot start: {type(e).__name__}: {detail}"[:300]) from None
    if demo:
        print(banner(cfg, sandbox_url, hardened), flush=True)
    sandbox_note = " (SANDBOX upstream: the built-in v2 simulator, no real SMS)" if sandbox_url else ""
    log.info(f"shim started{sandbox_note}", extra=start_record(cfg))
    # Startup objects (modules, schemas, config) never die: keep them out of GC passes, which
    # otherwise walk them on every full collection and show up as tail latency.
    gc.collect()
    gc.freeze()
    # The store's writer thread shares the GIL with the event loop; hand it over sooner than
    # the default 5 ms so a request never waits behind a whole batch of store work.
    sys.setswitchinterval(0.0005)
    await until_signalled(functools.partial(reload_config, app, path) if path else None)
    # Graceful: stop accepting, finish in-flight requests, stop workers, release leases.
    log.info("shim stopping: no new connections, draining in-flight requests and deliveries")
    for r in runners:
        await r.cleanup()
    log.info("shim stopped")
    if sandbox_runner:
        await sandbox_runner.cleanup()


async def run_sandbox(args: argparse.Namespace) -> None:
    target = None
    if args.callback_url:
        target = CallbackTarget(args.callback_url, args.callback_username, args.callback_password)
    creds = None
    if args.username:
        creds = {(args.username, args.password or "")}
    runner = web.AppRunner(build_sandbox_app(creds, target, args.delay), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"shim sandbox (v2 simulator) on http://{args.host}:{args.port}", flush=True)
    await until_signalled()
    await runner.cleanup()


async def run_receiver(host: str, port: int) -> None:
    """A callback receiver for the sandbox loop: prints each request as one JSON line, answers 200."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.text()
        print(json.dumps({"method": request.method, "path": request.path, "query": request.query_string,
                          "webhook-id": request.headers.get("webhook-id"), "body": body}), flush=True)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"shim receiver on http://{host}:{port} (prints every callback it receives)", flush=True)
    await until_signalled()
    await runner.cleanup()


async def dead_letters(cfg: Config, action: str, ids: list[int]) -> Any:
    """``ids`` empty with ``replay`` means every dead letter (the CLI asks for ``--all``)."""
    from shim.ops import scrub

    async with existing_store(cfg, "dead-letters") as store:
        if action == "list":
            return [vars(d) | {"url": mask_userinfo(d.url), "last_error": scrub(d.last_error or "")}
                    for d in await store.dead_letters(1000)]
        return {"replayed": await store.replay(ids or None)}


async def deliveries(cfg: Config, action: str, fields: dict[str, Any], match_all: bool, dry_run: bool) -> Any:
    """``shim deliveries replay|discard``: on an existing store only (never creates one)."""
    from shim.ops._deliveries import parse_filter

    try:
        f = parse_filter({k: v for k, v in fields.items() if v is not None})
    except ValueError as e:
        raise ConfigError(str(e).replace("userId", "--user").replace("outcome", "--outcome")) from None
    if f.empty() and not match_all:
        raise ConfigError(f"deliveries {action} needs a filter (--host, --user, --since, --until, --outcome, ids)"
                          " or --all")
    if action == "discard" and f.outcome not in (None, "dead"):
        raise ConfigError("deliveries discard removes dead letters only (--outcome dead)")
    async with existing_store(cfg, "deliveries") as store:
        if action == "replay":
            count = await store.replay_matching(f, dry_run)
        else:
            count = await store.discard_matching(f, dry_run)
    return {"matched": count, "dryRun": True} if dry_run else {"replayed" if action == "replay" else "discarded": count}


@contextlib.asynccontextmanager
async def existing_store(cfg: Config, verb: str) -> AsyncIterator[Store]:
    """The store of ``cfg``, opened for an operator command: never created (a typo in
    ``store.url`` must not yield an empty store and a misleading answer)."""
    from shim.gateway import Gateway
    from shim.store import open_store

    try:
        exists = await store_exists(cfg.store.url)
    except Exception as e:
        raise StartupError(f"cannot open the store: {type(e).__name__}") from None
    if not exists:
        raise StartupError(f"no store at {mask_userinfo(cfg.store.url)} (shim {verb} never creates one)")
    store = open_store(cfg.store.url, Gateway(cfg), pool_size=2)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def store_exists(url: str) -> bool:
    """Whether ``store.url`` names a store shim created (operator commands never create one)."""
    if url.startswith("sqlite:"):
        from shim.store._sqlite import sqlite_path

        path = sqlite_path(url)
        return path == ":memory:" or await asyncio.to_thread(os.path.isfile, path)
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        return bool(await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"))
    finally:
        await conn.close()


async def reconcile(cfg: Config, user_id: str | None, since: str | None, dry_run: bool) -> dict[str, Any]:
    """One reconcile run on the store (``shim reconcile``): what it looked up, repaired, gave up on."""
    from shim.core import parse_time_us
    from shim.ops import Metrics
    from shim.reconcile import Reconciler
    from shim.upstream import UpstreamClient

    since_us = None
    if since is not None:
        since_us = parse_time_us(since)
        if since_us is None:
            raise ConfigError(f"--since: not a date or ISO-8601 time: {since!r}")
    if user_id is not None and cfg.user(user_id) is None:
        raise ConfigError(f"--user: no users[] entry has user_id {user_id!r}")
    if cfg.upstream.mode == "sandbox":
        raise ConfigError("upstream.mode: sandbox: the embedded simulator lives in `shim serve`; "
                          "point upstream.base_url at a v2 API (mode bandwidth) to reconcile")
    async with existing_store(cfg, "reconcile") as store:
        upstream = UpstreamClient(cfg.upstream, cfg.upstream.base_url)
        await upstream.start()
        try:
            report = await Reconciler(cfg, store, upstream, Metrics()).run(
                user_id=user_id, since_us=since_us, dry_run=dry_run)
            return report.as_dict() | {"balance": await store.outbound_balance(user_id)}
        finally:
            await upstream.close()


async def migration_report(cfg: Config) -> dict[str, Any]:
    """The migration report from the store (``shim report``): what every replica flushed."""
    from shim.ops import report

    async with existing_store(cfg, "report") as store:
        return report(await store.usage_rows(), {}, [u.user_id for u in cfg.users])


def report_table(data: dict[str, Any]) -> str:
    """One block per user: its totals, then each feature with its count and last-seen time."""
    lines: list[str] = []
    for user in data["users"]:
        share = "-" if user["nativeShare"] is None else f"{user['nativeShare'] * 100:.1f}%"
        lines.append(f"user {user['userId']}: v1 calls {user['v1Calls']}, v1 messages {user['v1Messages']}, "
                     f"native messages {user['nativeMessages']} (native share {share})"
                     + ("  -- ready to leave shim" if user["v1Calls"] == 0 else ""))
        width = max((len(f["feature"]) for f in user["features"]), default=7)
        lines.append(f"  {'feature':<{width}}  {'count':>8}  last seen")
        for f in user["features"]:
            lines.append(f"  {f['feature']:<{width}}  {f['count']:>8}  {f['lastSeen'] or '-'}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shim", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="run shim")
    p.add_argument("--config", help="YAML config (default: $SHIM_CONFIG, else embedded demo)")
    p = sub.add_parser("check-config", help="validate a config and print it, secrets masked")
    p.add_argument("path")
    p = sub.add_parser("healthcheck", help="GET /healthz on the configured host and port (exit 0 when healthy)")
    p.add_argument("--config", help="YAML config (default: $SHIM_CONFIG, else embedded demo)")
    p.add_argument("--timeout", type=float, default=3.0)
    p = sub.add_parser("receiver", help="print every callback received (development aid for the sandbox loop)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p = sub.add_parser("sandbox", help="run the v2 simulator alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--callback-url")
    p.add_argument("--callback-username")
    p.add_argument("--callback-password")
    p.add_argument("--delay", type=float, default=0.05)
    p = sub.add_parser("dead-letters", help="list or replay dead-lettered callbacks")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--all", action="store_true", help="replay every dead letter")
    p.add_argument("--config")
    p = sub.add_parser("deliveries", help="replay or discard callbacks by filter (a running shim picks replays up)")
    p.add_argument("action", choices=["replay", "discard"])
    p.add_argument("ids", nargs="*", type=int, help="outbox ids (as listed by /admin/deliveries)")
    p.add_argument("--host", help="callback host (host or host:port)")
    p.add_argument("--user", help="users[].user_id")
    p.add_argument("--since", help="last changed at or after this time (ISO-8601 or yyyy-MM-dd)")
    p.add_argument("--until", help="last changed before this time (ISO-8601 or yyyy-MM-dd)")
    p.add_argument("--outcome", choices=["dead", "delivered", "pending"])
    p.add_argument("--all", action="store_true", help="match every callback (no filter)")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed or discarded")
    p.add_argument("--config")
    p = sub.add_parser("reconcile", help="repair messages whose v2 events never came (v2 message search)")
    p.add_argument("--user", help="only this users[].user_id (does not move the periodic run's cursor)")
    p.add_argument("--since", help="only messages sent since this time (ISO-8601 or yyyy-MM-dd)")
    p.add_argument("--dry-run", action="store_true", help="look up and report, change nothing")
    p.add_argument("--config")
    p = sub.add_parser("report", help="the migration report: v1 features each user's app still uses")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true", help="print the JSON of GET /admin/migration instead of a table")
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("SHIM_LOG_LEVEL", "INFO"))
    try:
        if args.cmd == "check-config":
            cfg = load_config(args.path)
            print(yaml.safe_dump(masked(cfg), sort_keys=False), end="")
            return 0
        if args.cmd == "sandbox":
            asyncio.run(run_sandbox(args))
            return 0
        if args.cmd == "receiver":
            asyncio.run(run_receiver(args.host, args.port))
            return 0
        cfg = _load(args.config)
        if args.cmd == "healthcheck":
            return healthcheck(cfg, args.timeout)
        if args.cmd == "serve":
            demo = _config_path(args.config) is None
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(serve(cfg, demo, _config_path(args.config)))
            return 0
        if args.cmd == "reconcile":
            result = asyncio.run(reconcile(cfg, args.user, args.since, args.dry_run))
            print(json.dumps(result, indent=2))
            return 0 if result["errors"] == 0 and not result["skipped"] else 1
        if args.cmd == "report":
            data = asyncio.run(migration_report(cfg))
            print(json.dumps(data, indent=2) if args.json else report_table(data), end="" if args.json else "\n")
            return 0
        if args.cmd == "deliveries":
            fields = {"host": args.host, "userId": args.user, "since": args.since, "until": args.until,
                      "outcome": args.outcome, "ids": args.ids or None}
            result = asyncio.run(deliveries(cfg, args.action, fields, args.all, args.dry_run))
            print(json.dumps(result, indent=2))
            return 0
        if args.action == "replay" and not args.ids and not args.all:
            print("shim: dead-letters replay needs ids or --all", file=sys.stderr)
            return 2
        if args.action == "replay" and args.ids and args.all:
            print("shim: dead-letters replay takes ids or --all, not both", file=sys.stderr)
            return 2
        result = asyncio.run(dead_letters(cfg, args.action, args.ids))
        print(json.dumps(result, indent=2))
        return 0
    except ConfigError as e:
        for problem in e.problems:
            print(f"shim: {problem}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"shim: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
