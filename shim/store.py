"""The store: messages, ingested v2 events and the callback outbox, behind one interface.

Backends (``store_sqlite``, ``store_postgres``) only supply connections and SQL dialect; every
transaction is written once here, so both pass the same contract suite
(``tests/test_store_contract.py``).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .deliveries import Delivery, DeliverySpec
from .listing import ListQuery
from .message import MessageRecord
from .timeutil import now_us

# A status event applied to a stored message: returns the updated record and the v1 callbacks.
StatusApplier = Callable[[MessageRecord, dict[str, Any]], tuple[MessageRecord, list[DeliverySpec]]]
# An event whose message shim never recorded (sent natively on v2): the deliveries it causes.
NativeRouter = Callable[[dict[str, Any]], list[DeliverySpec]]


@dataclass
class IncomingEvent:
    """One v2 callback event, prepared by the gateway for ingestion."""

    dedupe_key: str
    message_id: str
    payload: dict[str, Any]
    # For ``message-received``: the new inbound record and its callbacks (no stored state needed).
    inbound: MessageRecord | None = None
    inbound_deliveries: Sequence[DeliverySpec] = ()


@dataclass
class DeadLetter:
    id: int
    event_id: str
    url: str
    attempts: int
    last_error: str | None
    updated_us: int


class Tx(abc.ABC):
    """The few operations a transaction needs; SQL uses ``?`` placeholders."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...


class Store(abc.ABC):
    """Shared transactions. Subclasses provide ``transaction``/``read`` and the schema."""

    skip_locked = ""

    def __init__(self) -> None:
        self.apply_status: StatusApplier | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> Any:
        """Async context manager yielding a write Tx, committed on success."""

    def read(self) -> Any:
        return self.transaction()

    async def ping(self) -> None:
        async with self.read() as tx:
            await tx.fetchone("SELECT 1")

    # -- messages --------------------------------------------------------------------------
    async def insert_message(self, rec: MessageRecord) -> int:
        """Store a sent message and apply any callback that arrived before it. Returns the
        number of deliveries enqueued."""
        async with self.transaction() as tx:
            await self._lock_message(tx, rec.id)
            await self._insert_message(tx, rec)
            return await self._apply_pending(tx, rec)

    async def get_message(self, user_id: str, message_id: str) -> MessageRecord | None:
        async with self.read() as tx:
            row = await tx.fetchone(
                "SELECT seq, doc FROM messages WHERE id = ? AND user_id = ?", message_id, user_id
            )
        return _record(row) if row else None

    async def list_messages(self, user_id: str, q: ListQuery) -> list[MessageRecord]:
        where, args = ["user_id = ?"], [user_id]
        for col, value in (
            ("from_number", q.from_),
            ("to_number", q.to),
            ("direction", q.direction),
            ("state", q.state),
            ("delivery_state", q.delivery_state),
        ):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if q.from_us is not None:
            where.append("time_us >= ?")
            args.append(q.from_us)  # type: ignore[arg-type]
        if q.to_us is not None:
            where.append("time_us <= ?")
            args.append(q.to_us)  # type: ignore[arg-type]
        if q.after_seq is not None:
            where.append("seq < ?" if q.descending else "seq > ?")
            args.append(q.after_seq)  # type: ignore[arg-type]
        order = "DESC" if q.descending else "ASC"
        sql = (
            f"SELECT seq, doc FROM messages WHERE {' AND '.join(where)} "
            f"ORDER BY seq {order} LIMIT ? OFFSET ?"
        )
        async with self.read() as tx:
            rows = await tx.fetchall(sql, *args, q.size + 1, q.offset)
        return [_record(r) for r in rows]

    async def redact_text(self, user_id: str, message_id: str) -> bool:
        async with self.transaction() as tx:
            row = await tx.fetchone(
                "SELECT seq, doc FROM messages WHERE id = ? AND user_id = ?", message_id, user_id
            )
            if not row:
                return False
            rec = _record(row)
            rec.text = ""
            await self._update_message(tx, rec)
            return True

    # -- events ----------------------------------------------------------------------------
    async def ingest(self, events: Sequence[IncomingEvent]) -> int:
        """Durably record v2 events (duplicates once) and apply them. Returns deliveries
        enqueued. Events whose message is not recorded yet stay pending."""
        async with self.transaction() as tx:
            return await self._ingest(tx, events)

    async def _ingest(self, tx: Tx, events: Sequence[IncomingEvent]) -> int:
        count = 0
        for ev in events:
            await self._lock_message(tx, ev.message_id)
            dup = await tx.fetchone("SELECT 1 FROM events WHERE dedupe_key = ?", ev.dedupe_key)
            if dup:
                continue
            now = now_us()
            if ev.inbound is not None:
                await self._insert_message(tx, ev.inbound)
                count += await self._enqueue(tx, ev.inbound_deliveries)
                status = "applied"
            else:
                row = await tx.fetchone("SELECT seq, doc FROM messages WHERE id = ?", ev.message_id)
                if row:
                    count += await self._apply(tx, _record(row), ev.payload)
                    status = "applied"
                else:
                    status = "pending"
            await tx.execute(
                "INSERT INTO events (dedupe_key, message_id, payload, status, received_us) "
                "VALUES (?, ?, ?, ?, ?)",
                ev.dedupe_key, ev.message_id, json.dumps(ev.payload), status, now,
            )
        return count

    async def route_unmatched(self, older_than_us: int, router: NativeRouter, limit: int = 500) -> int:
        """Events that waited longer than the grace period for a send record belong to messages
        sent natively on v2: hand them to the native-events router."""
        async with self.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT dedupe_key, payload FROM events WHERE status = 'pending' "
                f"AND received_us < ? ORDER BY received_us LIMIT ?{self.skip_locked}",
                older_than_us, limit,
            )
            count = 0
            for key, payload in rows:
                count += await self._enqueue(tx, router(json.loads(payload)))
                await tx.execute("UPDATE events SET status = 'native' WHERE dedupe_key = ?", key)
            return count

    async def pending_event_count(self) -> int:
        async with self.read() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM events WHERE status = 'pending'")
        return int(row[0]) if row else 0

    async def enqueue(self, specs: Sequence[DeliverySpec]) -> int:
        async with self.transaction() as tx:
            return await self._enqueue(tx, specs)

    # -- outbox ----------------------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_us: int) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries whose earlier siblings are all done."""
        now = now_us()
        async with self.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE outbox SET lease_owner = ?, lease_until_us = ? WHERE id IN ("
                " SELECT o.id FROM outbox o WHERE o.status = 'pending' AND o.next_attempt_us <= ?"
                " AND (o.lease_until_us IS NULL OR o.lease_until_us < ?)"
                " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.order_key = o.order_key"
                "  AND p.status = 'pending' AND p.id < o.id)"
                f" ORDER BY o.next_attempt_us, o.id LIMIT ?{self.skip_locked}"
                ") RETURNING id, spec, attempts",
                owner, now + lease_us, now, now, limit,
            )
        out = [
            Delivery(id=r[0], spec=DeliverySpec.model_validate_json(r[1]), attempts=r[2])
            for r in rows
        ]
        out.sort(key=lambda d: d.id)
        return out

    async def release(self, delivery_id: int, owner: str) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL "
                "WHERE id = ? AND lease_owner = ?",
                delivery_id, owner,
            )

    async def release_all(self, owner: str | None = None) -> None:
        async with self.transaction() as tx:
            if owner is None:
                await tx.execute(
                    "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL "
                    "WHERE status = 'pending'"
                )
            else:
                await tx.execute(
                    "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL "
                    "WHERE lease_owner = ? AND status = 'pending'",
                    owner,
                )

    async def mark_deferred(self, delivery_id: int, owner: str, next_attempt_us: int) -> None:
        """Give back a lease without an attempt (its host is busy); try again later."""
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE outbox SET next_attempt_us = ?, lease_owner = NULL, lease_until_us = NULL"
                " WHERE id = ? AND lease_owner = ?",
                next_attempt_us, delivery_id, owner,
            )

    async def mark_delivered(self, delivery_id: int, owner: str) -> bool:
        async with self.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE outbox SET status = 'delivered', lease_owner = NULL, lease_until_us = NULL,"
                " attempts = attempts + 1, updated_us = ? WHERE id = ? AND lease_owner = ?"
                " RETURNING id",
                now_us(), delivery_id, owner,
            )
        return row is not None

    async def mark_failed(
        self, delivery_id: int, owner: str, error: str, next_attempt_us: int | None
    ) -> bool:
        """Schedule a retry, or dead-letter when ``next_attempt_us`` is None."""
        status = "pending" if next_attempt_us is not None else "dead"
        async with self.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE outbox SET status = ?, lease_owner = NULL, lease_until_us = NULL,"
                " attempts = attempts + 1, next_attempt_us = ?, last_error = ?, updated_us = ?"
                " WHERE id = ? AND lease_owner = ? RETURNING id",
                status, next_attempt_us or 0, error[:1000], now_us(), delivery_id, owner,
            )
        return row is not None

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        async with self.read() as tx:
            rows = await tx.fetchall(
                "SELECT id, event_id, spec, attempts, last_error, updated_us FROM outbox "
                "WHERE status = 'dead' ORDER BY id LIMIT ?",
                limit,
            )
        return [
            DeadLetter(
                id=r[0], event_id=r[1], url=DeliverySpec.model_validate_json(r[2]).url,
                attempts=r[3], last_error=r[4], updated_us=r[5],
            )
            for r in rows
        ]

    async def replay(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters (all, or the given ids) back in the queue for a fresh schedule."""
        now = now_us()
        async with self.transaction() as tx:
            if ids is None:
                rows = await tx.fetchall(
                    "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_us = ?,"
                    " updated_us = ? WHERE status = 'dead' RETURNING id",
                    now, now,
                )
                return len(rows)
            count = 0
            for i in ids:
                row = await tx.fetchone(
                    "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_us = ?,"
                    " updated_us = ? WHERE status = 'dead' AND id = ? RETURNING id",
                    now, now, i,
                )
                count += row is not None
            return count

    async def outbox_counts(self) -> dict[str, int]:
        async with self.read() as tx:
            rows = await tx.fetchall("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def next_due_us(self) -> int | None:
        async with self.read() as tx:
            row = await tx.fetchone(
                "SELECT MIN(next_attempt_us) FROM outbox WHERE status = 'pending'"
            )
        return int(row[0]) if row and row[0] is not None else None

    # -- retention -------------------------------------------------------------------------
    async def apply_retention(self, clear_text_before_us: int, purge_before_us: int) -> int:
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM messages WHERE time_us < ?", purge_before_us)
            await tx.execute("DELETE FROM events WHERE received_us < ?", purge_before_us)
            await tx.execute(
                "DELETE FROM outbox WHERE status = 'delivered' AND updated_us < ?", purge_before_us
            )
            rows = await tx.fetchall(
                "SELECT seq, doc FROM messages WHERE time_us < ? AND text_cleared = 0 LIMIT 1000",
                clear_text_before_us,
            )
            for row in rows:
                rec = _record(row)
                rec.text = ""
                await self._update_message(tx, rec, text_cleared=1)
            return len(rows)

    # -- helpers ---------------------------------------------------------------------------
    async def _lock_message(self, tx: Tx, message_id: str) -> None:  # noqa: B027 - optional hook
        """Serialize work on one message id (a no-op where the backend has one writer)."""

    async def _insert_message(self, tx: Tx, rec: MessageRecord) -> None:
        await tx.execute(
            "INSERT INTO messages (id, user_id, direction, from_number, to_number, state,"
            " delivery_state, time_us, created_us, text_cleared, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING",
            rec.id, rec.user_id, rec.direction, rec.from_, rec.to, rec.state,
            rec.delivery_state, rec.time_us, now_us(), _doc(rec),
        )

    async def _update_message(self, tx: Tx, rec: MessageRecord, text_cleared: int | None = None) -> None:
        extra = ", text_cleared = 1" if text_cleared else ""
        await tx.execute(
            f"UPDATE messages SET state = ?, delivery_state = ?, doc = ?{extra} WHERE id = ?",
            rec.state, rec.delivery_state, _doc(rec), rec.id,
        )

    async def _apply(self, tx: Tx, rec: MessageRecord, payload: dict[str, Any]) -> int:
        if self.apply_status is None:
            raise RuntimeError("store.apply_status is not set")
        new, specs = self.apply_status(rec, payload)
        if new != rec:
            await self._update_message(tx, new)
        return await self._enqueue(tx, specs)

    async def _apply_pending(self, tx: Tx, rec: MessageRecord) -> int:
        rows = await tx.fetchall(
            "SELECT dedupe_key, payload FROM events WHERE message_id = ? AND status = 'pending' "
            "ORDER BY received_us",
            rec.id,
        )
        count = 0
        for key, payload in rows:
            row = await tx.fetchone("SELECT seq, doc FROM messages WHERE id = ?", rec.id)
            assert row is not None
            count += await self._apply(tx, _record(row), json.loads(payload))
            await tx.execute("UPDATE events SET status = 'applied' WHERE dedupe_key = ?", key)
        return count

    async def _enqueue(self, tx: Tx, specs: Sequence[DeliverySpec]) -> int:
        now = now_us()
        for spec in specs:
            await tx.execute(
                "INSERT INTO outbox (event_id, order_key, user_id, status, spec, attempts,"
                " next_attempt_us, created_us, updated_us)"
                " VALUES (?, ?, ?, 'pending', ?, 0, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                spec.event_id, spec.order_key, spec.user_id, spec.model_dump_json(), now, now, now,
            )
        return len(specs)


def _doc(rec: MessageRecord) -> str:
    return rec.model_dump_json(exclude={"seq"})


def _record(row: Sequence[Any]) -> MessageRecord:
    rec = MessageRecord.model_validate_json(row[1])
    rec.seq = int(row[0])
    return rec


def open_store(url: str) -> Store:
    """Pick the backend from ``store.url``."""
    if url.startswith("sqlite:"):
        from .store_sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        from .store_postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"store.url: unsupported scheme in {url.split(':', 1)[0]!r}")
