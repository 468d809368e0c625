"""The store contract: one suite, run against every backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shim.clock import now_us
from shim.config import parse_config
from shim.core import DeliverySpec, ListQuery, MessageRecord, bind_v2, pending_id, v2_tag
from shim.gateway import Gateway
from shim.store import (
    Attempt,
    DeliveryFilter,
    EventRules,
    PostgresStore,
    RetentionReport,
    SqliteStore,
    Store,
    host_key,
    open_store,
)
from shim.store import _postgres as postgres_backend
from shim.store import _sqlite as sqlite_backend
from shim.store._messages import doc
from shim.store._ops import Exec, Tx
from shim.store._postgres import to_pg
from shim.store.migrations import MIGRATIONS

from ..conftest import USER
from ..pg import fresh_database

CFG = parse_config({"users": [USER | {"incoming": {"url": "http://127.0.0.1:9/in"}}]})
GW = Gateway(CFG)


@pytest.fixture(params=["sqlite", "sqlite-thread", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    if request.param.startswith("sqlite"):
        if request.param == "sqlite-thread":  # store.sqlite_writer: thread (the default is loop)
            monkeypatch.setattr(sys.modules[__name__], "open_store", functools.partial(open_store, sqlite_writer="thread"))
        yield f"sqlite:///{tmp_path}/contract.db"
        return
    request.getfixturevalue("postgres_server")
    async with fresh_database() as url:
        yield url


@asynccontextmanager
async def opened(url: str, rules: EventRules = GW, **kw: Any) -> AsyncIterator[Store]:
    s = open_store(url, rules, **kw)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with opened(store_url) as s:
        yield s


def msg(i: int, **kw: Any) -> MessageRecord:
    base: dict[str, Any] = dict(
        id=f"m{i:04d}", user_id="u-test", direction="out", from_="+15551230001",
        to=f"+1555000{i % 3:04d}", text=f"t{i}", time="2026-01-01T00:00:00.000Z", time_us=1_000_000 * i,
        callback_url="http://127.0.0.1:9/cb", receipt_requested="all",
    )
    return MessageRecord(**(base | kw))


def status(mid: str, type_: str, key: str | None = None, **kw: Any) -> dict[str, Any]:
    """A v2 status event; ``key``: of a send shim made (its correlation key in the tag)."""
    message = {"id": mid, "owner": "+15551230001", "applicationId": USER["application_id"],
               "time": "2026-01-01T00:00:00Z", "segmentCount": 1, "direction": "out",
               "to": ["+15550000000"], "from": "+15551230001", "text": ""}
    if key is not None:
        message["tag"] = v2_tag(key, "app-tag")
    return {"type": type_, "time": "2026-01-01T00:00:01Z", "to": "+15550000000", "description": "ok",
            "message": message} | kw


def key(i: int) -> str:
    return f"key-{i:018d}"


def intent(i: int, **kw: Any) -> MessageRecord:
    """A send's record as written before v2 is called."""
    return msg(i, id=pending_id(key(i)), send_key=key(i), **kw)


async def test_insert_get_and_isolation(store: Store) -> None:
    await store.insert_message(msg(1))
    got = await store.get_message("u-test", "m0001")
    assert got is not None and got.text == "t1" and got.seq is not None
    assert await store.get_message("u-other", "m0001") is None
    assert await store.get_message("u-test", "nope") is None
    # Inserting the same id twice keeps the first.
    await store.insert_message(msg(1, text="again"))
    got = await store.get_message("u-test", "m0001")
    assert got is not None and got.text == "t1"


async def test_list_filters_order_and_cursor(store: Store) -> None:
    for i in range(1, 11):
        await store.insert_message(msg(i, direction="in" if i % 2 else "out"))
    ids = lambda rs: [r.id for r in rs]
    all_desc = await store.list_messages("u-test", ListQuery(size=100))
    assert ids(all_desc) == [f"m{i:04d}" for i in range(10, 0, -1)]
    asc = await store.list_messages("u-test", ListQuery(size=100, descending=False))
    assert ids(asc) == list(reversed(ids(all_desc)))
    page = await store.list_messages("u-test", ListQuery(size=3))
    assert len(page) == 4  # size + 1 tells the caller there is more
    nxt = await store.list_messages("u-test", ListQuery(size=3, after_seq=page[2].seq))
    assert ids(nxt)[:3] == ["m0007", "m0006", "m0005"]
    assert ids(await store.list_messages("u-test", ListQuery(size=100, direction="in"))) == \
        ["m0009", "m0007", "m0005", "m0003", "m0001"]
    assert ids(await store.list_messages("u-test", ListQuery(size=100, to="+15550000000"))) == ["m0009", "m0006", "m0003"]
    assert ids(await store.list_messages("u-test", ListQuery(size=100, from_us=3_000_000, to_us=5_000_000))) == \
        ["m0005", "m0004", "m0003"]
    assert ids(await store.list_messages("u-test", ListQuery(size=2, offset=2))) == ["m0008", "m0007", "m0006"]
    assert await store.list_messages("u-other", ListQuery()) == []


async def test_redact(store: Store) -> None:
    await store.insert_message(msg(1))
    assert await store.redact_text("u-test", "m0001")
    got = await store.get_message("u-test", "m0001")
    assert got is not None and got.text == ""
    assert not await store.redact_text("u-test", "nope")
    assert not await store.redact_text("u-other", "m0001")


async def test_ingest_applies_and_dedupes(store: Store) -> None:
    await store.insert_message(msg(1))
    ev = GW.prepare(status("m0001", "message-delivered"))
    assert await store.ingest([ev]) == 2  # sent + receipt
    assert await store.ingest([ev]) == 0  # a duplicate delivery from Bandwidth
    got = await store.get_message("u-test", "m0001")
    assert got is not None and (got.state, got.delivery_state) == ("sent", "delivered")
    assert (await store.outbox_counts())["pending"] == 2


async def test_event_before_send_is_kept_then_applied(store: Store) -> None:
    event = status("m0002", "message-failed", key(2), errorCode=4720)
    assert await store.ingest([GW.prepare(event)]) == 0
    assert await store.pending_event_count() == 1
    assert await store.insert_message(msg(2, send_key=key(2))) == 1
    got = await store.get_message("u-test", "m0002")
    assert got is not None and (got.state, got.delivery_code) == ("error", "720")
    assert await store.pending_event_count() == 0


async def test_intent_is_invisible_until_bound_then_bound_once(store: Store) -> None:
    await store.record_intent(intent(3))
    assert await store.list_messages("u-test", ListQuery(size=100)) == []
    bound = bind_v2(intent(3), "v2-m0003", "2026-01-01T00:00:05.000Z", 2)
    assert await store.bind_send(bound) == 0
    got = await store.get_message("u-test", "v2-m0003")
    assert got is not None and (got.send_key, got.segment_count, got.time) == (key(3), 2, "2026-01-01T00:00:05.000Z")
    assert [m.id for m in await store.list_messages("u-test", ListQuery(size=100))] == ["v2-m0003"]
    assert await store.bind_send(bound) == 0  # again: nothing changes
    assert not await store.drop_intent(key(3))  # a bound message is never dropped


async def test_refused_send_drops_its_intent(store: Store) -> None:
    await store.record_intent(intent(4))
    assert await store.drop_intent(key(4))
    await store.record_intent(intent(4))  # the key is free again
    assert await store.drop_intent(key(4))


async def test_first_event_binds_an_unbound_intent(store: Store) -> None:
    """A crash or store failure after v2's 202 left the intent unbound: its first event (v2 echoes
    the key in the tag) binds it to the v2 id and applies itself; the late 202 changes nothing."""
    await store.record_intent(intent(5))
    assert await store.ingest([GW.prepare(status("v2-m0005", "message-delivered", key(5)))]) == 2  # sent + receipt
    got = await store.get_message("u-test", "v2-m0005")
    assert got is not None and (got.state, got.delivery_state, got.text) == ("sent", "delivered", "t5")
    assert await store.bind_send(bind_v2(intent(5), "v2-m0005")) == 0
    got = await store.get_message("u-test", "v2-m0005")
    assert got is not None and got.delivery_state == "delivered"


async def test_event_without_key_is_native_at_once(store_url: str) -> None:
    rules = NativeRouter()
    async with opened(store_url, rules) as store:
        assert await store.ingest([GW.prepare(status("ghost", "message-delivered"))]) == 1
        assert rules.native == ["ghost"]
        assert await store.pending_event_count() == 0


async def test_concurrent_event_and_send_never_miss(store: Store) -> None:
    for i in range(20):
        await store.record_intent(intent(i))
        await asyncio.gather(store.ingest([GW.prepare(status(f"r{i}", "message-sent", key(i)))]),
                             store.bind_send(bind_v2(intent(i), f"r{i}")))
        got = await store.get_message("u-test", f"r{i}")
        assert got is not None and got.state == "sent" and got.sent_notified, i
    counts = await store.outbox_counts()
    assert counts["pending"] == 20  # one "sent" callback per message, never two


async def test_arrays_touching_the_same_messages_in_any_order_never_deadlock(store: Store) -> None:
    """Two concurrent arrays over the same messages in opposite order (PostgreSQL locks per message)."""
    ids = [f"d{i}" for i in range(6)]
    for i, mid in enumerate(ids):
        await store.insert_message(msg(100 + i, id=mid))
    for round_ in range(40):
        forward = [GW.prepare(status(mid, "message-sending", description=f"f{round_}")) for mid in ids]
        backward = [GW.prepare(status(mid, "message-sending", description=f"b{round_}")) for mid in reversed(ids)]
        await asyncio.wait_for(asyncio.gather(store.ingest(forward), store.ingest(backward)), 10)


async def test_inbound_ingest(store: Store) -> None:
    payload = {"type": "message-received", "time": "2026-01-01T00:00:00Z", "to": "+15551230001",
               "description": "Incoming", "message": {
                   "id": "in1", "time": "2026-01-01T00:00:00Z", "to": ["+15551230001"], "from": "+15559990000",
                   "text": "yo", "applicationId": USER["application_id"], "owner": "+15551230001",
                   "direction": "in", "segmentCount": 1}}
    assert await store.ingest([GW.prepare(payload)]) == 1
    assert await store.ingest([GW.prepare(payload)]) == 0
    got = await store.get_message("u-test", "in1")
    assert got is not None and (got.direction, got.state, got.text) == ("in", "received", "yo")


def spec(n: int, key: str = "k", url: str = "http://127.0.0.1:9/cb") -> DeliverySpec:
    return DeliverySpec(event_id=f"e{n}", order_key=key, url=url, body={"n": n})


async def test_claim_leases_and_order(store: Store) -> None:
    await store.enqueue([spec(1, "a"), spec(2, "a"), spec(3, "b")])
    await store.enqueue([spec(1, "a")])  # same event id: ignored
    first = await store.claim("w1", 10, 5_000_000)
    assert sorted(d.spec.event_id for d in first) == ["e1", "e3"]  # e2 waits for e1
    assert await store.claim("w2", 10, 5_000_000) == []  # leased
    e1 = next(d for d in first if d.spec.event_id == "e1")
    assert not await store.mark_delivered(e1.id, "w2")  # not the lease owner
    assert await store.mark_delivered(e1.id, "w1")
    nxt = await store.claim("w2", 10, 5_000_000)
    assert [d.spec.event_id for d in nxt] == ["e2"]


async def test_expired_lease_is_taken_over(store: Store) -> None:
    await store.enqueue([spec(1)])
    (d,) = await store.claim("dead-replica", 10, 1)  # 1 µs lease
    await asyncio.sleep(0.01)
    assert await store.claim("survivor", 10, 5_000_000) == []  # until the sweep frees it
    assert await store.expire_leases() == 1
    (again,) = await store.claim("survivor", 10, 5_000_000)
    assert again.id == d.id
    assert not await store.mark_delivered(d.id, "dead-replica")
    assert await store.mark_delivered(again.id, "survivor")


async def test_retry_dead_letter_and_replay(store: Store) -> None:
    await store.enqueue([spec(1), spec(2)])
    (d,) = await store.claim("w", 10, 5_000_000)
    assert await store.mark_failed(d.id, "w", "HTTP 500", now_us() + 60_000_000)
    assert await store.claim("w", 10, 5_000_000) == []  # not due, and e2 waits behind it
    await store.release_all()
    # Force it due and fail it for good.
    assert await store.mark_failed(d.id, "w", "x", None) is False  # lease gone
    await store.run_sql("UPDATE outbox SET next_attempt_us = 0 WHERE id = ?", d.id)
    (d,) = await store.claim("w", 10, 5_000_000)
    assert d.attempts == 1
    assert await store.mark_failed(d.id, "w", "HTTP 500", None)
    dead = await store.dead_letters()
    assert [(x.event_id, x.attempts, x.last_error) for x in dead] == [("e1", 2, "HTTP 500")]
    # A dead letter no longer blocks the message's later events.
    (d2,) = await store.claim("w", 10, 5_000_000)
    assert d2.spec.event_id == "e2"
    assert await store.replay([dead[0].id]) == 1
    assert await store.dead_letters() == []
    assert (await store.outbox_counts())["pending"] == 2


async def test_release(store: Store) -> None:
    await store.enqueue([spec(1)])
    (d,) = await store.claim("w", 10, 5_000_000)
    await store.release(d.id, "w")
    assert len(await store.claim("w2", 10, 5_000_000)) == 1


async def test_claim_per_host_cap_and_skipped_hosts(store: Store) -> None:
    await store.enqueue([spec(i, f"a{i}", "http://a.example:8000/x") for i in range(5)])
    await store.enqueue([spec(i + 10, f"b{i}", "http://b.example/y") for i in range(5)])
    got = await store.claim("w", 100, 5_000_000, per_host=2)
    assert sorted(d.spec.url for d in got) == ["http://a.example:8000/x"] * 2 + ["http://b.example/y"] * 2
    got = await store.claim("w", 100, 5_000_000, per_host=10, skip_hosts=["a.example:8000"])
    assert [d.spec.url for d in got] == ["http://b.example/y"] * 3


class Boom:
    def apply_status(self, rec: MessageRecord, payload: dict[str, Any]) -> Any:
        raise RuntimeError("boom")

    def route_native(self, payload: dict[str, Any]) -> list[DeliverySpec]:
        raise RuntimeError("boom")


async def test_failed_transaction_changes_nothing(store: Store, store_url: str) -> None:
    await store.insert_message(msg(1))
    await store.ingest([GW.prepare(status("m0002", "message-sent", key(2)))])  # pending until m0002 exists
    async with opened(store_url, Boom()) as failing:
        with pytest.raises(RuntimeError):
            await failing.insert_message(msg(2))
    assert await store.get_message("u-test", "m0002") is None  # rolled back whole
    assert await store.pending_event_count() == 1
    assert await store.get_message("u-test", "m0001") is not None


class NativeRouter:
    def __init__(self) -> None:
        self.native: list[str] = []

    def apply_status(self, rec: MessageRecord, payload: dict[str, Any]) -> tuple[MessageRecord, list[DeliverySpec]]:
        return GW.apply_status(rec, payload)

    def route_native(self, payload: dict[str, Any]) -> list[DeliverySpec]:
        self.native.append(payload["message"]["id"])
        return [spec(99, "native")]


async def test_legacy_unmatched_events_routed_as_native(store_url: str) -> None:
    """Events stored pending (no key) by a version before correlation keys: routed after the grace."""
    rules = NativeRouter()
    async with opened(store_url, rules) as store:
        payload = json.dumps(status("ghost", "message-delivered"))
        await store.run_sql("INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
                            " VALUES ('legacy-1', 'ghost', ?, 'pending', ?)", payload, now_us())
        assert await store.route_unmatched(now_us() - 60_000_000) == 0  # still in grace
        assert await store.route_unmatched(now_us() + 1) == 1
        assert rules.native == ["ghost"]
        assert await store.pending_event_count() == 0


async def test_injected_clock_stamps_and_schedules(store_url: str) -> None:
    t = [1_000_000_000]
    async with opened(store_url, clock=lambda: t[0]) as store:
        assert [a[2] for a in await store.applied_migrations()] == [t[0]] * len(MIGRATIONS)
        await store.enqueue([spec(1)])
        (d,) = await store.claim("w", 10, 5_000_000)
        assert await store.mark_failed(d.id, "w", "HTTP 500", t[0] + 60_000_000)
        assert await store.claim("w", 10, 5_000_000) == []  # not due by the store's clock
        t[0] += 60_000_000
        (d,) = await store.claim("w", 10, 1)
        t[0] += 2
        assert await store.expire_leases() == 1  # its 1 µs lease ran out on the store's clock
        (d,) = await store.claim("w", 10, 5_000_000)
        assert await store.mark_failed(d.id, "w", "HTTP 500", None)
        (dead,) = await store.dead_letters()
        assert dead.updated_us == t[0]


async def test_parallel_claims_never_share_a_row(store: Store) -> None:
    await store.enqueue([spec(i, f"k{i}") for i in range(60)])
    got = await asyncio.gather(*(store.claim(f"w{i}", 7, 5_000_000) for i in range(12)))
    ids = [d.id for batch in got for d in batch]
    assert len(ids) == len(set(ids)) > 0  # concurrent claimers never share a row
    while batch := await store.claim("late", 7, 5_000_000):  # and none is lost
        ids += [d.id for d in batch]
    assert len(ids) == len(set(ids)) == 60


async def test_retention(store: Store) -> None:
    await store.insert_message(msg(1, time_us=now_us() - 10 * 86_400_000_000))
    await store.insert_message(msg(2, time_us=now_us() - 100 * 86_400_000_000))
    await store.insert_message(msg(3, time_us=now_us()))
    report = await store.apply_retention(now_us() - 3 * 86_400_000_000, now_us() - 30 * 86_400_000_000)
    assert (report.messages_cleared, report.messages_purged) == (1, 1)
    m1 = await store.get_message("u-test", "m0001")
    assert m1 is not None and m1.text == ""
    assert await store.get_message("u-test", "m0002") is None
    m3 = await store.get_message("u-test", "m0003")
    assert m3 is not None and m3.text == "t3"


DAY_US = 86_400_000_000


def retention_cutoffs() -> tuple[int, int]:
    """(clear text before, purge before): the defaults, 3 and 30 days."""
    return now_us() - 3 * DAY_US, now_us() - 30 * DAY_US


async def rows_with(store: Store, marker: str) -> dict[str, int]:
    """How many rows of each table hold ``marker`` anywhere in their raw stored columns."""
    like = f"%{marker}%"
    return {
        "messages": (await store.query("SELECT COUNT(*) FROM messages WHERE doc LIKE ?", like))[0][0],
        "events": (await store.query("SELECT COUNT(*) FROM events WHERE payload LIKE ?", like))[0][0],
        "outbox": (await store.query("SELECT COUNT(*) FROM outbox WHERE spec LIKE ?", like))[0][0],
    }


NONE_WITH = {"messages": 0, "events": 0, "outbox": 0}


def v2_spec(payload: dict[str, Any]) -> DeliverySpec:
    """A native route in v2 format: the raw event array as the body."""
    return DeliverySpec(event_id=f"evt_native_{payload['message']['id']}", order_key=f"native_{payload['message']['id']}",
                        url="http://127.0.0.1:9/native", format="v2", body=[payload])


async def test_retention_clears_text_everywhere_it_is_kept(store: Store) -> None:
    old, recent = "OLD-SECRET-7d1c", "NEW-SECRET-93ab"
    # A message past text_days (its events and callbacks arrive now: cleared with it).
    await store.insert_message(msg(1, text=old, time_us=now_us() - 5 * DAY_US))
    delivered = status("m0001", "message-delivered")
    delivered["message"]["text"] = old
    ev = GW.prepare(delivered)
    assert await store.ingest([ev]) == 2  # sent + receipt, both with the text in their v1 bodies
    # An event of a message sent natively on v2 (no record), and its v2-format callback: by their age.
    native = status("ghost", "message-sending")
    native["message"]["text"] = old
    assert await store.ingest([GW.prepare(native)]) == 0
    await store.enqueue([v2_spec(native)])
    await store.run_sql("UPDATE events SET received_us = ? WHERE message_id = 'ghost'", now_us() - 5 * DAY_US)
    await store.run_sql("UPDATE outbox SET created_us = ? WHERE order_key = 'native_ghost'", now_us() - 5 * DAY_US)
    # A recent message keeps its text everywhere.
    await store.insert_message(msg(2, text=recent, time_us=now_us()))
    fresh = status("m0002", "message-delivered")
    fresh["message"]["text"] = recent
    assert await store.ingest([GW.prepare(fresh)]) == 2
    assert await rows_with(store, old) == {"messages": 1, "events": 2, "outbox": 3}

    report = await store.apply_retention(*retention_cutoffs())
    assert await rows_with(store, old) == NONE_WITH
    assert await rows_with(store, recent) == {"messages": 1, "events": 1, "outbox": 2}
    assert (report.messages_cleared, report.events_cleared, report.outbox_cleared) == (1, 2, 3)
    m1 = await store.get_message("u-test", "m0001")
    assert m1 is not None and m1.text == "" and m1.delivery_state == "delivered"
    # The payload keeps its key: the same event sent again is still a duplicate.
    assert (await store.query("SELECT COUNT(*) FROM events WHERE dedupe_key = ?", ev.dedupe_key))[0][0] == 1
    assert await store.ingest([GW.prepare(delivered)]) == 0
    assert await store.ingest([GW.prepare(native)]) == 0
    # Pending deliveries whose text was cleared are still claimed, with empty text.
    bodies = {d.spec.order_key: d.spec.body for d in await store.claim("w", 10, 5_000_000)}
    assert bodies["m0001"]["text"] == "" and bodies["native_ghost"][0]["message"]["text"] == ""
    assert bodies["m0002"]["text"] == recent
    # A second pass finds nothing left to do.
    assert await store.apply_retention(*retention_cutoffs()) == RetentionReport()


async def test_retention_keeps_up_with_any_backlog(store: Store) -> None:
    """More than a batch of each: one pass clears and purges them all, in several short transactions."""
    marker = "BACKLOG-SECRET-5e0f"
    n = 2_500
    recs = [msg(i, id=f"c{i}", text=f"{marker} {i}", time_us=now_us() - 10 * DAY_US + i) for i in range(n)]
    recs += [msg(i, id=f"p{i}", text=f"{marker} {i}", time_us=now_us() - 40 * DAY_US + i) for i in range(n)]
    for start in range(0, len(recs), 250):
        await asyncio.gather(*(store.insert_message(r) for r in recs[start:start + 250]))
    writes: list[str] = []
    store.observer = lambda op, _: writes.append(op)
    report = await store.apply_retention(*retention_cutoffs())
    assert await rows_with(store, marker) == NONE_WITH
    assert (await store.query("SELECT COUNT(*), SUM(text_cleared) FROM messages"))[0] == (n, n)
    assert (report.messages_cleared, report.messages_purged) == (n, n)
    assert writes.count("write") >= 2 * (n // store.retention_batch + 1)  # batches, not one transaction


async def test_retention_purges_every_old_record(store: Store) -> None:
    """Past purge_days: messages, events in any status and outbox rows in any status (delivered,
    dead letters, pending rows long past their retries) are all purged; recent ones stay."""
    await store.insert_message(msg(1, time_us=now_us() - 40 * DAY_US))
    await store.insert_message(msg(2, time_us=now_us()))
    assert await store.ingest([GW.prepare(status("m0001", "message-delivered"))]) == 2
    assert await store.ingest([GW.prepare(status("ghost", "message-sent"))]) == 0  # native
    assert await store.ingest([GW.prepare(status("m0009", "message-sent", key(9)))]) == 0  # pending
    await store.enqueue([spec(i, f"k{i}") for i in range(1, 5)])
    got = {d.spec.event_id: d.id for d in await store.claim("w", 10, 5_000_000)}
    assert await store.mark_delivered(got["e1"], "w")
    assert await store.mark_failed(got["e2"], "w", "HTTP 500", None)  # a dead letter
    assert await store.mark_failed(got["e3"], "w", "HTTP 500", now_us())  # pending, retrying
    await store.release_all()
    await store.run_sql("UPDATE events SET received_us = ?", now_us() - 40 * DAY_US)
    await store.run_sql("UPDATE outbox SET created_us = ?, updated_us = ? WHERE event_id <> 'e4'",
                        now_us() - 40 * DAY_US, now_us() - 40 * DAY_US)
    assert await store.outbox_counts() == {"pending": 4, "delivered": 1, "dead": 1}
    assert await store.pending_event_count() == 1

    report = await store.apply_retention(*retention_cutoffs())
    assert await store.get_message("u-test", "m0001") is None
    assert await store.get_message("u-test", "m0002") is not None
    assert await store.query("SELECT dedupe_key FROM events") == []
    assert await store.dead_letters() == []
    assert await store.outbox_counts() == {"pending": 1, "delivered": 0, "dead": 0}
    assert [d.spec.event_id for d in await store.claim("w", 10, 5_000_000)] == ["e4"]
    assert (report.messages_purged, report.events_purged, report.outbox_purged) == (1, 3, 5)


async def test_redact_clears_message_events_and_outbox(store: Store) -> None:
    secret = "REDACT-ME-44c2"
    await store.insert_message(msg(1, text=secret, time_us=now_us()))
    sent = status("m0001", "message-sent")
    sent["message"]["text"] = secret
    assert await store.ingest([GW.prepare(sent)]) == 1
    assert await rows_with(store, secret) == {"messages": 1, "events": 1, "outbox": 1}
    assert await store.redact_text("u-test", "m0001")
    assert await rows_with(store, secret) == NONE_WITH
    assert await store.ingest([GW.prepare(sent)]) == 0  # still a duplicate
    (d,) = await store.claim("w", 10, 5_000_000)  # still delivered, with empty text
    assert d.spec.body["text"] == "" and d.spec.body["messageId"] == "m0001"
    got = await store.get_message("u-test", "m0001")
    assert got is not None and got.text == "" and got.state == "sent"


async def test_concurrent_retention_passes_share_the_work(store_url: str) -> None:
    """Two stores (replicas) on one database run retention at once: no errors, no deadlock, each
    row done once, and the end state is complete."""
    marker = "REPLICA-SECRET-0b7a"
    n = 2_500
    async with opened(store_url) as a, opened(store_url) as b:
        recs = [msg(i, id=f"c{i}", text=f"{marker} {i}", time_us=now_us() - 10 * DAY_US + i) for i in range(n)]
        recs += [msg(i, id=f"p{i}", text=f"{marker} {i}", time_us=now_us() - 40 * DAY_US + i) for i in range(n // 2)]
        for start in range(0, len(recs), 250):
            await asyncio.gather(*(a.insert_message(r) for r in recs[start:start + 250]))
        await a.enqueue([DeliverySpec(event_id=f"e{i}", order_key=f"c{i}", url="http://127.0.0.1:9/cb",
                                      body={"text": f"{marker} {i}"}) for i in range(n)])
        ra, rb = await asyncio.wait_for(asyncio.gather(a.apply_retention(*retention_cutoffs()),
                                                       b.apply_retention(*retention_cutoffs())), 120)
        assert await rows_with(a, marker) == NONE_WITH
        assert (await a.query("SELECT COUNT(*), SUM(text_cleared) FROM messages"))[0] == (n, n)
        assert len(await a.claim("w", 2 * n, 5_000_000)) == n  # all still delivered
        # Each row done by one of them (batches of rows the other holds are skipped).
        assert ra.messages_cleared + rb.messages_cleared == n
        assert ra.outbox_cleared + rb.outbox_cleared == n
        assert ra.messages_purged + rb.messages_purged == n // 2


async def test_retention_during_ingest_never_brings_text_back(store_url: str) -> None:
    """Events applied while another replica clears the same messages: an event never writes back
    a doc (or a callback body) with text it read before the clearing, and nobody deadlocks."""
    marker = "RACE-SECRET-61d9"
    n = 300
    async with opened(store_url) as a, opened(store_url) as b:
        for start in range(0, n, 100):
            await asyncio.gather(*(a.insert_message(msg(i, id=f"r{i}", text=f"{marker} {i}",
                                                        time_us=now_us() - 10 * DAY_US + i))
                                   for i in range(start, start + 100)))
        a.retention_batch = 20  # many short transactions, interleaved with the events

        async def events() -> None:
            for round_, kind in enumerate(("message-sending", "message-sent", "message-delivered")):
                await asyncio.gather(*(b.ingest([GW.prepare(status(f"r{i}", kind, description=f"x{round_}"))])
                                       for i in range(n)))

        await asyncio.wait_for(asyncio.gather(a.apply_retention(*retention_cutoffs()), events()), 120)
        await a.apply_retention(*retention_cutoffs())  # what was busy during the first pass
        assert await rows_with(a, marker) == NONE_WITH
        assert (await a.query("SELECT COUNT(*) FROM outbox"))[0][0] == 2 * n  # sent + receipt each


async def test_ping_and_analyze(store: Store) -> None:
    await store.ping()
    await store.analyze()
    assert json.dumps(await store.outbox_counts())


async def test_mark_delivered_many(store: Store) -> None:
    await store.enqueue([spec(i, f"k{i}") for i in range(4)])
    got = await store.claim("w", 10, 5_000_000)
    ids = [d.id for d in got]
    assert await store.mark_delivered_many(ids[:3], "other") == 0  # not the lease owner
    assert await store.mark_delivered_many(ids[:3], "w") == 3
    assert await store.mark_delivered_many([], "w") == 0
    assert (await store.outbox_counts())["delivered"] == 3


# -- schema migrations -------------------------------------------------------------------------
async def test_migrations_applied_once_and_recorded(store: Store, store_url: str) -> None:
    applied = await store.applied_migrations()
    assert [(v, name) for v, name, _ in applied] == [(m.version, m.name) for m in MIGRATIONS]
    assert await store.migrate() == []
    async with opened(store_url) as again:  # opening again applies nothing
        assert await again.migrate() == []
        assert await again.applied_migrations() == applied


async def test_concurrent_opens_migrate_once(store_url: str) -> None:
    stores = [open_store(store_url, GW, pool_size=2) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.ping() for s in stores))
        for s in stores:
            assert [a[0] for a in await s.applied_migrations()] == [m.version for m in MIGRATIONS]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def raw_sql(url: str, statements: list[str]) -> None:
    """Run statements on the database behind ``url`` without the store."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            for sql in statements:
                conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(url)
    try:
        for sql in statements:
            await pg.execute(sql)
    finally:
        await pg.close()


async def test_pre_migration_database_is_adopted(store_url: str) -> None:
    # What shim created at every open before migrations (migration 1 is that DDL, unchanged),
    # with a row in it, and no schema_migrations.
    types = SqliteStore.column_types if store_url.startswith("sqlite:") else PostgresStore.column_types
    await raw_sql(store_url, [*MIGRATIONS[0].statements(types),
                              "INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
                              " VALUES ('k1', 'm0001', '{}', 'pending', 1)"])
    async with opened(store_url) as store:
        assert [a[0] for a in await store.applied_migrations()] == [m.version for m in MIGRATIONS]
        assert await store.pending_event_count() == 1
        await store.insert_message(msg(2))
        assert await store.get_message("u-test", "m0002") is not None


# -- leases held while work is in flight ("Trust" 1) --------------------------------------------
async def test_renewed_leases_do_not_expire(store_url: str) -> None:
    t = [1_000_000_000]
    async with opened(store_url, clock=lambda: t[0]) as store:
        await store.enqueue([spec(1, "a"), spec(2, "b"), spec(3, "c")])
        mine = await store.claim("w1", 2, 5_000_000)
        (theirs,) = await store.claim("w2", 10, 5_000_000)
        for _ in range(3):  # held three lease lengths, renewed every 4 s
            t[0] += 4_000_000
            assert await store.renew_leases("w1", 5_000_000) == 2
            assert await store.renew_leases("w2", 5_000_000, [theirs.id, mine[0].id]) == 1  # only its own
            assert await store.expire_leases() == 0
            assert await store.claim("w3", 10, 5_000_000) == []
        t[0] += 5_000_001  # nobody renews (the replica died): taken over
        assert await store.expire_leases() == 3
        assert await store.renew_leases("w1", 5_000_000) == 0
        assert len(await store.claim("w3", 10, 5_000_000)) == 3


# -- periodic work does not read history ("Trust" 2) ----------------------------------------------
HISTORY = 20_000


async def explain(url: str, sql: str, args: tuple[Any, ...]) -> str:
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()
        finally:
            conn.close()
        return "\n".join(r[-1] for r in rows)
    pg = await asyncpg.connect(url)
    try:
        rows = await pg.fetch("EXPLAIN " + to_pg(sql), *args)
    finally:
        await pg.close()
    return "\n".join(r[0] for r in rows)


def reads_history(url: str, plan: str) -> bool:
    """A full scan of a table (SQLite: ``SCAN t`` without an index; PostgreSQL: a Seq Scan)."""
    if url.startswith("sqlite:"):
        return any(re.fullmatch(r"SCAN \w+", line.strip()) for line in plan.splitlines())
    return re.search(r"Seq Scan on (outbox|events|messages)\b", plan) is not None


async def test_periodic_work_uses_indexes_not_history(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = NativeRouter()
    async with opened(store_url, rules) as store:
        numbers = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {HISTORY})"
        await store.run_sql(
            f"{numbers} INSERT INTO outbox (event_id, order_key, user_id, host, status, spec, attempts,"
            " next_attempt_us, created_us, updated_us)"
            " SELECT 'old-' || i, 'ok-' || i, 'u-test', 'old.example:80', 'delivered', '{}', 1, 0, i, i FROM n")
        await store.run_sql(
            f"{numbers} INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
            " SELECT 'old-' || i, 'om-' || i, '{}', 'applied', i FROM n")
        payload = json.dumps(status("ghost", "message-delivered"))
        await store.run_sql("INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
                            " VALUES ('legacy-1', 'ghost', ?, 'pending', 1)", payload)
        await store.enqueue([spec(i, f"k{i}") for i in range(1, 7)])
        held = await store.claim("w", 3, 60_000_000)
        await store.mark_failed(held[0].id, "w", "HTTP 500", None)  # a dead letter
        await store.run_sql("ANALYZE")

        ops = record_statements(monkeypatch, store_url)
        # What the delivery engine does every round, every lease_s/3 and every sweep.
        assert await store.route_unmatched(now_us()) == 1
        await store.expire_leases()
        await store.renew_leases("w", 60_000_000)
        await store.renew_leases("w", 60_000_000, [d.id for d in held[1:]])
        gauges = await store.outbox_gauges()
        assert (gauges["pending"], gauges["dead"]) == (6 - 1 + 1, 1)  # 5 queued + the native one
        assert gauges["max_id"] >= HISTORY + 6
        assert len(await store.claim("w", 10, 60_000_000)) == 4
        await store.release_all("w")
        monkeypatch.undo()

        assert len(ops) >= 8
        for sql, args in ops:
            plan = await explain(store_url, sql, args)
            assert not reads_history(store_url, plan), f"{sql}\n{plan}"


async def test_sends_and_events_read_no_history(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every statement of a send (intent, bind, an event before it) and of an ingest finds its
    rows through an index: none scans the events or messages (history), however many there are."""
    async with opened(store_url) as store:
        numbers = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {HISTORY})"
        await store.run_sql(
            f"{numbers} INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
            " SELECT 'old-' || i, 'om-' || i, '{}', 'applied', i FROM n")
        await store.run_sql(
            f"{numbers} INSERT INTO messages (id, user_id, direction, from_number, to_number, state, time_us,"
            " created_us, doc, send_key) SELECT 'om-' || i, 'u-test', 'out', '+1', '+2', 'sent', i, i, '{}', 'ok-' || i FROM n")
        await store.run_sql("ANALYZE")
        ops = record_statements(monkeypatch, store_url)
        await store.record_intent(intent(1))
        assert await store.bind_send(bind_v2(intent(1), "v2-1")) == 0
        await store.ingest([GW.prepare(status("v2-2", "message-sent", key(2)))])  # before its send
        await store.record_intent(intent(2))
        assert await store.bind_send(bind_v2(intent(2), "v2-2")) == 1
        assert await store.insert_message(msg(3)) == 0
        assert await store.ingest([GW.prepare(status("v2-1", "message-delivered", key(1)))]) == 2
        monkeypatch.undo()
        assert len(ops) >= 8
        for sql, args in ops:
            plan = await explain(store_url, sql, args)
            if store_url.startswith("sqlite:"):
                scans = [line for line in plan.splitlines() if re.match(r"\s*SCAN (events|messages)\b", line)]
                assert scans == [], f"{sql}\n{plan}"
            else:
                assert not reads_history(store_url, plan), f"{sql}\n{plan}"


# -- the unmatched sweep against a send recorded late ("Trust" 3) --------------------------------
async def test_unmatched_sweep_racing_a_late_send_applies_or_routes_never_both(store_url: str) -> None:
    rules = NativeRouter()
    async with opened(store_url, rules, pool_size=8) as store:
        for i in range(1, 61):
            mid = f"m{i:04d}"
            await store.run_sql("INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
                                " VALUES (?, ?, ?, 'pending', ?)",
                                f"legacy-{i}", mid, json.dumps(status(mid, "message-delivered")), now_us() - 1)
            await asyncio.gather(store.route_unmatched(now_us() + 1_000_000), store.insert_message(msg(i)))
        rows = await store.query("SELECT message_id, status FROM events ORDER BY message_id")
        assert len(rows) == 60 and await store.pending_event_count() == 0
        both = [mid for mid, st in rows if st == "applied" and mid in rules.native]
        assert both == []
        for mid, st in rows:
            assert (st == "applied") != (mid in rules.native), (mid, st)
        assert len(rules.native) == len(set(rules.native))


# -- SQLite's writer queue is bounded ("Trust" 4) --------------------------------------------------
async def test_sqlite_writes_wait_for_a_slot_when_the_queue_is_full(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/bounded.db", GW, max_queued=3)
    await store.open()
    entered, gate = threading.Event(), threading.Event()

    def blocking() -> Tx[None]:
        entered.set()
        gate.wait(30)  # the writer thread is stuck in this transaction
        yield Exec("SELECT 1")

    try:
        first = asyncio.create_task(store._write(blocking))
        assert await asyncio.to_thread(entered.wait, 10)
        writes = [asyncio.create_task(store.enqueue([spec(i, f"k{i}")])) for i in range(50)]
        await asyncio.sleep(0.3)
        # The bound (3): one running, two admitted behind it (handed to the writer together, one
        # loop turn's worth); the other 48 wait for a slot, unqueued.
        assert store._slots.locked() and store._queue.qsize() == 1 and store._gathered == []
        assert not first.done() and not any(w.done() for w in writes)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *writes), 10)
        assert (await store.outbox_counts())["pending"] == 50
        assert store._queue.qsize() == 0
    finally:
        gate.set()
        await store.close()


# -- SQLite's writers: short writes on the event loop's thread, the rest on the writer thread -------
def recording(threads: list[int], i: int, fail: bool = False) -> Callable[[], Tx[None]]:
    def tx() -> Tx[None]:
        threads.append(threading.get_ident())
        yield Exec("INSERT INTO rejected_events (received_us, reason, request_id, body) VALUES (1, 'r', NULL, ?)", f"b{i}")
        if fail:
            raise RuntimeError("boom")
    return tx


def wal_commits(db: Path) -> int:
    """Commits in the WAL's current generation: frames whose salts match the WAL header's and
    whose "database size after commit" field is set (sqlite.org/fileformat.html, the WAL format)."""
    data = Path(f"{db}-wal").read_bytes()
    if len(data) < 32:
        return 0
    page, salt = int.from_bytes(data[8:12], "big"), data[16:24]
    count, off = 0, 32
    while off + 24 + page <= len(data) and data[off + 8:off + 16] == salt:
        count += int.from_bytes(data[off + 4:off + 8], "big") != 0
        off += 24 + page
    return count


@pytest.fixture
def no_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpointer never catches up meanwhile: a write into a fully checkpointed WAL would
    start it over, which the loop leaves to the writer thread (test_sqlite_loop_review.py)."""
    monkeypatch.setattr(sqlite_backend, "CHECKPOINT_AFTER_S", 3600)


@pytest.mark.parametrize("writer", ["loop", "thread"])
async def test_sqlite_short_writes_of_one_loop_turn_run_together_where_the_writer_says(
        tmp_path: Path, writer: str, no_checkpoints: None) -> None:
    db = tmp_path / "w.db"
    async with opened(f"sqlite:///{db}", sqlite_writer=writer) as store:
        threads: list[int] = []
        before = wal_commits(db)
        await asyncio.gather(*(store._write(recording(threads, i), short=True) for i in range(5)))
        loop_thread = threading.get_ident()
        if writer == "loop":  # run on the loop's own thread, no hand-over
            assert threads == [loop_thread] * 5
        else:
            assert len(set(threads)) == 1 and threads[0] != loop_thread
        assert wal_commits(db) == before + 1  # one transaction for the five
        assert await store.query("SELECT COUNT(*) FROM rejected_events") == [(5,)]


async def test_sqlite_a_loop_batch_is_at_most_max_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        no_checkpoints: None) -> None:
    # However many short writes one loop turn gathers, the loop runs MAX_BATCH of them at a time:
    # the rest in later turns, so other work is served in between.
    monkeypatch.setattr(sqlite_backend, "MAX_BATCH", 4)
    db = tmp_path / "cap.db"
    async with opened(f"sqlite:///{db}") as store:
        threads: list[int] = []
        before = wal_commits(db)
        await asyncio.gather(*(store._write(recording(threads, i), short=True) for i in range(10)))
        assert threads == [threading.get_ident()] * 10
        assert wal_commits(db) == before + 3  # 4 + 4 + 2
        assert await store.query("SELECT COUNT(*) FROM rejected_events") == [(10,)]


async def test_sqlite_a_claim_that_skips_hosts_runs_off_the_loop(tmp_path: Path, no_checkpoints: None) -> None:
    # Skipped hosts' due rows are passed over by the claim's scan, as many as there are: that
    # claim is not short. Without skipped hosts the scan stops at the claim's limit.
    async with opened(f"sqlite:///{tmp_path}/claim.db") as store:
        await store.enqueue([spec(i, f"k{i}") for i in range(3)])
        on_loop: list[int] = []
        run_on_loop = store._run_on_loop  # type: ignore[attr-defined]

        def watched(conn: sqlite3.Connection, batch: list[Any], *args: Any) -> Any:
            on_loop.append(len(batch))
            return run_on_loop(conn, batch, *args)

        store._run_on_loop = watched  # type: ignore[attr-defined]
        assert await store.claim("me", 10, 60_000_000, skip_hosts=["elsewhere:80"]) != []
        assert on_loop == []
        await store.release_all("me")
        assert len(await store.claim("me", 10, 60_000_000)) == 3
        assert on_loop[-1] == 1


async def test_sqlite_a_short_write_waits_off_the_loop_while_another_process_writes(tmp_path: Path,
                                                                                  no_checkpoints: None) -> None:
    # The loop's connection never waits for SQLite's write lock (that would stall every request):
    # held elsewhere, the batch goes to the writer thread, which waits for it.
    async with opened(f"sqlite:///{tmp_path}/busy.db") as store:
        other = sqlite3.connect(f"{tmp_path}/busy.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        threads: list[int] = []
        write = asyncio.ensure_future(store._write(recording(threads, 1), short=True))
        started = time.monotonic()
        for _ in range(20):  # the loop keeps turning meanwhile ...
            await asyncio.sleep(0.01)
        # ... not stalled for the writer's busy_timeout (10 s) inside SQLite
        assert time.monotonic() - started < 5
        assert not write.done() and threads == []
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(write, 10)
        assert threads and threads[-1] != threading.get_ident()  # the writer thread ran it
        assert await store.query("SELECT body FROM rejected_events") == [("b1",)]
        # The lock free again, the next short write runs on the loop.
        await store._write(recording(threads, 2), short=True)
        assert threads[-1] == threading.get_ident()


async def test_sqlite_a_failing_short_write_rolls_back_alone(tmp_path: Path, no_checkpoints: None) -> None:
    async with opened(f"sqlite:///{tmp_path}/fail.db") as store:
        threads: list[int] = []
        writes = [store._write(recording(threads, i, fail=i == 2), short=True) for i in range(5)]
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert isinstance(results[2], RuntimeError) and [r for r in results if r is not None] == [results[2]]
        # The loop's batch up to the failing one, then the writer thread's: together again up to
        # it, then each apart.
        assert threads.count(threading.get_ident()) == 3 and len(threads) == 3 + 3 + 5
        assert await store.query("SELECT body FROM rejected_events ORDER BY body") == [
            (f"b{i}",) for i in range(5) if i != 2]


@pytest.mark.parametrize("short", [True, False])
async def test_sqlite_a_write_caught_by_close_fails_instead_of_waiting_forever(tmp_path: Path, short: bool) -> None:
    # A turn's writes scheduled before close() and run after it: nobody would ever run them.
    store = SqliteStore(f"sqlite:///{tmp_path}/closed.db", GW)
    await store.open()
    await store.close()
    loop = asyncio.get_running_loop()
    threads: list[int] = []
    fut: asyncio.Future[None] = loop.create_future()
    await store._slots.acquire()
    if short:
        store._short = [(recording(threads, 1), fut, loop)]
        store._run_short()
    else:
        store._gathered = [(recording(threads, 1), fut, loop)]
        store._hand_over()
    with pytest.raises(RuntimeError, match="not open"):
        await asyncio.wait_for(fut, 5)
    assert threads == [] and not store._slots.locked()


async def test_rejected_events_kept_then_gone_with_the_text(store: Store) -> None:
    await store.keep_rejected([("invalid", '{"type":"bogus","text":"secret-marker"}', "req-1")])
    assert await store.query("SELECT reason, request_id FROM rejected_events") == [("invalid", "req-1")]
    report = await store.apply_retention(now_us() + 1, now_us() - 30 * 86_400_000_000)
    assert report.rejected_purged == 1
    assert await store.query("SELECT COUNT(*) FROM rejected_events") == [(0,)]


# -- group commit: batches of transactions, one commit ----------------------------------------------
@asynccontextmanager
async def writes_held(store: Store) -> AsyncIterator[None]:
    """Writes submitted inside wait, then run as one batch (SQLite: its writer is held busy;
    PostgreSQL batches what is submitted in one turn of the event loop anyway)."""
    if not isinstance(store, SqliteStore):
        yield
        return
    entered, gate = threading.Event(), threading.Event()

    def blocking() -> Tx[None]:
        entered.set()
        gate.wait(30)
        yield Exec("SELECT 1")

    first = asyncio.create_task(store._write(blocking))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        yield
    finally:
        gate.set()
        await first


async def test_one_failing_transaction_in_a_batch_rolls_back_alone(store: Store) -> None:
    made = []

    def failing() -> Tx[None]:
        made.append(1)
        yield Exec("INSERT INTO rejected_events (received_us, reason, request_id, body) VALUES (1, 'r', NULL, 'bad')")
        raise RuntimeError("boom")

    async with writes_held(store):
        writes = [asyncio.ensure_future(store.keep_rejected([("r", f"b{i}", None)])) for i in range(6)]
        writes.insert(3, asyncio.ensure_future(store._write(failing)))
        await asyncio.sleep(0.05)  # all submitted (SQLite: queued behind the held writer)
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[3], RuntimeError) and [r for r in results if r is not None] == [results[3]]
    assert len(made) == 2  # run in the batch, then again on its own
    assert await store.query("SELECT body FROM rejected_events ORDER BY body") == [(f"b{i}",) for i in range(6)]


async def test_a_statement_failing_partway_leaves_none_of_its_rows(store: Store) -> None:
    # SQLite runs INSERT and UPDATE ``OR FAIL`` (no statement journal): a statement failing at its
    # second row keeps its first until the transaction rolls back, which a failing one always does.
    await store.insert_message(msg(1))
    await store.insert_message(msg(2))

    def failing_insert() -> Tx[None]:
        yield Exec("INSERT INTO user_modes (user_id, mode, updated_us) VALUES ('u-a', 'live', 1), ('u-b', NULL, 1)")

    def failing_update() -> Tx[None]:
        yield Exec("UPDATE messages SET id = 'dup' WHERE id IN ('m0001', 'm0002')")

    async with writes_held(store):
        writes = [asyncio.ensure_future(store.keep_rejected([("r", f"b{i}", None)])) for i in range(4)]
        writes.insert(1, asyncio.ensure_future(store._write(failing_insert)))
        writes.insert(3, asyncio.ensure_future(store._write(failing_update)))
        await asyncio.sleep(0.05)  # all submitted (SQLite: queued behind the held writer)
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[1], Exception) and isinstance(results[3], Exception)
    assert [r for r in results if r is not None] == [results[1], results[3]]
    assert await store.query("SELECT user_id FROM user_modes") == []
    assert await store.query("SELECT id FROM messages ORDER BY id") == [("m0001",), ("m0002",)]
    assert await store.query("SELECT body FROM rejected_events ORDER BY body") == [(f"b{i}",) for i in range(4)]


async def test_concurrent_group_commits_of_two_replicas_never_deadlock(store_url: str) -> None:
    """Two stores on one database, each batching one-event ingests over the same messages in
    opposite orders, and sends: every batch completes (in one order of locks, or again apart)."""
    async with opened(store_url) as a, opened(store_url) as b:
        ids = [f"g{i}" for i in range(8)]
        for i, mid in enumerate(ids):
            await a.insert_message(msg(200 + i, id=mid))
        for round_ in range(15):
            forward = [a.ingest([GW.prepare(status(mid, "message-sending", description=f"a{round_}"))]) for mid in ids]
            backward = [b.ingest([GW.prepare(status(mid, "message-sending", description=f"b{round_}"))])
                        for mid in reversed(ids)]
            both = [b.ingest([GW.prepare(status(mid, "message-sending", description=f"a{round_}")) for mid in ids])]
            sends = []
            for j, s in enumerate((a, b)):
                n = 1000 + round_ * 2 + j
                await s.record_intent(intent(n))
                sends.append(s.bind_send(bind_v2(intent(n), f"gs{n}")))
            await asyncio.wait_for(asyncio.gather(*forward, *backward, *both, *sends), 30)
        assert await a.query("SELECT COUNT(*) FROM events") == [(len(ids) * 2 * 15,)]
        assert len(await a.query("SELECT id FROM messages WHERE id LIKE 'gs%' AND bound = 1")) == 30


async def test_message_ids_with_quotes_and_backslashes(store: Store) -> None:
    """Lock keys travel as SQL literals on PostgreSQL: any text is quoted right."""
    mid = "o'k\\x'; SELECT 1; --"
    await store.insert_message(msg(7, id=mid))
    assert await store.ingest([GW.prepare(status(mid, "message-delivered"))]) == 2
    got = await store.get_message("u-test", mid)
    assert got is not None and got.delivery_state == "delivered"


async def test_usage_counters_add_up_across_flushes(store: Store) -> None:
    """The migration report's counters: each flush adds its counts; last seen is the latest."""
    await store.add_usage([("u-1", "list:page", 2, 100), ("u-1", "v1:message", 1, 50)])
    await store.add_usage([("u-1", "list:page", 3, 90), ("u-2", "list:page", 1, 10)])
    await store.add_usage([])
    assert sorted(await store.usage_rows()) == [
        ("u-1", "list:page", 5, 100), ("u-1", "v1:message", 1, 50), ("u-2", "list:page", 1, 10)]


# -- delivery log, replay and discard by filter ------------------------------------------------
def attempt(d: Any, target: str = "primary", status: int | None = 200, at_us: int | None = None,
            error: str = "") -> Attempt:
    return Attempt(at_us=at_us if at_us is not None else now_us(), outbox_id=d.id, event_id=d.spec.event_id,
                   order_key=d.spec.order_key, user_id=d.spec.user_id, target=target,
                   host=host_key(d.spec.url), status=status, latency_us=1234,
                   outcome="ok" if status == 200 else "http-error", error=error, response="fine\u00e9")


async def test_attempts_logged_with_outcomes_and_timeline(store: Store) -> None:
    rec = msg(1)
    await store.insert_message(rec)
    await store.enqueue([spec(1, rec.id), spec(2, "other", url="http://127.0.0.2:9/cb")])
    d1, d2 = await store.claim("w", 10, 5_000_000)
    # A success is logged with the batch that records it (primary failed, fallback answered).
    assert await store.mark_delivered_many([d1.id], "w", [attempt(d1, status=500, error="HTTP 500"),
                                                          attempt(d1, "fallback")]) == 1
    assert await store.mark_failed(d2.id, "w", "HTTP 503", None, [attempt(d2, status=503, error="HTTP 503")])
    # Attempts are history: kept even when the outcome no longer applies (lease lost).
    assert await store.mark_delivered_many([d2.id], "w", [attempt(d2)]) == 0
    t = await store.message_timeline(rec.id)
    assert t.message is not None and t.message.id == rec.id
    assert [(c.event_id, c.status) for c in t.callbacks] == [("e1", "delivered")]
    assert [(a.target, a.status, a.error, a.response) for a in t.attempts] == [
        ("primary", 500, "HTTP 500", "fine\u00e9"), ("fallback", 200, "", "fine\u00e9")]
    rows = await store.list_attempts(DeliveryFilter(host="127.0.0.2"), limit=10)
    assert [(a.event_id, a.status, now) for a, now in rows] == [("e2", 200, "dead"), ("e2", 503, "dead")]
    assert len(await store.list_attempts(DeliveryFilter(outcome="delivered"), limit=10)) == 2
    assert len(await store.list_attempts(DeliveryFilter(), http_status=503, limit=10)) == 1
    assert len(await store.list_attempts(DeliveryFilter(event_id="e1"), limit=1)) == 1
    assert (await store.message_timeline("nothing")).attempts == []


async def test_delivery_log_purged_with_retention(store: Store) -> None:
    await store.enqueue([spec(1)])
    (d,) = await store.claim("w", 10, 5_000_000)
    old = now_us() - 10 * 86_400_000_000
    await store.mark_delivered_many([d.id], "w", [attempt(d, at_us=old), attempt(d)])
    report = await store.apply_retention(0, now_us() - 86_400_000_000)
    assert report.attempts_purged == 1
    assert len(await store.list_attempts(DeliveryFilter(), limit=10)) == 1


async def test_replay_and_discard_by_filter(store: Store) -> None:
    a, b = "http://127.0.0.1:9/cb", "http://127.0.0.3:9/cb"
    await store.enqueue([spec(1, "k1", a), spec(2, "k2", a), spec(3, "k3", b), spec(4, "k4", a)])
    got = {d.spec.event_id: d for d in await store.claim("w", 10, 5_000_000)}
    await store.mark_failed(got["e1"].id, "w", "x", None)
    await store.mark_failed(got["e3"].id, "w", "x", None)
    await store.mark_delivered_many([got["e2"].id], "w")
    # e4 stays leased (in flight): never counted nor touched.
    f = DeliveryFilter(host="127.0.0.1")
    assert await store.replay_matching(f, dry_run=True) == 2
    assert await store.discard_matching(f, dry_run=True) == 1
    assert await store.discard_matching(DeliveryFilter(host="127.0.0.1:9", outcome="delivered")) == 0
    assert await store.replay_matching(DeliveryFilter(host="127.0.0.1", outcome="delivered")) == 1
    assert await store.discard_matching(f) == 1  # e1, the dead letter: not e2 nor e4
    assert sorted(x.event_id for x in await store.dead_letters()) == ["e3"]
    assert await store.replay_matching(DeliveryFilter(ids=[got["e3"].id]), dry_run=True) == 1
    assert await store.replay_matching(DeliveryFilter(since_us=now_us() + 10**9)) == 0
    assert await store.replay_matching(DeliveryFilter(host="127.0.0.%")) == 0  # no wildcards
    counts = await store.outbox_counts()
    assert counts == {"pending": 2, "delivered": 0, "dead": 1}


async def test_a_bound_keeps_a_confirmed_action_to_what_was_counted(store: Store) -> None:
    a = "http://127.0.0.1:9/cb"
    await store.enqueue([spec(1, "k1", a)])
    (d,) = await store.claim("w", 10, 5_000_000)
    await store.mark_failed(d.id, "w", "x", None)
    counted = DeliveryFilter(outcome="dead", max_id=(await store.outbox_gauges())["max_id"])
    assert await store.discard_matching(counted, dry_run=True) == 1
    await store.enqueue([spec(2, "k2", a)])  # another dead letter arrives before the confirmation
    (d2,) = await store.claim("w", 10, 5_000_000)
    await store.mark_failed(d2.id, "w", "x", None)
    assert await store.discard_matching(counted) == 1
    assert [x.event_id for x in await store.dead_letters()] == ["e2"]
    assert DeliveryFilter(max_id=5).empty()  # a bound alone is not a filter


# -- the operator console's queries --------------------------------------------------------------
def ids_of(recs: list[MessageRecord]) -> list[str]:
    return [r.id for r in recs]


async def test_find_messages_filters_combined_newest_first(store: Store) -> None:
    # u-test: m0001..m0009 from +15551230001 to +1555000000{i % 3}, at i seconds.
    for i in range(1, 10):
        await store.insert_message(msg(i))
    # Another user: from a number that is u-test's recipient, and a message to itself.
    await store.insert_message(msg(10, id="o-10", user_id="u-other", from_="+15550000001", to="+15557770000"))
    await store.insert_message(msg(11, id="o-11", user_id="u-other", from_="+15550000001", to="+15550000001"))
    # Two at the same time: the later written (higher seq) first.
    await store.insert_message(msg(12, id="o-12a", user_id="u-other", from_="+15557770000", to="+15550000002"))
    await store.insert_message(msg(12, id="o-12b", user_id="u-other", from_="+15557770000", to="+15550000002"))
    # A send's intent, never bound (orphaned): operators see it.
    await store.record_intent(intent(13, to="+15550000001"))
    pending = pending_id(key(13))

    assert ids_of(await store.find_messages()) == [pending, "o-12b", "o-12a", "o-11", "o-10",
                                                   *[f"m{i:04d}" for i in range(9, 0, -1)]]
    assert ids_of(await store.find_messages(limit=3)) == [pending, "o-12b", "o-12a"]
    assert await store.find_messages(limit=0) == []
    # By id: exact (an intent by its pending id too); with other filters, all must match.
    assert ids_of(await store.find_messages(message_id="m0004")) == ["m0004"]
    assert ids_of(await store.find_messages(message_id=pending)) == [pending]
    assert await store.find_messages(message_id="m000") == []
    assert await store.find_messages(message_id="m0004", user_id="u-other") == []
    assert ids_of(await store.find_messages(message_id="m0004", number="+15550000001")) == ["m0004"]
    assert await store.find_messages(message_id="m0004", number="+15550000002") == []
    assert await store.find_messages(message_id="m0004", since_us=4_000_001) == []
    # By number: sender or recipient, any user, a message to itself once.
    n1 = "+15550000001"
    assert ids_of(await store.find_messages(number=n1)) == [pending, "o-11", "o-10", "m0007", "m0004", "m0001"]
    assert ids_of(await store.find_messages(number="+15557770000")) == ["o-12b", "o-12a", "o-10"]
    assert len(await store.find_messages(number="+15551230001")) == 10  # m0001..m0009 and the intent
    assert await store.find_messages(number="+1555") == []
    # The newest across both sides, then the limit.
    assert ids_of(await store.find_messages(number=n1, limit=2)) == [pending, "o-11"]
    assert ids_of(await store.find_messages(number="+15557770000", limit=2)) == ["o-12b", "o-12a"]
    assert ids_of(await store.find_messages(number=n1, limit=3)) == [pending, "o-11", "o-10"]
    # Number and user, number and window (both ends inclusive).
    assert ids_of(await store.find_messages(number=n1, user_id="u-test")) == [pending, "m0007", "m0004", "m0001"]
    assert ids_of(await store.find_messages(number=n1, user_id="u-other")) == ["o-11", "o-10"]
    assert ids_of(await store.find_messages(number=n1, since_us=4_000_000, until_us=11_000_000)) == \
        ["o-11", "o-10", "m0007", "m0004"]
    assert ids_of(await store.find_messages(number=n1, since_us=4_000_001, until_us=10_999_999)) == \
        ["o-10", "m0007"]
    assert ids_of(await store.find_messages(number=n1, user_id="u-test", since_us=2_000_000, until_us=7_000_000,
                                            limit=1)) == ["m0007"]
    # User and window without a number.
    assert ids_of(await store.find_messages(user_id="u-other")) == ["o-12b", "o-12a", "o-11", "o-10"]
    assert ids_of(await store.find_messages(since_us=3_000_000, until_us=5_000_000)) == ["m0005", "m0004", "m0003"]
    assert ids_of(await store.find_messages(since_us=12_000_000)) == [pending, "o-12b", "o-12a"]
    assert ids_of(await store.find_messages(until_us=1_000_000)) == ["m0001"]
    assert ids_of(await store.find_messages(user_id="u-test", since_us=9_000_000)) == [pending, "m0009"]
    assert await store.find_messages(user_id="u-nobody") == []
    got = (await store.find_messages(message_id="m0004"))[0]
    assert (got.user_id, got.text, got.seq is not None) == ("u-test", "t4", True)


async def test_pending_callbacks_oldest_first_with_their_state(store_url: str) -> None:
    t = [1_000_000_000]
    async with opened(store_url, clock=lambda: t[0]) as store:
        a, b = "http://127.0.0.1:9/cb", "http://127.0.0.3:8080/other"
        await store.enqueue([DeliverySpec(event_id="e1", order_key="m1", user_id="u-1", url=a, body={}),
                             DeliverySpec(event_id="e2", order_key="m1", user_id="u-1", url=a, body={}),
                             DeliverySpec(event_id="e3", order_key="native_m3", url=b, body={}),
                             DeliverySpec(event_id="e4", order_key="m4", user_id="u-2", url=b, body={})])
        t[0] += 1_000
        await store.enqueue([DeliverySpec(event_id="e5", order_key="m5", user_id="u-2", url=a, body={})])
        got = {d.spec.event_id: d for d in await store.claim("w", 10, 5_000_000)}
        assert sorted(got) == ["e1", "e3", "e4", "e5"]  # e2 waits behind e1
        assert await store.mark_delivered(got["e1"].id, "w")  # no longer pending
        assert await store.mark_failed(got["e3"].id, "w", "HTTP 503", t[0] + 60_000_000)  # retrying
        assert await store.mark_failed(got["e4"].id, "w", "HTTP 410", None)  # dead: not pending
        # e2 waits (never tried), e3 waits for its retry, e5 is in flight.
        pending = await store.pending_callbacks()
        assert [(p.event_id, p.message_id, p.user_id, p.host, p.url, p.attempts, p.next_attempt_us, p.created_us,
                 p.last_error, p.leased) for p in pending] == [
            ("e2", "m1", "u-1", "127.0.0.1:9", a, 0, 1_000_000_000, 1_000_000_000, None, False),
            ("e3", "native_m3", None, "127.0.0.3:8080", b, 1, 1_000_001_000 + 60_000_000, 1_000_000_000,
             "HTTP 503", False),
            ("e5", "m5", "u-2", "127.0.0.1:9", a, 0, 1_000_001_000, 1_000_001_000, None, True),
        ]
        assert [p.id for p in pending] == sorted(p.id for p in pending)
        assert [p.event_id for p in await store.pending_callbacks(limit=2)] == ["e2", "e3"]
        assert await store.pending_callbacks(limit=0) == []
        await store.release_all("w")
        assert [p.leased for p in await store.pending_callbacks()] == [False, False, False]
        # The dead letter, with its message, user and host.
        (dead,) = await store.dead_letters()
        assert (dead.event_id, dead.message_id, dead.user_id, dead.host, dead.url, dead.last_error) == \
            ("e4", "m4", "u-2", "127.0.0.3:8080", b, "HTTP 410")


async def test_activity_counts_events_and_attempts_in_the_window(store_url: str) -> None:
    t = [1_000_000_000]
    async with opened(store_url, clock=lambda: t[0]) as store:
        for i in range(1, 4):
            await store.insert_message(msg(i))
        await store.ingest([GW.prepare(status("m0001", "message-sending"))])  # at t0
        t[0] = 2_000_000_000
        await store.ingest([GW.prepare(status("m0002", "message-delivered")), GW.prepare(status("m0003", "message-sent"))])
        assert await store.ingest([GW.prepare(status("m0003", "message-sent"))]) == 0  # a duplicate: not stored
        assert (await store.query("SELECT COUNT(*) FROM events"))[0][0] == 3
        await store.enqueue([spec(i, f"k{i}") for i in range(1, 4)])
        claimed = {d.spec.event_id: d for d in await store.claim("w", 10, 5_000_000)}
        ds = [claimed["e1"], claimed["e2"], claimed["e3"]]
        # Attempts before the window, at its first microsecond, after.
        await store.mark_delivered_many([ds[0].id], "w", [attempt(ds[0], status=500, at_us=1_999_999_999, error="x"),
                                                          attempt(ds[0], "fallback", at_us=2_000_000_000)])
        await store.mark_failed(ds[1].id, "w", "HTTP 503", None, [
            attempt(ds[1], status=503, at_us=2_000_000_000, error="HTTP 503"),
            Attempt(at_us=2_000_000_500, outbox_id=ds[1].id, event_id=ds[1].spec.event_id,
                    order_key=ds[1].spec.order_key, user_id=None, target="primary", host="h:1", status=None,
                    latency_us=5, outcome="timeout", error="timeout")])
        await store.mark_delivered_many([ds[2].id], "w", [attempt(ds[2], at_us=2_000_001_000)])
        assert await store.activity(2_000_000_000) == {"events": 2, "attempts_ok": 2, "attempts_failed": 2}
        assert await store.activity(1_999_999_999) == {"events": 2, "attempts_ok": 2, "attempts_failed": 3}
        assert await store.activity(1_000_000_000) == {"events": 3, "attempts_ok": 2, "attempts_failed": 3}
        assert await store.activity(2_000_000_001) == {"events": 0, "attempts_ok": 1, "attempts_failed": 1}
        assert await store.activity(2_000_001_001) == {"events": 0, "attempts_ok": 0, "attempts_failed": 0}


def us_at(iso: str) -> int:
    """Epoch microseconds of an ISO-8601 UTC time."""
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()) * 1_000_000


async def test_usage_daily_counts_by_utc_day(store: Store) -> None:
    late, next_day = us_at("2026-03-01T23:59:59") + 999_999, us_at("2026-03-02T00:00:00")
    await store.add_usage([("u-1", "list:page", 2, late - 3_600_000_000), ("u-1", "v1:message", 1, late)])
    # A second flush the same day adds to the day; the next day starts its own counts.
    await store.add_usage([("u-1", "list:page", 3, late), ("u-2", "v1:message", 4, next_day)])
    await store.add_usage([("u-1", "list:page", 7, next_day + 1), ("u-1", "list:page", 1, next_day + 2)])
    assert await store.usage_daily("2026-03-01") == [
        ("u-1", "2026-03-01", "list:page", 5), ("u-1", "2026-03-01", "v1:message", 1),
        ("u-1", "2026-03-02", "list:page", 8), ("u-2", "2026-03-02", "v1:message", 4)]
    assert await store.usage_daily("2026-03-02") == [
        ("u-1", "2026-03-02", "list:page", 8), ("u-2", "2026-03-02", "v1:message", 4)]
    assert await store.usage_daily("2026-03-03") == []
    assert await store.usage_daily("2026-02-28") == await store.usage_daily("2026-03-01")
    # The totals are what they always were.
    assert sorted(await store.usage_rows()) == [
        ("u-1", "list:page", 13, next_day + 2), ("u-1", "v1:message", 1, late), ("u-2", "v1:message", 4, next_day)]


async def test_retention_purges_daily_usage_before_the_purge_day(store: Store) -> None:
    for day in ("2026-01-29", "2026-01-30", "2026-01-31", "2026-02-01"):
        await store.add_usage([("u-1", "v1:message", 1, us_at(f"{day}T12:00:00")),
                               ("u-2", "list:page", 2, us_at(f"{day}T00:00:00"))])
    report = await store.apply_retention(0, us_at("2026-01-31T06:00:00"))
    assert report.usage_days_purged == 4
    assert sorted({day for _, day, _, _ in await store.usage_daily("2000-01-01")}) == ["2026-01-31", "2026-02-01"]
    assert len(await store.usage_daily("2000-01-01")) == 4
    assert (await store.apply_retention(0, us_at("2026-01-31T06:00:00"))).usage_days_purged == 0
    # The totals are not retention's business.
    assert sorted(await store.usage_rows()) == [
        ("u-1", "v1:message", 4, us_at("2026-02-01T12:00:00")), ("u-2", "list:page", 8, us_at("2026-02-01T00:00:00"))]


async def test_console_queries_use_indexes_not_history(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every statement of the console's queries finds its rows through the index meant for it,
    over HISTORY rows of messages, events, delivered callbacks and attempts."""
    async with opened(store_url) as store:
        numbers = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {HISTORY})"
        await store.run_sql(
            f"{numbers} INSERT INTO messages (id, user_id, direction, from_number, to_number, state, time_us,"
            " created_us, doc, send_key) SELECT 'om-' || i, 'hu-' || (i % 100), 'out', '+1' || (i % 1000),"
            " '+2' || (i % 997), 'sent', i, i, ? || i || ?, 'ok-' || i FROM n",
            *doc(msg(0, id="om-@")).split("@"))
        await store.run_sql(
            f"{numbers} INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
            " SELECT 'old-' || i, 'om-' || i, '{}', 'applied', i FROM n")
        await store.run_sql(
            f"{numbers} INSERT INTO outbox (event_id, order_key, user_id, host, status, spec, attempts,"
            " next_attempt_us, created_us, updated_us)"
            " SELECT 'old-' || i, 'ok-' || i, 'u-test', 'old.example:80', 'delivered', '{}', 1, 0, i, i FROM n")
        await store.run_sql(
            f"{numbers} INSERT INTO delivery_log (at_us, outbox_id, event_id, order_key, user_id, target, host,"
            " status, latency_us, outcome) SELECT i, i, 'old-' || i, 'ok-' || i, 'u-test', 'primary',"
            " 'old.example:80', 200, 10, 'ok' FROM n")
        for i in range(1, 6):
            await store.insert_message(msg(i, time_us=now_us()))
        # A backlog (with 6 rows, the planners would sort them too; with a few hundred, a plain
        # ORDER BY id walks the primary key from the first row ever enqueued).
        await store.enqueue([spec(i, f"k{i}") for i in range(1, 301)])
        held = await store.claim("w", 3, 60_000_000)
        await store.mark_failed(held[0].id, "w", "HTTP 500", None, [attempt(held[0], status=500)])
        await store.mark_delivered_many([held[1].id], "w", [attempt(held[1])])
        assert await store.ingest([GW.prepare(status("m0001", "message-delivered"))]) == 2  # sent + receipt
        await store.run_sql("ANALYZE")

        ops = record_statements(monkeypatch, store_url)
        recent = now_us() - 3_600_000_000
        # Each call, and the indexes each of its statements must use.
        both = ("messages_from_time", "messages_to_time")
        calls: list[tuple[Callable[[], Awaitable[Any]], list[tuple[str, ...]]]] = [
            (lambda: store.find_messages(), [("messages_time",)]),
            (lambda: store.find_messages(number="+15551230001"), [both]),
            (lambda: store.find_messages(number="+1777", since_us=100, until_us=15_000), [both]),
            (lambda: store.find_messages(number="+2555", user_id="hu-55", limit=5), [both]),
            (lambda: store.find_messages(message_id="om-77"), [("messages_id",)]),
            (lambda: store.find_messages(message_id="om-77", number="+177", user_id="hu-77"), [("messages_id",)]),
            (lambda: store.find_messages(since_us=100, until_us=200), [("messages_time",)]),
            (lambda: store.find_messages(user_id="hu-7"), [("messages_user_seq",)]),
            (lambda: store.pending_callbacks(), [("outbox_pending_id",)]),
            (lambda: store.dead_letters(), [("outbox_dead",)]),
            (lambda: store.activity(recent), [("events_received",), ("delivery_log_at",)]),
        ]
        results = []
        expected: list[tuple[str, ...]] = []
        for call, indexes in calls:
            before = len(ops)
            results.append(await call())
            assert len(ops) - before == len(indexes)
            expected += indexes
        monkeypatch.undo()

        assert len(results[1]) == 5 and len(results[0]) == 50
        assert [r.id for r in results[4]] == ["om-77"] == [r.id for r in results[5]]
        assert len(results[8]) == 100 and len(results[9]) == 1
        assert [p.id for p in results[8]] == sorted(p.id for p in results[8])
        assert results[10] == {"events": 1, "attempts_ok": 1, "attempts_failed": 1}
        assert len(ops) == len(expected) >= 12
        for (sql, args), indexes in zip(ops, expected, strict=True):
            plan = await explain(store_url, sql, args)
            assert not scans_a_table(store_url, plan), f"{sql}\n{plan}"
            for index in indexes:
                if index == "messages_id":  # the UNIQUE constraint's index, named by each backend
                    assert re.search(r"sqlite_autoindex_messages_1|messages_id_key", plan), f"{sql}\n{plan}"
                else:
                    assert index in plan, f"{sql}\n{plan}"
            # Pending callbacks: a partial index on pending rows, never the primary key from the start.
            assert "outbox_pkey" not in plan, f"{sql}\n{plan}"


def record_statements(monkeypatch: pytest.MonkeyPatch, store_url: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Every statement the store runs from now on (locks aside), with its arguments, for their plans."""
    ops: list[tuple[str, tuple[Any, ...]]] = []
    module: Any = sqlite_backend if store_url.startswith("sqlite:") else postgres_backend
    original = module.run

    def recording(conn: Any, op: Any) -> Any:
        if op.kind != "lock":
            ops.append((op.sql, op.args))
        return original(conn, op)

    monkeypatch.setattr(module, "run", recording)
    return ops


HISTORY_TABLES = r"(messages|events|outbox|delivery_log)"


def scans_a_table(url: str, plan: str) -> bool:
    """A table with history read whole (SQLite: ``SCAN t`` without an index, not a subquery's
    rows; PostgreSQL: a Seq Scan)."""
    if url.startswith("sqlite:"):
        return any(re.fullmatch(rf"SCAN {HISTORY_TABLES}", line.strip()) for line in plan.splitlines())
    return re.search(rf"Seq Scan on {HISTORY_TABLES}\b", plan) is not None


# -- SQLite's checkpoints follow the commits closely (performance issue 9) ---------------------------
def wal_backfill(db: Path) -> tuple[int, int]:
    """(frames in the WAL, frames of it checkpointed): mxFrame of the wal-index header and
    nBackfill of the checkpoint info after its two copies, read from the -shm file."""
    shm = Path(f"{db}-shm").read_bytes()
    return int.from_bytes(shm[16:20], sys.byteorder), int.from_bytes(shm[96:100], sys.byteorder)


async def test_sqlite_checkpoints_soon_after_a_commit(tmp_path: Path) -> None:
    # A checkpoint syncs the WAL first, and the writer's appends wait for that sync: a checkpoint a
    # second had ~1 s of WAL to sync under load (tens of MB), every request of that moment delayed.
    # So one runs CHECKPOINT_AFTER_S after a commit, with little to sync.
    db = tmp_path / "ckpt.db"
    async with opened(f"sqlite:///{db}") as store:
        await store.insert_message(msg(1))
        frames, done = wal_backfill(db)
        assert frames > done  # the commit is in the WAL, not yet in the database
        deadline = asyncio.get_running_loop().time() + 10 * sqlite_backend.CHECKPOINT_AFTER_S
        while asyncio.get_running_loop().time() < deadline and done < frames:
            await asyncio.sleep(0.01)
            frames, done = wal_backfill(db)
        assert done == frames
        assert await store.get_message("u-test", "m0001") is not None


async def test_sqlite_wal_starts_over_under_steady_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under a load with no pause, each checkpoint trails the writer and the WAL never starts over
    # by itself: the file grows for as long as the load lasts. Past WAL_RESTART_FRAMES the writer
    # finishes a checkpoint between two batches, so its next write starts the WAL over.
    monkeypatch.setattr(sqlite_backend, "WAL_RESTART_FRAMES", 300)
    db = tmp_path / "wal.db"
    async with opened(f"sqlite:///{db}") as store:
        frames: list[int] = []
        written = 0
        # The load lasts until the WAL started over 3 times (or 10 s): a count of writes alone
        # would make this depend on how fast the writer is (each restart waits for a checkpoint).
        deadline = asyncio.get_running_loop().time() + 10

        def restarts() -> int:
            return sum(b < a for a, b in itertools.pairwise(frames))

        def loaded() -> bool:
            return restarts() >= 3 or asyncio.get_running_loop().time() > deadline

        async def watch() -> None:
            while not loaded():
                frames.append(wal_backfill(db)[0])
                await asyncio.sleep(0.002)

        async def writer(w: int) -> None:
            nonlocal written
            i = 0
            while not loaded():
                await store.insert_message(msg(w * 100_000 + i))
                i += 1
                written += 1

        await asyncio.gather(watch(), *(writer(w) for w in range(8)))
        assert restarts() >= 3, (restarts(), max(frames))  # without the writer's checkpoint: 0, ever more frames
        assert len(await store.find_messages(limit=written + 1)) == written


async def test_sqlite_closes_although_the_checkpointer_swallowed_its_wake_up(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # close() sets _closing and wakes the checkpointer through _committed; landing just before the
    # checkpointer's clear() of _committed, that wake-up was swallowed and close() waited forever
    # (seen as a hung suite). Here close() lands exactly there, every time (before the fix this
    # test hangs: close() never returns, nor does the loop's executor).
    monkeypatch.setattr(sqlite_backend, "CHECKPOINT_AFTER_S", 0)
    store: Any = open_store(f"sqlite:///{tmp_path}/close.db", GW)

    class CloseLandsBeforeClear(threading.Event):
        def clear(self) -> None:
            # The checkpointer is about to clear: let close() set _closing and wake it first.
            deadline = time.monotonic() + 5
            while not (store._closing.is_set() and self.is_set()) and time.monotonic() < deadline:
                time.sleep(0.001)
            super().clear()

    store._committed = CloseLandsBeforeClear()
    await store.open()
    await store.insert_message(msg(1))
    await asyncio.wait_for(store.close(), 5)
