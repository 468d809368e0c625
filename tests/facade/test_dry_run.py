"""Per-user mode ``dry-run`` (SPEC §8): validated and translated as live, checked against v2's
official spec, stored and answered as v1 would, nothing sent; callbacks simulated. Changed at run
time by the admin API, for every replica."""

from __future__ import annotations

from typing import Any

import pytest

from shim.keys import CONFIG, STORE
from shim.ops import web_ops

from ..conftest import OTHER_USER, USER, Harness, HarnessFactory, auth, sql_rows, wait_until

ADMIN = {"username": "admin", "password": "adm1n-pass-long"}
ADMIN_AUTH = auth("admin", "adm1n-pass-long")


async def _dry_harness(make_harness: HarnessFactory) -> Harness:
    return await make_harness(admin=ADMIN, users=[
        USER | {"mode": "dry-run", "incoming": {"url": "{receiver}/incoming"}}, OTHER_USER])


async def test_dry_run_answers_as_v1_sends_nothing_and_simulates_callbacks(make_harness: HarnessFactory) -> None:
    h = await _dry_harness(make_harness)
    cb = f"{h.receiver.url}/cb"
    resp = await h.post({"from": "+15551230001", "to": "+15551230002", "text": "hi", "callbackUrl": cb,
                         "receiptRequested": "all", "tag": "t1"})
    assert resp.status == 201
    location = resp.headers["Location"]
    mid = location.rsplit("/", 1)[1]
    assert location == f"{h.url}/v1/users/u-test/messages/{mid}" and len(mid) == 29
    failed = await h.send(to="+15550004720", callbackUrl=cb, receiptRequested="error")
    none_id = await h.send(callbackUrl=cb)  # receiptRequested none: the sent callback only

    await wait_until(lambda: len(h.receiver.at("/cb")) == 4)
    by_id: dict[str, list[Any]] = {}
    for r in h.receiver.at("/cb"):
        by_id.setdefault(r.json["messageId"], []).append(r.json)
    assert [(c["state"], c.get("deliveryState")) for c in by_id[mid]] == [("sent", None), ("sent", "delivered")]
    assert by_id[mid][0]["tag"] == "t1"
    assert [(c["state"], c.get("deliveryCode")) for c in by_id[failed]] == [("error", "720")]
    assert [c["state"] for c in by_id[none_id]] == ["sent"]
    assert h.v2_requests == []  # nothing sent upstream

    stored = await h.stored(mid)
    assert stored["shimDryRun"] is True and stored["deliveryState"] == "delivered" and stored["tag"] == "t1"
    _, listed = await h.get_json(h.messages_url)
    assert {m["id"] for m in listed} == {mid, failed, none_id} and all(m["shimDryRun"] for m in listed)
    # Same v1 validation as live.
    resp = await h.post({"from": "+15551230001", "to": "+15551230002", "text": "x", "receiptRequested": "bogus"})
    assert resp.status == 400
    # A batch works the same way.
    resp = await h.post([{"from": "+15551230001", "to": "+15551230002", "text": "a"}] * 2)
    assert resp.status == 202 and all(r["result"] == "accepted" for r in await resp.json())
    assert h.v2_requests == []

    report = await (await h.session.get(f"{h.url}/admin/migration", headers=ADMIN_AUTH)).json()
    (user,) = [u for u in report["users"] if u["userId"] == "u-test"]
    assert {f["feature"]: f["count"] for f in user["features"]}["dry-run:message"] == 5


async def test_v2_spec_check_refuses_what_v2_would(make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The v2 request is checked against the packaged spec: what v2 would refuse is the v1 error a
    live send would have got, and nothing is stored."""
    import shim.facade._send as send_mod

    h = await _dry_harness(make_harness)
    real = send_mod.to_v2_request
    monkeypatch.setattr(send_mod, "to_v2_request", lambda *a: real(*a) | {"priority": "urgent!"})
    resp = await h.post({"from": "+15551230001", "to": "+15551230002", "text": "x"})
    assert resp.status == 400
    assert "priority" in (await resp.json())["message"]
    assert await sql_rows(h.app[STORE], "SELECT 1 FROM messages") == []


async def test_mode_changes_at_run_time_for_every_replica(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin=ADMIN)
    url = f"{h.url}/admin/users/u-test/mode"
    assert (await h.session.post(url, json={"mode": "dry-run"})).status == 401
    assert (await h.session.post(url, json={"mode": "paused"}, headers=ADMIN_AUTH)).status == 400
    assert (await h.session.post(f"{h.url}/admin/users/nobody/mode", json={"mode": "live"},
                                 headers=ADMIN_AUTH)).status == 404
    resp = await h.session.post(url, json={"mode": "dry-run"}, headers=ADMIN_AUTH)
    assert resp.status == 200 and await resp.json() == {"userId": "u-test", "mode": "dry-run"}
    dry = await h.send()
    assert h.v2_requests == [] and (await h.stored(dry))["shimDryRun"] is True
    resp = await h.session.post(url, json={"mode": "live"}, headers=ADMIN_AUTH)
    assert resp.status == 200
    live = await h.send()
    assert len(h.v2_requests) == 1 and "shimDryRun" not in await h.stored(live)

    # Another replica on the same store picks the stored mode up (at start, then every MODE_REFRESH_S).
    await h.app[STORE].set_user_mode("u-test", "dry-run")
    await web_ops.sync_modes(h.app)
    user = h.app[CONFIG].user("u-test")
    assert user is not None and user.mode == "dry-run"
