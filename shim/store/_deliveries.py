"""The delivery log (every callback attempt) and what operators do with deliveries: a message's
timeline, listing attempts by filter, bulk replay and discard.

Attempts are never written on their own: the delivery engine hands them over with the outcome
they led to (``mark_delivered_many``, batched; ``mark_failed``), and ``log_attempts`` inserts them
in that same transaction, many rows per statement. The hot path gains no round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shim.core import DeliverySpec, MessageRecord

from ._core import StoreCore
from ._messages import record
from ._ops import All, Exec, One, Tx
from ._types import Attempt, DeliveryFilter

# Rows per delivery-log insert (13 parameters each: under SQLite's and PostgreSQL's limits).
LOG_CHUNK = 50
OUTCOMES = ("dead", "delivered", "pending")
_ATTEMPT_COLUMNS = ("at_us, outbox_id, event_id, order_key, user_id, target, host, status, latency_us, outcome,"
                    " error, response")


def log_attempts(attempts: Sequence[Attempt]) -> Tx[None]:
    """Insert attempts into the delivery log (inside the caller's transaction)."""
    for start in range(0, len(attempts), LOG_CHUNK):
        chunk = attempts[start:start + LOG_CHUNK]
        args: list[Any] = []
        for a in chunk:
            args += (a.at_us, a.outbox_id, a.event_id, a.order_key, a.user_id, a.target, a.host, a.status,
                     a.latency_us, a.outcome, a.error[:1000] or None, a.response or None)
        yield Exec(f"INSERT INTO delivery_log ({_ATTEMPT_COLUMNS}) VALUES "
                   + ", ".join("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" for _ in chunk), *args)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def where(f: DeliveryFilter, p: str = "", time_col: str = "updated_us") -> tuple[list[str], list[Any]]:
    """SQL conditions on the outbox (columns prefixed ``p``) for a filter, and their arguments.
    A host without a port matches every port of that host."""
    conds: list[str] = []
    args: list[Any] = []
    if f.user_id is not None:
        conds.append(f"{p}user_id = ?")
        args.append(f.user_id)
    if f.host is not None:
        if ":" in f.host:
            conds.append(f"{p}host = ?")
            args.append(f.host)
        else:
            conds.append(f"{p}host LIKE ? ESCAPE '\\'")
            args.append(_like(f.host) + ":%")
    if f.since_us is not None:
        conds.append(f"{p}{time_col} >= ?")
        args.append(f.since_us)
    if f.until_us is not None:
        conds.append(f"{p}{time_col} < ?")
        args.append(f.until_us)
    if f.outcome is not None:
        conds.append(f"{p}status = ?")
        args.append(f.outcome)
    if f.ids is not None:
        ids = list(f.ids) or [-1]
        conds.append(f"{p}id IN ({', '.join('?' for _ in ids)})")
        args += ids
    if f.message_id is not None:
        conds.append(f"{p}order_key IN (?, ?)")
        args += (f.message_id, f"native_{f.message_id}")
    if f.event_id is not None:
        conds.append(f"{p}event_id = ?")
        args.append(f.event_id)
    if f.max_id is not None:
        conds.append(f"{p}id <= ?")
        args.append(f.max_id)
    return conds, args


@dataclass
class OutboxRow:
    id: int
    event_id: str
    url: str
    fallback_url: str | None
    status: str
    attempts: int
    last_error: str | None
    created_us: int
    updated_us: int


@dataclass
class Timeline:
    message: MessageRecord | None
    # (dedupe_key, payload JSON, status, received_us)
    events: list[tuple[str, str, str, int]] = field(default_factory=list)
    callbacks: list[OutboxRow] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)


def _attempt(r: Sequence[Any]) -> Attempt:
    return Attempt(at_us=int(r[0]), outbox_id=int(r[1]), event_id=r[2], order_key=r[3], user_id=r[4], target=r[5],
                   host=r[6], status=r[7], latency_us=int(r[8]), outcome=r[9], error=r[10] or "",
                   response=r[11] or "")


class DeliveryLogTxs(StoreCore):
    async def message_timeline(self, message_id: str) -> Timeline:
        """A message's stored record, its v2 events, its callbacks and every attempt of them."""
        return await self._timed_read(self._tx_timeline, message_id)

    def _tx_timeline(self, message_id: str) -> Tx[Timeline]:
        row = yield One("SELECT seq, doc FROM messages WHERE id = ?", message_id)
        events = yield All("SELECT dedupe_key, payload, status, received_us FROM events WHERE message_id = ?"
                           " ORDER BY received_us, dedupe_key", message_id)
        keys = (message_id, f"native_{message_id}")
        outbox = yield All("SELECT id, event_id, spec, status, attempts, last_error, created_us, updated_us"
                           " FROM outbox WHERE order_key IN (?, ?) ORDER BY id", *keys)
        attempts = yield All(f"SELECT {_ATTEMPT_COLUMNS} FROM delivery_log WHERE order_key IN (?, ?) ORDER BY id",
                             *keys)
        callbacks = []
        for r in outbox:
            spec = DeliverySpec.model_validate_json(r[2])
            callbacks.append(OutboxRow(int(r[0]), r[1], spec.url, spec.fallback_url, r[3], int(r[4]), r[5],
                                       int(r[6]), int(r[7])))
        return Timeline(
            message=record(row) if row else None,
            events=[(e[0], e[1], e[2], int(e[3])) for e in events],
            callbacks=callbacks, attempts=[_attempt(a) for a in attempts],
        )

    async def list_attempts(self, f: DeliveryFilter, http_status: int | None = None, limit: int = 100) -> list[
            tuple[Attempt, str | None]]:
        """Attempts matching ``f`` (times: the attempt's; ``outcome``: its callback's status now),
        newest first, each with its callback's status now (None once purged or discarded)."""
        return await self._timed_read(self._tx_list_attempts, f, http_status, limit)

    def _tx_list_attempts(self, f: DeliveryFilter, http_status: int | None, limit: int) -> Tx[
            list[tuple[Attempt, str | None]]]:
        log_filter = DeliveryFilter(user_id=f.user_id, host=f.host, since_us=f.since_us, until_us=f.until_us,
                                    message_id=f.message_id, event_id=f.event_id)
        conds, args = where(log_filter, "l.", time_col="at_us")
        if f.ids is not None:
            ids = list(f.ids) or [-1]
            conds.append(f"l.outbox_id IN ({', '.join('?' for _ in ids)})")
            args += ids
        if f.outcome is not None:
            conds.append("o.status = ?")
            args.append(f.outcome)
        if http_status is not None:
            conds.append("l.status = ?")
            args.append(http_status)
        cols = ", ".join(f"l.{c.strip()}" for c in _ATTEMPT_COLUMNS.split(","))
        rows = yield All(
            f"SELECT {cols}, o.status FROM delivery_log l LEFT JOIN outbox o ON o.id = l.outbox_id"
            f"{' WHERE ' + ' AND '.join(conds) if conds else ''} ORDER BY l.id DESC LIMIT ?", *args, limit)
        return [(_attempt(r), r[12]) for r in rows]

    async def replay_matching(self, f: DeliveryFilter, dry_run: bool = False) -> int:
        """Queue the callbacks matching ``f`` again (any status: a delivered one is sent again
        with its webhook-id), each for a fresh schedule; with ``dry_run`` only count them.
        Work in flight (leased) is left alone, in the count too."""
        if dry_run:
            return await self._timed_read(self._tx_replay_matching, f, True)
        return await self._timed_write(self._tx_replay_matching, f, False)

    def _tx_replay_matching(self, f: DeliveryFilter, dry_run: bool) -> Tx[int]:
        conds, args = where(f)
        cond = " AND ".join([*conds, "lease_owner IS NULL"])
        if dry_run:
            row = yield One(f"SELECT COUNT(*) FROM outbox WHERE {cond}", *args)
            return int(row[0])
        now = self.clock()
        rows = yield All(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_us = ?, updated_us = ?"
            f" WHERE {cond} RETURNING id", now, now, *args)
        return len(rows)

    async def discard_matching(self, f: DeliveryFilter, dry_run: bool = False) -> int:
        """Delete the dead letters matching ``f`` (never anything else); ``dry_run``: count them."""
        if dry_run:
            return await self._timed_read(self._tx_discard_matching, f, True)
        return await self._timed_write(self._tx_discard_matching, f, False)

    def _tx_discard_matching(self, f: DeliveryFilter, dry_run: bool) -> Tx[int]:
        conds, args = where(f)
        cond = " AND ".join([*conds, "status = 'dead'"])
        if dry_run:
            row = yield One(f"SELECT COUNT(*) FROM outbox WHERE {cond}", *args)
            return int(row[0])
        rows = yield All(f"DELETE FROM outbox WHERE {cond} RETURNING id", *args)
        return len(rows)
