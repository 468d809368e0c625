"""Reconciliation's store transactions, on every backend: the lease (one holder, expiry, cursor),
candidates through the partial index, a repair under the message lock (idempotent), binding an
unbound intent, unresolvable marks and the balance."""

from __future__ import annotations

from typing import Any

from shim.core import MessageRecord, SearchItem, pending_id, reconcile_message
from shim.store import Store

from .test_contract import CFG, GW, msg, opened, store, store_url  # noqa: F401 - fixtures

PUBLIC = CFG.server.public_url


async def test_lease_is_held_by_one_owner_and_keeps_the_cursor(store_url: str) -> None:  # noqa: F811
    now = [1_000_000_000]
    async with opened(store_url, clock=lambda: now[0]) as s:
        assert await s.reconcile_acquire("a", 10_000_000) == 0
        assert await s.reconcile_acquire("b", 10_000_000) is None
        assert await s.reconcile_renew("a", 10_000_000, 42)
        assert await s.reconcile_renew("b", 10_000_000) is False
        now[0] += 11_000_000  # a died: its lease ran out
        assert await s.reconcile_acquire("b", 10_000_000) == 42  # resumes where a was
        assert await s.reconcile_renew("a", 10_000_000, 99) is False
        await s.reconcile_release("b")
        assert await s.reconcile_lease_state() == (None, None, 42)
        assert await s.reconcile_acquire("a", 10_000_000) == 42
        await s.reconcile_release("a", 0)
        assert await s.reconcile_lease_state() == (None, None, 0)


async def test_candidates_repair_and_marks(store: Store) -> None:  # noqa: F811
    for i in range(1, 6):
        await store.insert_message(msg(i))
    await store.insert_message(msg(6, state="error", delivery_state="not-delivered"))
    await store.insert_message(msg(7, direction="in", state="received"))
    await store.insert_message(msg(8, time_us=10**15))  # too recent
    cands = await store.reconcile_candidates(0, 10**14, 100)
    assert [r.id for r, _ in cands] == ["m0001", "m0002", "m0003", "m0004", "m0005"]
    assert all(b for _, b in cands)
    assert [r.id for r, _ in await store.reconcile_candidates(cands[1][0].seq or 0, 10**14, 2)] == ["m0003", "m0004"]
    assert [r.id for r, _ in await store.reconcile_candidates(0, 10**14, 9, since_us=4_000_000)] == ["m0004", "m0005"]
    assert await store.reconcile_candidates(0, 10**14, 9, user_id="nobody") == []

    first = cands[0][0]
    items = [SearchItem(first.id, "DELIVERED", first.to)]

    def fix(r: MessageRecord) -> Any:
        return reconcile_message(r, items, PUBLIC)

    assert await store.reconcile_apply(first.seq or 0, first.id, fix) == "final"
    assert await store.reconcile_apply(first.seq or 0, first.id, fix) == "already"  # idempotent
    stored = await store.get_message("u-test", first.id)
    assert stored is not None and stored.delivery_state == "delivered" and stored.state == "sent"
    rows = await store.query("SELECT event_id, spec FROM outbox ORDER BY id")
    assert [r[0] for r in rows] == ["evt_m0001_sent", "evt_m0001_receipt"]
    assert all('"reconciled":true' in r[1] for r in rows)
    assert [r[0] for r in await store.query("SELECT status FROM events WHERE message_id = ?", first.id)] == ["reconciled"]

    assert await store.mark_unresolvable([c[0].seq or 0 for c in cands[1:3]]) == 2
    assert await store.mark_unresolvable([first.seq or 0]) == 0  # final already
    assert [r.id for r, _ in await store.reconcile_candidates(0, 10**14, 100)] == ["m0004", "m0005"]
    assert await store.outbound_balance() == {"final": 2, "unresolvable": 2, "open": 3, "sent": 7}


async def test_repair_binds_an_unbound_intent(store: Store) -> None:  # noqa: F811
    key = "K" * 20
    intent = msg(1, id=pending_id(key), send_key=key)
    await store.record_intent(intent)
    [(cand, bound)] = await store.reconcile_candidates(0, 10**14, 10)
    assert cand.id == pending_id(key) and bound is False
    items = [SearchItem("v2-id-1", "FAILED", cand.to, error_code=4720, tag=f"shim1:{key}:app")]
    result = await store.reconcile_apply(cand.seq or 0, "v2-id-1",
                                         lambda r: reconcile_message(r, items, PUBLIC))
    assert result == "final"
    got = await store.get_message("u-test", "v2-id-1")
    assert got is not None and got.state == "error" and got.delivery_code == "720"
    assert await store.query("SELECT bound FROM messages WHERE send_key = ?", key) == [(1,)]
    assert [r[0] for r in await store.query("SELECT event_id FROM outbox")] == ["evt_v2-id-1_error"]
    # the send's late 202 finds the message bound and changes nothing
    assert await store.bind_send(got) == 0
    assert await store.reconcile_candidates(0, 10**14, 10) == []
