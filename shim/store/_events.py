"""Events: ingest of v2 callback events, a sent message meeting the events that arrived before it,
and events routed as native once their grace period is over."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shim.core import MessageRecord, V2Event

from ._core import SHORT_ROWS, StoreCore
from ._messages import bind_row, insert_row, record, update_row
from ._ops import All, Exec, One, Tx, one_tx, returning
from ._outbox import enqueue_rows
from ._types import IncomingEvent

# Whether any event waits for a message being recorded (``RETURNING`` its id and this; args: its id
# and its send key): each test on its own partial index, so a send nobody waits for costs no more.
PENDING = ("EXISTS (SELECT 1 FROM events WHERE message_id = ? AND status = 'pending')"
           " OR EXISTS (SELECT 1 FROM events WHERE send_key = ? AND status = 'pending')")


class EventTxs(StoreCore):
    # -- sends: intent, bind, drop ----------------------------------------------------------
    async def record_intent(self, rec: MessageRecord) -> None:
        """Durably record a send before v2 is called, under its pending id and correlation key."""
        await self._timed_short_write(self._tx_record_intent, rec)

    def _tx_record_intent(self, rec: MessageRecord) -> Tx[None]:
        assert rec.send_key is not None
        # Its pending id is the send's alone: nobody waits, but a batch may run it in lockstep.
        yield from self._lock_message(rec.id)
        yield from insert_row(rec, self.clock, bound=False)

    async def bind_send(self, rec: MessageRecord, request_id: str | None = None) -> int:
        """v2 accepted the send ``rec.send_key`` as ``rec.id``: bind the intent to that id (unless an
        event did first) and apply the events that arrived before. Returns deliveries enqueued."""
        return await self._timed_short_write(self._tx_bind_send, rec, request_id)

    def _tx_bind_send(self, rec: MessageRecord, request_id: str | None) -> Tx[int]:
        assert rec.send_key is not None
        yield from self._lock_message(rec.id)
        # One statement in the common case: bind, and learn whether any event waits for it.
        row = yield from bind_row(rec, returning=PENDING, split=self.split_returning)
        if row is None:
            if (yield One("SELECT 1 FROM messages WHERE send_key = ?", rec.send_key)) is not None:
                return 0  # an event bound it already (and applied itself)
            # The intent is gone (purged): record the message as it is now.
            yield from insert_row(rec, self.clock)
        elif not row[1]:
            return 0
        return (yield from self._apply_pending(rec.id, rec.send_key, request_id))

    async def drop_intent(self, send_key: str) -> bool:
        """v2 refused the send (or was never reached): forget its intent."""
        return bool(await self._timed_short_write(
            one_tx, "DELETE FROM messages WHERE send_key = ? AND bound = 0 RETURNING 1", send_key))

    async def insert_message(self, rec: MessageRecord, request_id: str | None = None) -> int:
        """Store a message known by its id and apply any callback that arrived before it.
        Returns the number of deliveries enqueued."""
        return await self._timed_short_write(self._tx_insert_message, rec, request_id)

    def _tx_insert_message(self, rec: MessageRecord, request_id: str | None) -> Tx[int]:
        yield from self._lock_message(rec.id)
        row = yield from insert_row(rec, self.clock, returning=PENDING, split=self.split_returning)
        if row is not None and not row[1]:
            return 0  # recorded, and no event waits for it
        return (yield from self._apply_pending(rec.id, rec.send_key, request_id))

    async def record_native(self, rec: MessageRecord) -> None:
        """Record a message sent natively on v2 through the passthrough (``rec.native``). Its events
        that arrived first were routed natively at ingest already: they only bring its state up to date."""
        await self._timed_short_write(self._tx_record_native, rec)

    def _tx_record_native(self, rec: MessageRecord) -> Tx[None]:
        yield from self._lock_message(rec.id)
        if (yield One("SELECT 1 FROM messages WHERE id = ?", rec.id)) is not None:
            return
        yield from insert_row(rec, self.clock)
        early = yield All("SELECT payload FROM events WHERE message_id = ? AND status = 'native' ORDER BY received_us",
                          rec.id)
        new = rec
        for (payload,) in early:
            new, _ = self.rules.apply_status(new, json.loads(payload))
        if new != rec:
            yield from update_row(new)

    async def record_simulated(self, rec: MessageRecord, events: Sequence[dict[str, Any]]) -> int:
        """A dry-run send: the message and the v2 events it is simulated to have, applied as
        received ones would be (its v1 callbacks enqueued), in one write. Returns deliveries enqueued."""
        return await self._timed_short_write(self._tx_record_simulated, rec, events)

    def _tx_record_simulated(self, rec: MessageRecord, events: Sequence[dict[str, Any]]) -> Tx[int]:
        yield from self._lock_message(rec.id)
        yield from insert_row(rec, self.clock)
        count = 0
        for ev in events:
            row = yield One("SELECT seq, doc FROM messages WHERE id = ?", rec.id)
            count += yield from self._apply(record(row), ev, None)
        return count

    # -- v2 events ----------------------------------------------------------------------------
    async def ingest(self, events: Sequence[IncomingEvent]) -> int:
        """Durably record v2 events (duplicates once) and apply them. Returns deliveries
        enqueued. An event of shim's send finds its message by id, or by the send's correlation
        key (binding it); an event without a key belongs to a message sent natively on v2 and is
        routed at once."""
        if len(events) <= SHORT_ROWS:
            return await self._timed_short_write(self._tx_ingest, events)
        return await self._timed_write(self._tx_ingest, events)

    def _tx_ingest(self, events: Sequence[IncomingEvent]) -> Tx[int]:
        # Every lock up front, in one order: arrays touching the same messages in any order
        # cannot deadlock.
        yield from self._lock_messages([ev.message_id for ev in events])
        count = 0
        for ev in events:
            # Recording the event is also the duplicate check: a known key inserts nothing. A
            # status event reads its message in the same statement.
            fresh = yield from returning(
                "INSERT INTO events (dedupe_key, message_id, payload, status, received_us, send_key)"
                " VALUES (?, ?, ?, 'applied', ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
                (ev.dedupe_key, ev.message_id, ev.payload_json, self.clock(), ev.send_key),
                "dedupe_key", ev.dedupe_key,
                *(("", ()) if ev.inbound is not None else (
                    "(SELECT seq FROM messages WHERE id = ?), (SELECT doc FROM messages WHERE id = ?)",
                    (ev.message_id, ev.message_id))),
                split=self.split_returning,
            )
            if not fresh:
                continue
            if ev.inbound is not None:
                yield from insert_row(ev.inbound, self.clock)
                count += yield from enqueue_rows(ev.inbound_deliveries, self.clock, ev.request_id)
                continue
            if fresh[1] is not None:
                rec = record(fresh[1:])
                if rec.native:  # sent through the v2 passthrough: its state kept, its events routed at once
                    new, _ = self.rules.apply_status(rec, ev.event or ev.payload)
                    if new != rec:
                        yield from update_row(new)
                    count += yield from enqueue_rows(self.rules.route_native(ev.payload), self.clock, ev.request_id)
                    continue
                count += yield from self._apply(rec, ev.event or ev.payload, ev.request_id)
                continue
            if ev.send_key is None:
                count += yield from enqueue_rows(self.rules.route_native(ev.payload), self.clock, ev.request_id)
                yield Exec("UPDATE events SET status = 'native' WHERE dedupe_key = ?", ev.dedupe_key)
                continue
            row = yield One("SELECT seq, doc FROM messages WHERE send_key = ? AND bound = 0", ev.send_key)
            if row:
                rec = record(row).model_copy(update={"id": ev.message_id})
                yield from bind_row(rec)
                count += yield from self._apply(rec, ev.event or ev.payload, ev.request_id)
            else:  # its send is not recorded (yet): kept, applied when it is
                yield Exec("UPDATE events SET status = 'pending' WHERE dedupe_key = ?", ev.dedupe_key)
        return count

    async def keep_rejected(self, rejected: Sequence[tuple[str, str, str | None]]) -> None:
        """Malformed v2 events, kept for inspection: (reason, body as escaped ASCII, request id).
        Their text is gone with them after ``retention.text_days``."""
        await self._timed_write(self._tx_keep_rejected, rejected)

    def _tx_keep_rejected(self, rejected: Sequence[tuple[str, str, str | None]]) -> Tx[None]:
        now = self.clock()
        for reason, body, request_id in rejected:
            yield Exec("INSERT INTO rejected_events (received_us, reason, request_id, body) VALUES (?, ?, ?, ?)",
                       now, reason, request_id, body)

    async def route_unmatched(self, older_than_us: int, limit: int = 500) -> int:
        """Events stored pending by versions of shim before correlation keys (no key, no record)
        belong to messages sent natively on v2: hand them to the native route once their grace
        period is over. New events without a key are routed at ingest."""
        return await self._timed_write(self._tx_route_unmatched, older_than_us, limit)

    def _tx_route_unmatched(self, older_than_us: int, limit: int) -> Tx[int]:
        # Candidates are read without row locks: each is then taken under its message's lock
        # (the one ``_apply_pending`` holds) and claimed by a conditional update, so an event is
        # either applied to its message or routed as native, never both. Locks in one order
        # (message id), like ingest, so sweepers and ingests cannot deadlock.
        rows = yield All(
            "SELECT dedupe_key, message_id FROM events WHERE status = 'pending' AND send_key IS NULL"
            " AND received_us < ? ORDER BY received_us LIMIT ?",
            older_than_us, limit,
        )
        count = 0
        for key, message_id in sorted(rows, key=lambda r: (r[1], r[0])):
            yield from self._lock_message(message_id)
            taken = yield One(
                "UPDATE events SET status = 'native' WHERE dedupe_key = ? AND status = 'pending' RETURNING payload",
                key,
            )
            if taken is None:  # applied (or routed by another sweeper) meanwhile
                continue
            count += yield from enqueue_rows(self.rules.route_native(json.loads(taken[0])), self.clock)
        return count

    async def pending_event_count(self) -> int:
        row = await self._timed_read(one_tx, "SELECT COUNT(*) FROM events WHERE status = 'pending'")
        return int(row[0]) if row else 0

    def _apply(self, rec: MessageRecord, event: dict[str, Any] | V2Event, request_id: str | None) -> Tx[int]:
        new, specs = self.rules.apply_status(rec, event)
        if new is not rec:  # ``apply_status`` hands back ``rec`` itself when nothing changed
            yield from update_row(new)
        return (yield from enqueue_rows(specs, self.clock, request_id))

    def _apply_pending(self, message_id: str, send_key: str | None, request_id: str | None) -> Tx[int]:
        """Events that arrived before their message was recorded (found by id or by key)."""
        # Each lookup on its own partial index (an OR of the two would scan every event).
        rows = yield All(
            "SELECT dedupe_key, payload, received_us FROM events WHERE message_id = ? AND status = 'pending'"
            + ("" if send_key is None else
               " UNION SELECT dedupe_key, payload, received_us FROM events WHERE send_key = ? AND status = 'pending'")
            + " ORDER BY received_us",
            message_id, *(() if send_key is None else (send_key,)),
        )
        count = 0
        for key, payload, _ in rows:
            row = yield One("SELECT seq, doc FROM messages WHERE id = ?", message_id)
            if row is None:
                break
            count += yield from self._apply(record(row), json.loads(payload), request_id)
            yield Exec("UPDATE events SET status = 'applied' WHERE dedupe_key = ?", key)
        return count
