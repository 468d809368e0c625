"""The store: messages, ingested v2 events and the callback outbox, behind one interface.

Every transaction is written once, here, as a sans-io generator that yields SQL operations and
receives their results. Backends only drive generators: SQLite runs a whole batch of them in its
writer thread in one hop and one commit (group commit); PostgreSQL drives them with asyncpg.
Both pass the same contract suite (``tests/test_store_contract.py``).
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from yarl import URL

from shim.clock import now_us
from shim.core import Delivery, DeliverySpec, ListQuery, MessageRecord

T = TypeVar("T")

# A status event applied to a stored message: returns the updated record and the v1 callbacks.
StatusApplier = Callable[[MessageRecord, dict[str, Any]], tuple[MessageRecord, list[DeliverySpec]]]
# An event whose message shim never recorded (sent natively on v2): the deliveries it causes.
NativeRouter = Callable[[dict[str, Any]], list[DeliverySpec]]


# The schema, written once; backends fill in their integer types.
SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS messages (
    seq {serial},
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    state TEXT NOT NULL,
    delivery_state TEXT,
    time_us {bigint} NOT NULL,
    created_us {bigint} NOT NULL,
    text_cleared INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_user_seq ON messages (user_id, seq);
CREATE INDEX IF NOT EXISTS messages_time ON messages (time_us);
CREATE TABLE IF NOT EXISTS events (
    dedupe_key TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    received_us {bigint} NOT NULL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (message_id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS events_received ON events (received_us);
CREATE TABLE IF NOT EXISTS outbox (
    id {serial},
    event_id TEXT NOT NULL UNIQUE,
    order_key TEXT NOT NULL,
    user_id TEXT,
    host TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_us {bigint} NOT NULL,
    lease_owner TEXT,
    lease_until_us {bigint},
    last_error TEXT,
    created_us {bigint} NOT NULL,
    updated_us {bigint} NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_us, id) WHERE status = 'pending' AND lease_owner IS NULL;
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (order_key, id);
"""


@dataclass(frozen=True)
class Op:
    """One SQL statement (``?`` placeholders) and what the transaction wants back."""

    kind: Literal["exec", "one", "all"]
    sql: str
    args: tuple[Any, ...]


def Exec(sql: str, *args: Any) -> Op:
    return Op("exec", sql, args)


def One(sql: str, *args: Any) -> Op:
    return Op("one", sql, args)


def All(sql: str, *args: Any) -> Op:
    return Op("all", sql, args)


# A transaction: yields Ops, receives None / a row tuple or None / a list of row tuples.
Tx = Generator[Op, Any, T]


@dataclass
class IncomingEvent:
    """One v2 callback event, prepared by the gateway for ingestion."""

    dedupe_key: str
    message_id: str
    payload: dict[str, Any]
    payload_json: str
    # For ``message-received``: the new inbound record and its callbacks (no stored state needed).
    inbound: MessageRecord | None = None
    inbound_deliveries: Sequence[DeliverySpec] = ()
    # The ingest request's id, carried to the v1 callbacks it causes (X-Request-Id).
    request_id: str | None = None


@dataclass
class DeadLetter:
    id: int
    event_id: str
    url: str
    attempts: int
    last_error: str | None
    updated_us: int


def host_key(url: str) -> str:
    """What per-host fairness counts by: ``host:port`` of a callback URL."""
    try:
        u = URL(url)
        return f"{u.host}:{u.port}"
    except (ValueError, TypeError):
        return "invalid"


class Store(abc.ABC):
    """Shared transactions. Subclasses drive them (``_write``/``_read``) and own the schema."""

    # Appended to row-locking selects where the backend supports it.
    skip_locked = ""

    def __init__(self) -> None:
        self.apply_status: StatusApplier | None = None
        # Called with ("write"|"read", seconds) after each transaction (metrics).
        self.observer: Callable[[str, float], None] | None = None

    async def _timed(self, op: Literal["write", "read"], tx: Tx[T]) -> T:
        started = time.perf_counter()
        try:
            return await (self._write(tx) if op == "write" else self._read(tx))
        finally:
            if self.observer is not None:
                self.observer(op, time.perf_counter() - started)

    async def _timed_write(self, tx: Tx[T]) -> T:
        return await self._timed("write", tx)

    async def _timed_read(self, tx: Tx[T]) -> T:
        return await self._timed("read", tx)

    # -- backend ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _write(self, tx: Tx[T]) -> T:
        """Run a transaction that writes; committed before this returns."""

    @abc.abstractmethod
    async def _read(self, tx: Tx[T]) -> T:
        """Run a read-only transaction."""

    async def ping(self) -> None:
        await self._timed_read(_one("SELECT 1"))

    async def analyze(self) -> None:  # noqa: B027 - optional hook
        """Refresh planner statistics (the outbox changes fast; a stale plan sorts the whole
        backlog on every claim). A no-op where the planner does not need it."""

    async def run_sql(self, sql: str, *args: Any) -> None:
        """Maintenance hook (and tests): one statement in its own transaction."""
        await self._timed_write(_exec(sql, *args))

    # -- messages --------------------------------------------------------------------------
    async def insert_message(self, rec: MessageRecord, request_id: str | None = None) -> int:
        """Store a sent message and apply any callback that arrived before it. Returns the
        number of deliveries enqueued."""
        return await self._timed_write(self._tx_insert_message(rec, request_id))

    def _tx_insert_message(self, rec: MessageRecord, request_id: str | None) -> Tx[int]:
        yield from self._lock_message(rec.id)
        yield from self._insert(rec)
        return (yield from self._apply_pending(rec.id, request_id))

    async def get_message(self, user_id: str, message_id: str) -> MessageRecord | None:
        row = await self._timed_read(_one("SELECT seq, doc FROM messages WHERE id = ? AND user_id = ?", message_id, user_id))
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
        extra: list[Any] = []
        if q.from_us is not None:
            where.append("time_us >= ?")
            extra.append(q.from_us)
        if q.to_us is not None:
            where.append("time_us <= ?")
            extra.append(q.to_us)
        if q.after_seq is not None:
            where.append("seq < ?" if q.descending else "seq > ?")
            extra.append(q.after_seq)
        order = "DESC" if q.descending else "ASC"
        sql = f"SELECT seq, doc FROM messages WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ? OFFSET ?"
        rows = await self._timed_read(_all(sql, *args, *extra, q.size + 1, q.offset))
        return [_record(r) for r in rows]

    async def redact_text(self, user_id: str, message_id: str) -> bool:
        return await self._timed_write(self._tx_redact(user_id, message_id))

    def _tx_redact(self, user_id: str, message_id: str) -> Tx[bool]:
        row = yield One("SELECT seq, doc FROM messages WHERE id = ? AND user_id = ?", message_id, user_id)
        if not row:
            return False
        rec = _record(row)
        rec.text = ""
        yield from self._update(rec)
        return True

    # -- events ----------------------------------------------------------------------------
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
                ev.dedupe_key, ev.message_id, ev.payload_json, now_us(),
            )
            if not fresh:
                continue
            if ev.inbound is not None:
                yield from self._insert(ev.inbound)
                count += yield from self._enqueue(ev.inbound_deliveries, ev.request_id)
                continue
            row = yield One("SELECT seq, doc FROM messages WHERE id = ?", ev.message_id)
            if row:
                count += yield from self._apply(_record(row), ev.payload, ev.request_id)
            else:
                yield Exec("UPDATE events SET status = 'pending' WHERE dedupe_key = ?", ev.dedupe_key)
        return count

    async def route_unmatched(self, older_than_us: int, router: NativeRouter, limit: int = 500) -> int:
        """Events that waited longer than the grace period for a send record belong to messages
        sent natively on v2: hand them to the native-events router."""
        return await self._timed_write(self._tx_route_unmatched(older_than_us, router, limit))

    def _tx_route_unmatched(self, older_than_us: int, router: NativeRouter, limit: int) -> Tx[int]:
        rows = yield All(
            "SELECT dedupe_key, payload FROM events WHERE status = 'pending' AND received_us < ? "
            f"ORDER BY received_us LIMIT ?{self.skip_locked}",
            older_than_us, limit,
        )
        count = 0
        for key, payload in rows:
            count += yield from self._enqueue(router(json.loads(payload)))
            yield Exec("UPDATE events SET status = 'native' WHERE dedupe_key = ?", key)
        return count

    async def pending_event_count(self) -> int:
        row = await self._timed_read(_one("SELECT COUNT(*) FROM events WHERE status = 'pending'"))
        return int(row[0]) if row else 0

    async def enqueue(self, specs: Sequence[DeliverySpec]) -> int:
        return await self._timed_write(self._enqueue(specs))

    # -- outbox ----------------------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_us: int, per_host: int = 1_000_000,
                    skip_hosts: Sequence[str] = ()) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (at most ``per_host`` per host, none for
        ``skip_hosts``) whose earlier siblings of the same message are all done."""
        rows = await self._timed_write(self._tx_claim(owner, limit, lease_us, per_host, skip_hosts))
        out = [Delivery(id=r[0], spec=DeliverySpec.model_validate_json(r[1]), attempts=r[2]) for r in rows]
        out.sort(key=lambda d: d.id)
        return out

    def _tx_claim(self, owner: str, limit: int, lease_us: int, per_host: int,
                  skip_hosts: Sequence[str]) -> Tx[list[Any]]:
        now = now_us()
        skip = f" AND o.host NOT IN ({', '.join('?' for _ in skip_hosts)})" if skip_hosts else ""
        # Lock a few more candidates than needed (other replicas skip them), keep per_host each.
        candidates = yield All(
            "SELECT o.id, o.host FROM outbox o WHERE o.status = 'pending' AND o.next_attempt_us <= ?"
            " AND o.lease_owner IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.order_key = o.order_key"
            f"  AND p.status = 'pending' AND p.id < o.id){skip}"
            f" ORDER BY o.next_attempt_us, o.id LIMIT ?{self.skip_locked}",
            now, *skip_hosts, min(limit * 2, limit + 500),
        )
        taken: dict[str, int] = {}
        chosen: list[int] = []
        for row_id, host in candidates:
            if taken.get(host, 0) < per_host and len(chosen) < limit:
                taken[host] = taken.get(host, 0) + 1
                chosen.append(row_id)
        if not chosen:
            return []
        marks = ", ".join("?" for _ in chosen)
        rows: list[Any] = yield All(
            f"UPDATE outbox SET lease_owner = ?, lease_until_us = ? WHERE id IN ({marks})"
            " RETURNING id, spec, attempts",
            owner, now + lease_us, *chosen,
        )
        return rows

    async def expire_leases(self) -> int:
        """Free the work of replicas that died holding it (their leases ran out); claims only
        look at unleased rows, which keeps them cheap however much is in flight."""
        rows = await self._timed_write(_all(
            "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL"
            " WHERE status = 'pending' AND lease_owner IS NOT NULL AND lease_until_us < ? RETURNING id",
            now_us(),
        ))
        return len(rows)

    async def release(self, delivery_id: int, owner: str) -> None:
        await self._timed_write(_exec(
            "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL WHERE id = ? AND lease_owner = ?",
            delivery_id, owner,
        ))

    async def release_all(self, owner: str | None = None) -> None:
        if owner is None:
            await self._timed_write(_exec(
                "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL WHERE status = 'pending'"))
        else:
            await self._timed_write(_exec(
                "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL"
                " WHERE lease_owner = ? AND status = 'pending'", owner,
            ))

    async def mark_delivered(self, delivery_id: int, owner: str) -> bool:
        return await self.mark_delivered_many([delivery_id], owner) == 1

    async def mark_delivered_many(self, delivery_ids: Sequence[int], owner: str) -> int:
        """Record several successes in one transaction (the delivery engine batches them)."""
        if not delivery_ids:
            return 0
        marks = ", ".join("?" for _ in delivery_ids)
        rows = await self._timed_write(_all(
            "UPDATE outbox SET status = 'delivered', lease_owner = NULL, lease_until_us = NULL,"
            f" attempts = attempts + 1, updated_us = ? WHERE id IN ({marks}) AND lease_owner = ? RETURNING id",
            now_us(), *delivery_ids, owner,
        ))
        return len(rows)

    async def mark_failed(self, delivery_id: int, owner: str, error: str, next_attempt_us: int | None) -> bool:
        """Schedule a retry, or dead-letter when ``next_attempt_us`` is None."""
        status = "pending" if next_attempt_us is not None else "dead"
        row = await self._timed_write(_one(
            "UPDATE outbox SET status = ?, lease_owner = NULL, lease_until_us = NULL,"
            " attempts = attempts + 1, next_attempt_us = ?, last_error = ?, updated_us = ?"
            " WHERE id = ? AND lease_owner = ? RETURNING id",
            status, next_attempt_us or 0, error[:1000], now_us(), delivery_id, owner,
        ))
        return row is not None

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._timed_read(_all(
            "SELECT id, event_id, spec, attempts, last_error, updated_us FROM outbox"
            " WHERE status = 'dead' ORDER BY id LIMIT ?", limit,
        ))
        return [
            DeadLetter(id=r[0], event_id=r[1], url=DeliverySpec.model_validate_json(r[2]).url,
                       attempts=r[3], last_error=r[4], updated_us=r[5])
            for r in rows
        ]

    async def replay(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters (all, or the given ids) back in the queue for a fresh schedule."""
        return await self._timed_write(self._tx_replay(ids))

    def _tx_replay(self, ids: Sequence[int] | None) -> Tx[int]:
        now = now_us()
        if ids is None:
            rows = yield All(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_us = ?, updated_us = ?"
                " WHERE status = 'dead' RETURNING id", now, now,
            )
            return len(rows)
        count = 0
        for i in ids:
            row = yield One(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_us = ?, updated_us = ?"
                " WHERE status = 'dead' AND id = ? RETURNING id", now, now, i,
            )
            count += row is not None
        return count

    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._timed_read(_all("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    # -- retention -------------------------------------------------------------------------
    async def apply_retention(self, clear_text_before_us: int, purge_before_us: int) -> int:
        return await self._timed_write(self._tx_retention(clear_text_before_us, purge_before_us))

    def _tx_retention(self, clear_text_before_us: int, purge_before_us: int) -> Tx[int]:
        yield Exec("DELETE FROM messages WHERE time_us < ?", purge_before_us)
        yield Exec("DELETE FROM events WHERE received_us < ?", purge_before_us)
        yield Exec("DELETE FROM outbox WHERE status = 'delivered' AND updated_us < ?", purge_before_us)
        rows = yield All(
            "SELECT seq, doc FROM messages WHERE time_us < ? AND text_cleared = 0 LIMIT 1000", clear_text_before_us)
        for row in rows:
            rec = _record(row)
            rec.text = ""
            yield from self._update(rec, text_cleared=True)
        return len(rows)

    # -- pieces of transactions ------------------------------------------------------------
    def _lock_message(self, message_id: str) -> Tx[None]:
        """Serialize work on one message id (nothing to do where the backend has one writer)."""
        return
        yield  # pragma: no cover - makes this a generator

    def _insert(self, rec: MessageRecord) -> Tx[None]:
        yield Exec(
            "INSERT INTO messages (id, user_id, direction, from_number, to_number, state,"
            " delivery_state, time_us, created_us, text_cleared, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING",
            rec.id, rec.user_id, rec.direction, rec.from_, rec.to, rec.state,
            rec.delivery_state, rec.time_us, now_us(), _doc(rec),
        )

    def _update(self, rec: MessageRecord, text_cleared: bool = False) -> Tx[None]:
        extra = ", text_cleared = 1" if text_cleared else ""
        yield Exec(
            f"UPDATE messages SET state = ?, delivery_state = ?, doc = ?{extra} WHERE id = ?",
            rec.state, rec.delivery_state, _doc(rec), rec.id,
        )

    def _apply(self, rec: MessageRecord, payload: dict[str, Any], request_id: str | None) -> Tx[int]:
        if self.apply_status is None:
            raise RuntimeError("store.apply_status is not set")
        new, specs = self.apply_status(rec, payload)
        if new != rec:
            yield from self._update(new)
        return (yield from self._enqueue(specs, request_id))

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
            count += yield from self._apply(_record(row), json.loads(payload), request_id)
            yield Exec("UPDATE events SET status = 'applied' WHERE dedupe_key = ?", key)
        return count

    def _enqueue(self, specs: Sequence[DeliverySpec], request_id: str | None = None) -> Tx[int]:
        now = now_us()
        for spec in specs:
            if request_id and spec.request_id is None:
                spec = spec.model_copy(update={"request_id": request_id})
            yield Exec(
                "INSERT INTO outbox (event_id, order_key, user_id, host, status, spec, attempts,"
                " next_attempt_us, created_us, updated_us)"
                " VALUES (?, ?, ?, ?, 'pending', ?, 0, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                spec.event_id, spec.order_key, spec.user_id, host_key(spec.url), spec.model_dump_json(),
                now, now, now,
            )
        return len(specs)


def _exec(sql: str, *args: Any) -> Tx[None]:
    yield Exec(sql, *args)


def _one(sql: str, *args: Any) -> Tx[Any]:
    return (yield One(sql, *args))


def _all(sql: str, *args: Any) -> Tx[list[Any]]:
    rows: list[Any] = yield All(sql, *args)
    return rows


def _doc(rec: MessageRecord) -> str:
    return rec.model_dump_json(exclude={"seq"})


def _record(row: Sequence[Any]) -> MessageRecord:
    rec = MessageRecord.model_validate_json(row[1])
    rec.seq = int(row[0])
    return rec


def open_store(url: str, pool_size: int = 40) -> Store:
    """Pick the backend from ``store.url``."""
    if url.startswith("sqlite:"):
        from ._sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        from ._postgres import PostgresStore

        return PostgresStore(url, max_size=pool_size)
    raise ValueError(f"store.url: unsupported scheme in {url.split(':', 1)[0]!r}")
