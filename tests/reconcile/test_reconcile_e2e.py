"""Reconciliation end to end: shim, the sandbox (which loses chosen messages' callbacks and serves
the message search) and a real receiver. Waits are on shim's own state, never on the clock."""

from __future__ import annotations

from typing import Any

from shim.core import SEARCH_WINDOW_US
from shim.keys import METRICS, RECONCILER, STORE, UPSTREAM
from shim.reconcile import Reconciler

from ..conftest import Harness, HarnessFactory, outbox_is, wait_until

LOST_OK, LOST_FAIL, KEPT_OK, KEPT_FAIL = "+15551239001", "+15550004720", "+15551239002", "+15550004750"
OFF = {"reconcile": {"enabled": False, "after_s": 0.01, "retry_schedule_s": [0.05, 0.05, 0.05]}}


async def lose(h: Harness, *numbers: str) -> None:
    async with h.session.post(f"{h.cfg.upstream.base_url}/sandbox/lose", json={"to": list(numbers)}) as r:
        assert r.status == 200


async def final(h: Harness, ids: list[str]) -> bool:
    for mid in ids:
        m = await h.stored(mid)
        if m["state"] != "error" and "deliveryState" not in m:
            return False
    return True


def normalized(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("messageId", "messageUri", "to", "time", "deliveryCode",
                                                          "deliveryDescription")}


async def test_lost_callbacks_are_repaired_as_if_the_events_had_come(make_harness: HarnessFactory) -> None:
    h = await make_harness(reconcile={"enabled": True, "after_s": 0.3, "interval_s": 0.2})
    await lose(h, LOST_OK, LOST_FAIL)
    cb = f"{h.receiver.url}/cb"
    ids = {to: await h.send(to=to, receiptRequested="all", callbackUrl=cb, tag="t1")
           for to in (LOST_OK, LOST_FAIL, KEPT_OK, KEPT_FAIL)}
    # the periodic run in serve repairs the two lost ones
    await wait_until(lambda: final(h, list(ids.values())), timeout=20)
    await wait_until(outbox_is(h.app[STORE], pending=0, delivered=6), timeout=20)
    assert h.sandbox_state.callbacks_lost == 2
    by_msg: dict[str, list[Any]] = {}
    for r in h.receiver.at("/cb"):
        by_msg.setdefault(r.json["messageId"], []).append(r)
    # exactly the callbacks the events would have caused, with the same ids, marked
    for to, reference in ((LOST_OK, KEPT_OK), (LOST_FAIL, KEPT_FAIL)):
        lost, kept = by_msg[ids[to]], by_msg[ids[reference]]
        assert [normalized(r.json) for r in lost] == [normalized(r.json) for r in kept]
        assert [r.headers["webhook-id"].rsplit("_", 1)[1] for r in lost] == \
            [r.headers["webhook-id"].rsplit("_", 1)[1] for r in kept]
        assert all(r.headers.get("X-Shim-Reconciled") == "true" for r in lost)
        assert all("X-Shim-Reconciled" not in r.headers for r in kept)
    assert [r.json["state"] for r in by_msg[ids[LOST_OK]]] == ["sent", "sent"]
    assert by_msg[ids[LOST_OK]][1].json["deliveryState"] == "delivered"
    failed = by_msg[ids[LOST_FAIL]]
    assert [(r.json["state"], r.json["deliveryCode"]) for r in failed] == [("error", "720")]
    stored = await h.stored(ids[LOST_FAIL])
    assert (stored["state"], stored["deliveryCode"], stored["deliveryState"]) == ("error", "720", "not-delivered")
    m = h.app[METRICS]
    assert m.reconcile_repaired.labels("final")._value.get() == 2
    assert m.reconcile_errors._value.get() == 0
    assert await h.app[STORE].outbound_balance() == {"final": 4, "unresolvable": 0, "open": 0, "sent": 4}


async def test_a_429_from_the_search_slows_the_run_down(make_harness: HarnessFactory) -> None:
    h = await make_harness(**OFF)
    await lose(h, LOST_OK)
    mid = await h.send(to=LOST_OK, receiptRequested="all", callbackUrl=f"{h.receiver.url}/cb")
    await wait_until(lambda: h.sandbox_state.callbacks_lost == 1)
    async with h.session.post(f"{h.cfg.upstream.base_url}/sandbox/search-rate-limit",
                              json={"count": 2, "retryAfter": "7"}) as r:
        assert r.status == 200
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    rec = Reconciler(h.cfg, h.app[STORE], h.app[UPSTREAM], h.app[METRICS], sleep=sleep)
    report = await rec.run()
    assert report.completed and report.errors == 0 and report.rate_limited == 2 and report.final == 1
    assert waits == [7.0, 7.0]  # each wait honours Retry-After (over the 0.05 s schedule)
    assert h.sandbox_state.searches == 3
    assert (await h.stored(mid))["deliveryState"] == "delivered"
    # more 429s than the schedule allows: the run stops (an error), resumable, nothing lost
    await lose(h, LOST_FAIL)
    mid2 = await h.send(to=LOST_FAIL, receiptRequested="all", callbackUrl=f"{h.receiver.url}/cb")
    await wait_until(lambda: h.sandbox_state.callbacks_lost == 2)
    h.sandbox_state.search_limit = 10
    report = await rec.run()
    assert report.errors == 1 and report.rate_limited == 4 and not report.completed
    assert (await h.stored(mid2))["state"] != "error"
    assert (await h.app[STORE].reconcile_lease_state())[0] is None  # released
    h.sandbox_state.search_limit = 0
    assert (await rec.run()).final == 1
    assert (await h.stored(mid2))["deliveryCode"] == "720"


async def test_an_unbound_send_intent_is_found_by_its_tag(make_harness: HarnessFactory) -> None:
    h = await make_harness(**OFF)
    await lose(h, "+15550000504")
    resp = await h.post({"from": "+15551230001", "to": "+15550000504", "text": "hi", "receiptRequested": "all",
                         "callbackUrl": f"{h.receiver.url}/cb"})
    assert resp.status == 503  # v2 has it, shim cannot know: outcome unknown
    [(key, bound)] = await h.app[STORE].query("SELECT send_key, bound FROM messages")
    assert bound == 0
    [v2_id] = list(h.sandbox_state.searchable)
    report = await h.app[RECONCILER].run()
    assert report.final == 1
    stored = await h.stored(v2_id)
    assert stored["deliveryState"] == "delivered" and stored["id"] == v2_id
    await wait_until(outbox_is(h.app[STORE], pending=0, delivered=2))
    assert [r.json["messageId"] for r in h.receiver.at("/cb")] == [v2_id, v2_id]
    assert await h.app[STORE].query("SELECT bound FROM messages WHERE send_key = ?", key) == [(1,)]


async def test_too_old_is_unresolvable_dry_run_changes_nothing_and_the_lease_is_exclusive(
        make_harness: HarnessFactory) -> None:
    h = await make_harness(**OFF)
    await lose(h, LOST_OK, LOST_FAIL)
    for to in (LOST_OK, LOST_FAIL):
        await h.send(to=to)
    await wait_until(lambda: h.sandbox_state.callbacks_lost == 2)
    store = h.app[STORE]
    dry = await Reconciler(h.cfg, store, h.app[UPSTREAM]).run(dry_run=True)
    assert (dry.looked_up, dry.final, dry.dry_run) == (2, 2, True)
    assert await store.outbound_balance() == {"final": 0, "unresolvable": 0, "open": 2, "sent": 2}
    assert await store.reconcile_acquire("another-replica", 60_000_000) == 0
    assert (await Reconciler(h.cfg, store, h.app[UPSTREAM]).run()).skipped
    await store.reconcile_release("another-replica")
    later = Reconciler(h.cfg, store, h.app[UPSTREAM], h.app[METRICS],
                       clock=lambda: h.app[RECONCILER].clock() + SEARCH_WINDOW_US + 1)
    report = await later.run()
    assert (report.unresolvable, report.looked_up, report.completed) == (2, 0, True)
    assert h.sandbox_state.searches == 1  # the dry run's: nothing too old is searched for
    assert await store.outbound_balance() == {"final": 0, "unresolvable": 2, "open": 0, "sent": 2}
    assert h.app[METRICS].reconcile_unresolvable._value.get() == 2
