"""The delivery log, a message's timeline, and replay/discard by filter, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shim.core import DeliverySpec
from shim.gateway import Gateway
from shim.keys import STORE
from shim.store import open_store

from ..conftest import Harness, auth, wait_until
from ..test_config import parse_config, run_cli

CREDS = auth("admin", "adm1n-pass-long")


async def admin(h: Harness, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    r = await h.session.request(method, f"{h.url}{path}", headers=CREDS, **kw)
    return r.status, await r.json()


async def test_timeline_replay_and_discard(make_harness: Any) -> None:
    h = await make_harness(admin={"username": "admin", "password": "adm1n-pass-long"})
    base = h.receiver.url.replace("http://", "http://hookuser:hook-pass-123@")
    host = h.receiver.url.removeprefix("http://")
    h.receiver.script["/primary"] = [500]
    h.receiver.headers["/fallback"] = {"Content-Type": "text/plain"}
    mid = await h.send(callbackUrl=f"{base}/primary", fallbackUrl=f"{h.receiver.url}/fallback")

    async def delivered() -> bool:
        status, body = await admin(h, "GET", f"/admin/messages/{mid}/timeline")
        return status == 200 and bool(body["callbacks"]) and all(c["status"] == "delivered" for c in body["callbacks"])

    await wait_until(delivered)
    status, t = await admin(h, "GET", f"/admin/messages/{mid}/timeline")
    assert t["message"]["id"] == mid and t["events"], t
    (cb,) = t["callbacks"]
    assert cb["url"] == f"http://hookuser:***@{host}/primary" and cb["eventId"] == f"evt_{mid}_sent"
    assert [(a["target"], a["status"], a["outcome"]) for a in t["attempts"]] == [
        ("primary", 500, "http-error"), ("fallback", 200, "ok")]
    assert all(a["host"] == host and a["latencyMs"] >= 0 and a["eventId"] == cb["eventId"] for a in t["attempts"])
    r = await h.session.get(f"{h.url}/admin/messages/{mid}/timeline", headers=CREDS)
    text = await r.text()
    assert "hook-pass-123" not in text, text
    status, _ = await admin(h, "GET", "/admin/messages/nope/timeline")
    assert status == 404

    # A second message whose callback dies: its host is down.
    h.receiver.script["/down"] = [500]
    dead_mid = await h.send(callbackUrl=f"{h.receiver.url}/down")

    async def dead() -> bool:
        status, rows = await admin(h, "GET", "/admin/deliveries", params={"status": "dead"})
        return status == 200 and len({r["eventId"] for r in rows}) == 1

    await wait_until(dead)
    status, rows = await admin(h, "GET", "/admin/deliveries", params={"messageId": dead_mid, "limit": "2"})
    assert status == 200 and len(rows) == 2 and {r["callbackStatus"] for r in rows} == {"dead"}
    status, rows = await admin(h, "GET", "/admin/deliveries", params={"host": host, "status": "500"})
    assert status == 200 and len(rows) == 5  # 1 primary + 4 dead-letter attempts
    for bad in ({"limit": "0"}, {"status": "nope"}, {"since": "yesterday"}, {"color": "red"}):
        status, _ = await admin(h, "GET", "/admin/deliveries", params=bad)
        assert status == 400, bad

    # Discard takes dead letters only; dry-run counts what the real run does.
    status, body = await admin(h, "POST", "/admin/deliveries/discard", json={"host": host, "dryRun": True})
    assert (status, body) == (200, {"matched": 1, "dryRun": True})
    status, body = await admin(h, "POST", "/admin/deliveries/discard", json={"host": host, "outcome": "delivered"})
    assert status == 400

    # The host recovers: replay everything sent to it (delivered and dead): same webhook-ids again.
    h.receiver.script["/down"] = [200]
    status, body = await admin(h, "POST", "/admin/deliveries/replay", json={})
    assert status == 400  # a filter, ids or "all" is needed
    status, body = await admin(h, "POST", "/admin/deliveries/replay", json={"host": host, "dryRun": True})
    assert (status, body) == (200, {"matched": 2, "dryRun": True})
    before = {p: len(h.receiver.at(p)) for p in ("/primary", "/fallback", "/down")}
    status, body = await admin(h, "POST", "/admin/deliveries/replay", json={"host": host})
    assert (status, body) == (200, {"replayed": 2})

    async def sent_again() -> bool:
        _, rows = await admin(h, "GET", "/admin/deliveries", params={"host": host, "status": "delivered"})
        return len({r["eventId"] for r in rows}) == 2 and len(h.receiver.at("/down")) > before["/down"]

    await wait_until(sent_again)
    assert h.receiver.at("/down")[-1].headers["webhook-id"] == f"evt_{dead_mid}_sent"
    assert h.receiver.at("/fallback")[-1].headers["webhook-id"] == f"evt_{mid}_sent"
    assert len(h.receiver.at("/fallback")) == before["/fallback"] + 1
    status, body = await admin(h, "POST", "/admin/deliveries/discard", json={"host": host})
    assert (status, body) == (200, {"discarded": 0})  # nothing dead any more
    assert (await h.app[STORE].outbox_counts())["delivered"] == 2


async def test_discard_removes_dead_letters_only(make_harness: Any) -> None:
    h = await make_harness(admin={"username": "admin", "password": "adm1n-pass-long"})
    h.receiver.script["/down"] = [500]
    await h.send(callbackUrl=f"{h.receiver.url}/down")
    ok_mid = await h.send(callbackUrl=f"{h.receiver.url}/ok")

    async def settled() -> bool:
        counts = await h.app[STORE].outbox_counts()
        return counts == {"pending": 0, "delivered": 1, "dead": 1}

    await wait_until(settled)
    status, body = await admin(h, "POST", "/admin/deliveries/discard", json={"userId": "u-test", "dryRun": True})
    assert (status, body) == (200, {"matched": 1, "dryRun": True})
    status, body = await admin(h, "POST", "/admin/deliveries/discard", json={"userId": "u-test"})
    assert (status, body) == (200, {"discarded": 1})
    assert await h.app[STORE].outbox_counts() == {"pending": 0, "delivered": 1, "dead": 0}
    status, t = await admin(h, "GET", f"/admin/messages/{ok_mid}/timeline")
    assert [c["status"] for c in t["callbacks"]] == ["delivered"]


async def test_deliveries_cli(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    cfg = tmp_path / "shim.yaml"
    cfg.write_text(f"upstream: {{mode: sandbox}}\nstore:\n  url: sqlite:///{db}\n")
    res = run_cli("deliveries", "replay", "--host", "127.0.0.1", "--config", str(cfg))
    assert res.returncode == 2 and "no store" in res.stderr and not db.exists()
    store = open_store(f"sqlite:///{db}", Gateway(parse_config({})))
    await store.open()
    await store.enqueue([DeliverySpec(event_id=f"e{i}", order_key=f"k{i}", url=f"http://127.0.0.{i}:9/x", body={})
                         for i in (1, 2)])
    for d in await store.claim("w", 10, 5_000_000):
        await store.mark_failed(d.id, "w", "HTTP 500", None)
    await store.close()
    res = run_cli("deliveries", "replay", "--config", str(cfg))
    assert res.returncode == 2 and "--all" in res.stderr
    res = run_cli("deliveries", "discard", "--outcome", "delivered", "--config", str(cfg))
    assert res.returncode == 2 and "dead letters only" in res.stderr
    res = run_cli("deliveries", "discard", "--host", "127.0.0.1", "--dry-run", "--config", str(cfg))
    assert res.returncode == 0 and '"matched": 1' in res.stdout, res.stderr
    res = run_cli("deliveries", "discard", "--host", "127.0.0.1", "--config", str(cfg))
    assert res.returncode == 0 and '"discarded": 1' in res.stdout
    res = run_cli("deliveries", "replay", "--outcome", "dead", "--user", "nobody", "--config", str(cfg))
    assert res.returncode == 0 and '"replayed": 0' in res.stdout
    res = run_cli("deliveries", "replay", "--all", "--config", str(cfg))
    assert res.returncode == 0 and '"replayed": 1' in res.stdout
    res = run_cli("dead-letters", "list", "--config", str(cfg))
    assert res.returncode == 0 and res.stdout.strip() == "[]"
