"""Events: ingest of v2 callback events, a sent message meeting the events that arrived before it,
and events routed as native once their grace period is over."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shim.core import MessageRecord

from ._core import StoreCore
from ._messages import insert_row, record, update_row
from ._ops import All, Exec, One, Tx, one_tx
from ._outbox import enqueue_rows
from ._types import IncomingEvent


class EventTxs(StoreCore):
    async def insert_message(self, rec: MessageRecord, request_id: str | None = None) -> int:
        """Store a sent message and apply any callback that arrived before it. Returns the
        number of deliveries enqueued."""
        return await self._timed_write(self._tx_insert_message(rec, request_id))

    def _tx_insert_message(self, rec: MessageRecord, request_id: str | None) -> Tx[int]:
        yield from self._lock_message(rec.id)
        yield from insert_row(rec, self.clock)
        return (yield from self._apply_pending(rec.id, request_id))

    async def ingest(self, events: Sequence[IncomingEvent]) -> int:
        """Durably record v2 events (duplicates once) and apply them. Returns deliveries
        enqueued. Events whose message is not recorded yet stay pending."""
        return await self._timed_write(self._tx_ingest(events))

    def _tx_ingest(self, events: Sequence[IncomingEvent]) -> Tx[int]:
        count = 0
        for ev in events:
            yield from self._lock_message(ev.message_id)
            # Recording the event is also the duplicate check: a known key inserts nothing.
            fresh = yield One(
                "INSERT INTO events (dedupe_key, message_id, payload, status, received_us)"
                " VALUES (?, ?, ?, 'applied', ?) ON CONFLICT (dedupe_key) DO NOTHING RETURNING 1",
                ev.dedupe_key, ev.message_id, ev.payload_json, self.clock(),
            )
            if not fresh:
                continue
            if ev.inbound is not None:
                yield from insert_row(ev.inbound, self.clock)
                count += yield from enqueue_rows(ev.inbound_deliveries, self.clock, ev.request_id)
                continue
            row = yield One("SELECT seq, doc FROM messages WHERE id = ?", ev.message_id)
            if row:
                count += yield from self._apply(record(row), ev.payload, ev.request_id)
            else:
                yield Exec("UPDATE events SET status = 'pending' WHERE dedupe_key = ?", ev.dedupe_key)
        return count

    async def route_unmatched(self, older_than_us: int, limit: int = 500) -> int:
        """Events that waited longer than the grace period for a send record belong to messages
        sent natively on v2: hand them to the rules' native-events router."""
        return await self._timed_write(self._tx_route_unmatched(older_than_us, limit))

    def _tx_route_unmatched(self, older_than_us: int, limit: int) -> Tx[int]:
        rows = yield All(
            "SELECT dedupe_key, payload FROM events WHERE status = 'pending' AND received_us < ? "
            f"ORDER BY received_us LIMIT ?{self.skip_locked}",
            older_than_us, limit,
        )
        count = 0
        for key, payload in rows:
            count += yield from enqueue_rows(self.rules.route_native(json.loads(payload)), self.clock)
            yield Exec("UPDATE events SET status = 'native' WHERE dedupe_key = ?", key)
        return count

    async def pending_event_count(self) -> int:
        row = await self._timed_read(one_tx("SELECT COUNT(*) FROM events WHERE status = 'pending'"))
        return int(row[0]) if row else 0

    def _apply(self, rec: MessageRecord, payload: dict[str, Any], request_id: str | None) -> Tx[int]:
        new, specs = self.rules.apply_status(rec, payload)
        if new != rec:
            yield from update_row(new)
        return (yield from enqueue_rows(specs, self.clock, request_id))

    def _apply_pending(self, message_id: str, request_id: str | None) -> Tx[int]:
        rows = yield All(
            "SELECT dedupe_key, payload FROM events WHERE message_id = ? AND status = 'pending' ORDER BY received_us",
            message_id,
        )
        count = 0
        for key, payload in rows:
            row = yield One("SELECT seq, doc FROM messages WHERE id = ?", message_id)
            if row is None:
                break
            count += yield from self._apply(record(row), json.loads(payload), request_id)
            yield Exec("UPDATE events SET status = 'applied' WHERE dedupe_key = ?", key)
        return count
