"""Operations: health, readiness, metrics that move with traffic, JSON logs without secrets."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from shim import __version__
from shim.keys import ACCESS_LOG, STORE, UPSTREAM
from shim.ops import JsonFormatter

from ..conftest import CB_PASS, USER, Harness, auth, free_port, wait_until


async def test_healthz_and_readyz(harness: Harness) -> None:
    r = await harness.session.get(f"{harness.url}/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"
    r = await harness.session.get(f"{harness.url}/readyz")
    assert r.status == 200 and (await r.json())["checks"] == {"store": "ok"}
    metrics = await (await harness.session.get(f"{harness.url}/metrics")).text()
    assert "shim_upstream_up 1.0" in metrics
    assert f'shim_build_info{{upstream_mode="sandbox",version="{__version__}"}} 1.0' in metrics
    # Bandwidth unreachable: still ready (ingest must keep working); the gauge says so.
    harness.app[UPSTREAM].base_url = f"http://127.0.0.1:{free_port()}"
    r = await harness.session.get(f"{harness.url}/readyz")
    assert r.status == 200 and (await r.json())["checks"] == {"store": "ok"}
    metrics = await (await harness.session.get(f"{harness.url}/metrics")).text()
    assert "shim_upstream_up 0.0" in metrics
    await harness.app[STORE].close()
    r = await harness.session.get(f"{harness.url}/readyz")
    assert r.status == 503 and (await r.json())["checks"] == {"store": "unreachable"}


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_move_with_traffic(harness: Harness) -> None:
    async def scrape() -> str:
        r = await harness.session.get(f"{harness.url}/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()

    before = await scrape()
    await harness.send(callbackUrl=f"{harness.receiver.url}/cb")
    await harness.post(None, raw=b"{bad")
    await wait_until(lambda: len(harness.receiver.at("/cb")) == 1)
    await wait_until(lambda: harness.sandbox_state.callbacks_posted >= 1)

    async def delivered() -> bool:
        return metric(await scrape(), "shim_callback_deliveries_total", outcome="delivered") >= 1

    await wait_until(delivered)
    after = await scrape()
    route = "/v1/users/{userId}/messages"
    assert metric(after, "shim_http_requests_total", route=route, status="201") == \
        metric(before, "shim_http_requests_total", route=route, status="201") + 1
    assert metric(after, "shim_http_requests_total", route=route, status="400") >= 1
    assert metric(after, "shim_upstream_latency_seconds_count", op="send") >= 1
    assert metric(after, "shim_callback_events_ingested_total") >= 1
    assert "shim_callback_queue_depth" in after and "shim_callback_dead_letters" in after


async def test_logs_are_json_with_request_id_and_no_secrets(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    access: list[str] = []
    harness.app[ACCESS_LOG].write = access.append
    harness.receiver.script["/cb"] = [500]
    cb = harness.receiver.url.replace("http://", "http://hookuser:hook-pass-123@") + "/cb"
    resp = await harness.post({"from": "+15551230001", "to": "+15551230002", "text": "x", "callbackUrl": cb},
                              headers={"X-Request-Id": "req-abc-1"})
    assert resp.status == 201 and resp.headers["X-Request-Id"] == "req-abc-1"
    await wait_until(lambda: len(harness.receiver.at("/cb")) >= 2)
    await harness.post({"from": "+1"}, auth=auth("t-test-token", "guess-secret"))
    await harness.session.post(f"{harness.url}/callbacks/v2", data=b"[]", headers=auth("bandwidth", CB_PASS))
    harness.cfg.users[0].v2_password = type(harness.cfg.users[0].v2_password)("wrong-v2-pass")
    await harness.post({"from": "+15551230001", "to": "+15551230002", "text": "x"})
    fmt = JsonFormatter()
    harness.app[ACCESS_LOG].flush()
    lines = [fmt.format(r) for r in caplog.records] + "".join(access).splitlines()
    text = "\n".join(lines)
    import json as _json
    records = [_json.loads(line) for line in lines]
    assert any(r.get("request_id") == "req-abc-1" and r["msg"] == "request" and r["logger"] == "shim.access"
               and r["user_id"] == "u-test" and r["status"] == 201 for r in records)
    assert any(r["msg"] == "callback delivery failed" for r in records)
    secrets = [USER["api_secret"], USER["v2_password"], CB_PASS, "hook-pass-123", "guess-secret", "wrong-v2-pass",
               auth(USER["api_token"], USER["api_secret"])["Authorization"].split()[1]]
    for secret in secrets:
        assert secret not in text, secret
    assert not re.search(r"Basic [A-Za-z0-9+/=]{8,}", text)


async def test_admin_requires_credentials_when_configured(make_harness: Any) -> None:
    h = await make_harness(admin={"username": "admin", "password": "adm1n-pass-long"})
    r = await h.session.get(f"{h.url}/admin/dead-letters")
    assert r.status == 401
    r = await h.session.get(f"{h.url}/admin/dead-letters", headers=auth("admin", "adm1n-pass-long"))
    assert r.status == 200 and await r.json() == []
    for limit in ("-1", "0", "abc", "1.5", "100000000000000000000", "1001"):
        r = await h.session.get(f"{h.url}/admin/dead-letters", params={"limit": limit},
                                headers=auth("admin", "adm1n-pass-long"))
        assert r.status == 400 and (await r.json())["category"] == "bad-request", limit
    r = await h.session.get(f"{h.url}/admin/dead-letters", params={"limit": "1000"}, headers=auth("admin", "adm1n-pass-long"))
    assert r.status == 200


async def test_admin_is_off_without_credentials_even_for_loopback(harness: Harness) -> None:
    for method, path in (("GET", "/admin/dead-letters"), ("POST", "/admin/dead-letters/replay")):
        r = await harness.session.request(method, f"{harness.url}{path}", json={"all": True})
        assert r.status == 404 and (await r.json())["category"] == "not-found"


async def test_admin_on_its_own_listener_only(make_harness: Any) -> None:
    from aiohttp.test_utils import TestServer

    from shim.web_app import build_admin_app

    port = free_port()
    h = await make_harness(admin={"username": "admin", "password": "adm1n-pass-long", "listen": f"127.0.0.1:{port}"})
    creds = auth("admin", "adm1n-pass-long")
    r = await h.session.get(f"{h.url}/admin/dead-letters", headers=creds)
    assert r.status == 404  # not on the main port
    server = TestServer(build_admin_app(h.app), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        r = await h.session.get(f"http://127.0.0.1:{port}/admin/dead-letters", headers=creds)
        assert r.status == 200 and await r.json() == []
        r = await h.session.get(f"http://127.0.0.1:{port}/admin/dead-letters")
        assert r.status == 401
        r = await h.session.post(f"http://127.0.0.1:{port}/admin/dead-letters/replay", json={"all": True}, headers=creds)
        assert r.status == 200 and await r.json() == {"replayed": 0}
    finally:
        await server.close()


async def test_empty_basic_password_never_authenticates(make_harness: Any) -> None:
    # Configured with empty passwords (sandbox mode lets that through): `curl -u tok:` still gets 401.
    h = await make_harness(admin={"username": "admin", "password": ""}, callbacks__password="")
    r = await h.session.get(f"{h.url}/admin/dead-letters", headers=auth("admin", ""))
    assert r.status == 404  # admin without a password is off
    r = await h.session.post(f"{h.url}/callbacks/v2", data=b"[]", headers=auth("bandwidth", ""))
    assert r.status == 401
    r = await h.session.get(h.messages_url, headers=auth(USER["api_token"], ""))
    assert r.status == 401


async def test_request_id_reaches_upstream_and_callbacks(harness: Harness) -> None:
    # The simulator stays quiet: the only v2 event for this message is the one posted below.
    harness.sandbox_state.target = None
    resp = await harness.post({"from": "+15551230001", "to": "+15551230002", "text": "x", "receiptRequested": "all",
                               "callbackUrl": f"{harness.receiver.url}/rid"},
                              headers={"X-Request-Id": "send-req-7"})
    assert resp.status == 201 and resp.headers["X-Request-Id"] == "send-req-7"
    assert harness.v2_headers[-1]["X-Request-Id"] == "send-req-7"
    mid = resp.headers["Location"].rsplit("/", 1)[1]
    # v2's status event for that message, in an ingest request with its own id: the v1 callbacks
    # it causes (sent + receipt) carry the ingest request's id.
    event = {"type": "message-delivered", "time": "2026-01-01T00:00:01Z", "to": "+15551230002", "description": "ok",
             "message": {"id": mid, "owner": "+15551230001", "applicationId": USER["application_id"],
                         "time": "2026-01-01T00:00:00Z", "segmentCount": 1, "direction": "out",
                         "to": ["+15551230002"], "from": "+15551230001", "text": ""}}
    r = await harness.session.post(f"{harness.url}/callbacks/v2", json=[event],
                                   headers=auth("bandwidth", CB_PASS) | {"X-Request-Id": "ingest-req-9"})
    assert r.status == 200 and r.headers["X-Request-Id"] == "ingest-req-9"
    await wait_until(lambda: len(harness.receiver.at("/rid")) == 2)
    got = [(c.headers["webhook-id"], c.headers.get("X-Request-Id")) for c in harness.receiver.at("/rid")]
    assert got == [(f"evt_{mid}_sent", "ingest-req-9"), (f"evt_{mid}_receipt", "ingest-req-9")]
    assert harness.sandbox_state.callbacks_posted == 0


async def test_retention_runs_on_schedule(make_harness: Any) -> None:
    # text after ~0.4 s, records after ~1.7 s, checked every 0.1 s
    h = await make_harness(retention={"text_days": 0.000005, "purge_days": 0.00002, "interval_s": 0.1})
    mid = await h.send(text="short-lived")

    async def text_cleared() -> bool:
        return (await h.stored(mid))["text"] == ""

    await wait_until(text_cleared, timeout=10)

    async def purged() -> bool:
        r = await h.session.get(f"{h.messages_url}/{mid}", headers=h.auth)
        return r.status == 404

    await wait_until(purged, timeout=10)


async def test_metrics_scrape_reads_gauges_the_sweeper_refreshes(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    store = harness.app[STORE]
    full_counts = 0
    original = store.outbox_counts

    async def counted() -> dict[str, int]:
        nonlocal full_counts
        full_counts += 1
        return await original()

    monkeypatch.setattr(store, "outbox_counts", counted)
    harness.receiver.script["/down"] = [500]
    await harness.send(callbackUrl=f"{harness.receiver.url}/down")

    async def dead_shown() -> bool:
        r = await harness.session.get(f"{harness.url}/metrics")
        text = await r.text()
        return metric(text, "shim_callback_dead_letters") == 1 and metric(text, "shim_callback_queue_depth") == 0

    await wait_until(dead_shown)
    assert full_counts == 0  # neither a scrape nor the sweeper counts the whole outbox
