"""The migration report (SPEC §8): per user, the v1 features the app still uses, with counts and
last-seen times, from in-memory counters flushed to the store (so every replica's and every
restart's counts add up)."""

from __future__ import annotations

from typing import Any

from shim.cli import migration_report, report_table
from shim.keys import STORE, USAGE
from shim.ops import UsageTracker, path_shape, report

from ..conftest import USER, Harness, HarnessFactory, auth, sql_rows

ADMIN = auth("admin", "adm1n-pass-long")


async def _report(h: Harness) -> dict[str, Any]:
    resp = await h.session.get(f"{h.url}/admin/migration", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    (user,) = [u for u in body["users"] if u["userId"] == "u-test"]
    assert isinstance(user, dict)
    return user


def _counts(user: dict[str, Any]) -> dict[str, int]:
    return {f["feature"]: f["count"] for f in user["features"]}


async def test_report_counts_each_v1_feature_and_the_native_share(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin={"username": "admin", "password": "adm1n-pass-long"})
    cb = f"{h.receiver.url}/cb"
    mid = await h.send(receiptRequested="all", callbackUrl=cb, callbackHttpMethod="GET", callbackTimeout=2000,
                       fallbackUrl=f"{h.receiver.url}/fb")
    await h.send(media=[f"{h.url}/v1/users/u-test/media/pic.png"])
    resp = await h.post([{"from": "+15551230001", "to": "+15551230002", "text": "a"},
                         {"from": "+15551230001", "to": "+15551230002", "text": "b", "receiptRequested": "error"}])
    assert resp.status == 202
    await h.stored(mid)
    r, _ = await h.get_json(h.messages_url, params={"from": "+15551230001", "page": "0"})
    assert r.status == 200
    r = await h.session.patch(f"{h.messages_url}/{mid}", json={"text": ""}, headers=h.auth)
    assert r.status == 200
    r = await h.session.get(f"{h.url}/v1/users/u-test/calls/c-123", headers=h.auth)
    assert r.status == 404
    r = await h.session.get(f"{h.url}/v1/users/u-test/calls/c-123", headers=auth("t-test-token", "wrong"))
    assert r.status == 404  # no valid credentials: nobody's usage
    v2 = {"applicationId": USER["application_id"], "from": "+15551230001", "to": ["+15551230003"], "text": "v2"}
    r = await h.session.post(f"{h.url}/api/v2/users/{USER['account_id']}/messages", json=v2,
                             headers=auth(USER["v2_username"], USER["v2_password"]))
    assert r.status == 202

    user = await _report(h)
    counts = _counts(user)
    assert counts["endpoint:POST /v1/users/{userId}/messages"] == 3
    assert counts["endpoint:GET /v1/users/{userId}/messages/{messageId}"] == 1
    assert counts["endpoint:GET /v1/users/{userId}/messages"] == 1
    assert counts["endpoint:PATCH /v1/users/{userId}/messages/{messageId}"] == 1
    assert counts["v1:batch"] == 1
    assert counts["v1:message"] == 4
    assert counts["list:filter:from"] == 1 and counts["list:page"] == 1
    assert counts["field:receiptRequested=all"] == 1 and counts["field:receiptRequested=error"] == 1
    assert counts["field:callbackHttpMethod=GET"] == 1
    assert counts["field:callbackTimeout"] == 1 and counts["field:fallbackUrl"] == 1
    assert counts["field:media=v1-url"] == 1
    assert counts["unsupported:GET /v1/users/{userId}/calls/{id}"] == 1
    assert counts["native:POST /api/v2/users/{accountId}/messages"] == 1
    assert counts["native:message"] == 1
    assert (user["v1Messages"], user["nativeMessages"], user["nativeShare"]) == (4, 1, 0.2)
    assert user["v1Calls"] == 3 + 1 + 1 + 1 + 1
    assert all(f["lastSeen"].endswith("Z") for f in user["features"])

    # Flushed to the store in one write: the report from the store alone (another replica, `shim
    # report`, a restart) says the same.
    rows = await sql_rows(h.app[STORE], "SELECT count FROM migration_usage WHERE user_id = ? AND feature = ?",
                          "u-test", "v1:message")
    assert [r[0] for r in rows] == [4]
    # And by UTC day (the flushes of this test fall on one day, or two around midnight).
    daily = await h.app[STORE].usage_daily("2000-01-01")
    assert sum(n for user, _, feature, n in daily if (user, feature) == ("u-test", "v1:message")) == 4
    from_store = await migration_report(h.cfg)
    (stored,) = [u for u in from_store["users"] if u["userId"] == "u-test"]
    assert _counts(stored) == counts
    table = report_table(from_store)
    assert "user u-test: v1 calls 7, v1 messages 4, native messages 1 (native share 20.0%)" in table
    assert "unsupported:GET /v1/users/{userId}/calls/{id}" in table
    assert "user u-other: v1 calls 0" in table and "ready to leave shim" in table

    # A second report adds only what happened since (nothing is counted twice).
    await h.send()
    assert _counts(await _report(h))["v1:message"] == 5
    metrics = await (await h.session.get(f"{h.url}/metrics")).text()
    assert 'shim_migration_usage_total{feature="v1:message",user="u-test"} 5.0' in metrics


async def test_report_is_admin_only(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin={"username": "admin", "password": "adm1n-pass-long"})
    assert (await h.session.get(f"{h.url}/admin/migration")).status == 401
    assert (await h.session.get(f"{h.url}/admin/migration", headers=h.auth)).status == 401
    h2 = await make_harness()
    assert (await h2.session.get(f"{h2.url}/admin/migration", headers=ADMIN)).status == 404


async def test_counts_from_several_replicas_add_up_and_survive_a_failed_flush(harness: Harness) -> None:
    store = harness.app[STORE]
    a, b = UsageTracker(lambda: 1_000), UsageTracker(lambda: 2_000)
    await a.start(store, interval_s=3600)
    await b.start(store, interval_s=3600)
    a.hit("u-x", "endpoint:GET /v1/users/{userId}/messages", 2)
    b.hit("u-x", "endpoint:GET /v1/users/{userId}/messages")
    await a.stop()
    await b.stop()
    (user,) = [u for u in report(await store.usage_rows(), {}, [])["users"] if u["userId"] == "u-x"]
    assert user["features"] == [{"feature": "endpoint:GET /v1/users/{userId}/messages", "count": 3,
                                 "lastSeen": "1970-01-01T00:00:00.002Z"}]

    class Broken:
        async def add_usage(self, rows: Any) -> None:
            raise OSError("down")

    c = UsageTracker(lambda: 5)
    await c.start(Broken(), interval_s=3600)
    c.hit("u-y", "list:page")
    await c.flush()
    assert c.unflushed()[("u-y", "list:page")].count == 1  # kept for the next flush
    c._store = store
    await c.stop()
    assert [r[2] for r in await store.usage_rows() if r[0] == "u-y"] == [1]
    assert harness.app[USAGE] is not None


def test_path_shapes_mask_ids_and_odd_names() -> None:
    assert path_shape("GET", "/v1/users/u-1/calls") == "GET /v1/users/{userId}/calls"
    assert path_shape("POST", "/v1/users/u-1/calls/c-9/events/e-1") == "POST /v1/users/{userId}/calls/{id}/events/{id}"
    assert path_shape("GET", "/v1/availableNumbers/local") == "GET /v1/availableNumbers/local"
    assert path_shape("GET", "/v1/users/u-1/%20weird%3Cname/x") == "GET /v1/users/{userId}/{other}/{id}"
    t = UsageTracker()
    for i in range(60):
        t.unsupported("u", "GET", f"/v1/users/u/r{i}")
    assert sum(1 for (_, f) in t.unflushed() if f.startswith("unsupported:")) == 51  # 50 shapes + "other"
