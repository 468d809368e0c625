"""Reconciliation (SPEC §9): the lease (one replica at a time) and its cursor (a crashed run
resumes), the messages still not final, a repair applied under the message's lock, and the
unresolvable marks. What a repair *is* comes from the pure core (``shim.core.reconcile_message``),
handed in as a function of the freshly read record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

from shim.core import MessageRecord, Repair, is_final

from ._events import EventTxs
from ._messages import bind_row, record, update_row
from ._ops import All, Exec, One, Tx, all_tx, one_tx
from ._outbox import enqueue_rows

LEASE = "reconcile"

ApplyResult = Literal["final", "progress", "unchanged", "gone", "already", "conflict"]

# Outbound messages not final yet (the partial index ``messages_unfinal`` of migration 6).
_UNFINAL = "direction = 'out' AND state <> 'error' AND delivery_state IS NULL AND reconcile IS NULL"


class ReconcileTxs(EventTxs):
    # -- the lease and its cursor ------------------------------------------------------------
    async def reconcile_acquire(self, owner: str, lease_us: int) -> int | None:
        """Take the reconcile lease (free, expired, or already ``owner``'s): the cursor to resume
        from (0: from the start), or None when another replica holds it."""
        now = self.clock()
        row = await self._timed_write(one_tx, "UPDATE reconcile_lease SET owner = ?, lease_until_us = ?, updated_us = ?"
            " WHERE name = ? AND (owner IS NULL OR owner = ? OR lease_until_us < ?) RETURNING cursor_seq",
            owner, now + lease_us, now, LEASE, owner, now,
        )
        return None if row is None else int(row[0])

    async def reconcile_renew(self, owner: str, lease_us: int, cursor: int | None = None) -> bool:
        """Keep the lease for another ``lease_us`` and record how far the run got (``cursor``).
        False when the lease was lost (expired and taken): the run must stop."""
        now = self.clock()
        if cursor is None:
            row = await self._timed_write(one_tx,
                "UPDATE reconcile_lease SET lease_until_us = ?, updated_us = ? WHERE name = ? AND owner = ? RETURNING 1",
                now + lease_us, now, LEASE, owner)
        else:
            row = await self._timed_write(one_tx, "UPDATE reconcile_lease SET lease_until_us = ?, cursor_seq = ?, updated_us = ?"
                " WHERE name = ? AND owner = ? RETURNING 1", now + lease_us, cursor, now, LEASE, owner)
        return row is not None

    async def reconcile_release(self, owner: str, cursor: int | None = None) -> None:
        """Give the lease up; ``cursor`` 0 when the run finished (the next starts over)."""
        if cursor is None:
            await self._timed_write(one_tx,
                "UPDATE reconcile_lease SET owner = NULL, lease_until_us = NULL WHERE name = ? AND owner = ? RETURNING 1",
                LEASE, owner)
        else:
            await self._timed_write(one_tx, "UPDATE reconcile_lease SET owner = NULL, lease_until_us = NULL, cursor_seq = ?"
                " WHERE name = ? AND owner = ? RETURNING 1", cursor, LEASE, owner)

    async def reconcile_lease_state(self) -> tuple[str | None, int | None, int]:
        """(owner, lease_until_us, cursor_seq): for inspection and tests."""
        row = await self._timed_read(one_tx, "SELECT owner, lease_until_us, cursor_seq FROM reconcile_lease WHERE name = ?", LEASE)
        return (row[0], None if row[1] is None else int(row[1]), int(row[2]))

    # -- candidates, repairs, marks ------------------------------------------------------------
    async def reconcile_candidates(
        self, after_seq: int, older_than_us: int, limit: int, *, user_id: str | None = None,
        since_us: int | None = None,
    ) -> list[tuple[MessageRecord, bool]]:
        """Outbound messages (and unbound send intents) not final, recorded before
        ``older_than_us``, after the cursor ``after_seq``, in seq order: (record, bound)."""
        where: list[str] = [_UNFINAL, "seq > ?", "time_us < ?"]
        args: list[Any] = [after_seq, older_than_us]
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if since_us is not None:
            where.append("time_us >= ?")
            args.append(since_us)
        rows = await self._timed_read(all_tx,
            f"SELECT seq, doc, bound FROM messages WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", *args, limit)
        return [(record(r), bool(int(r[2]))) for r in rows]

    async def reconcile_apply(self, seq: int, lock_id: str, fix: Callable[[MessageRecord], Repair]) -> ApplyResult:
        """Repair one message under its lock (``lock_id``: its v2 id, which an unbound intent
        takes): ``fix`` is applied to the record as stored now, so an event that came meanwhile
        is never undone. Stores the synthesized events (status ``reconciled``) and enqueues the
        callbacks; an intent that becomes bound also meets the events that waited for it."""
        return await self._timed_write(self._tx_reconcile_apply, seq, lock_id, fix)

    def _tx_reconcile_apply(self, seq: int, lock_id: str, fix: Callable[[MessageRecord], Repair]) -> Tx[ApplyResult]:
        yield from self._lock_message(lock_id)
        row = yield One("SELECT seq, doc, bound, reconcile FROM messages WHERE seq = ?", seq)
        if row is None:
            return "gone"
        rec = record(row)
        if is_final(rec) or row[3] is not None:
            return "already"
        repair = fix(rec)
        if repair.outcome == "unchanged":
            return "unchanged"
        bound = bool(int(row[2]))
        if not bound:
            taken = yield One("SELECT 1 FROM messages WHERE id = ?", repair.record.id)
            if taken is not None:
                return "conflict"
            yield from bind_row(repair.record)
        else:
            yield from update_row(repair.record)
        now = self.clock()
        for event in repair.events:
            canon = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            key = "reconcile:" + hashlib.sha256(canon.encode()).hexdigest()
            yield Exec(
                "INSERT INTO events (dedupe_key, message_id, payload, status, received_us, send_key)"
                " VALUES (?, ?, ?, 'reconciled', ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
                key, repair.record.id, canon, now, rec.send_key,
            )
        yield from enqueue_rows(repair.deliveries, self.clock)
        if not bound:
            yield from self._apply_pending(repair.record.id, rec.send_key, None)
        return repair.outcome

    async def mark_unresolvable(self, seqs: Sequence[int]) -> int:
        """Messages v2's search can no longer find: out of reconciliation for good."""
        if not seqs:
            return 0
        marks = ", ".join("?" for _ in seqs)
        rows = await self._timed_write(all_tx,
            f"UPDATE messages SET reconcile = 'unresolvable' WHERE seq IN ({marks}) AND {_UNFINAL} RETURNING seq",
            *seqs)
        return len(rows)

    async def outbound_balance(self, user_id: str | None = None) -> dict[str, int]:
        """Every outbound message (bound or not) by where it stands: ``final``, ``unresolvable``,
        ``open`` (``sent`` is their sum). A scan of the messages: for operators and tests."""
        return await self._timed_read(self._tx_balance, user_id)

    def _tx_balance(self, user_id: str | None) -> Tx[dict[str, int]]:
        extra, args = ("", ()) if user_id is None else (" AND user_id = ?", (user_id,))
        rows: list[Any] = yield All(
            "SELECT CASE WHEN state = 'error' OR delivery_state IS NOT NULL THEN 'final'"
            " WHEN reconcile IS NOT NULL THEN 'unresolvable' ELSE 'open' END AS k, COUNT(*)"
            f" FROM messages WHERE direction = 'out'{extra} GROUP BY k", *args)
        out = {"final": 0, "unresolvable": 0, "open": 0}
        out.update({r[0]: int(r[1]) for r in rows})
        out["sent"] = out["final"] + out["unresolvable"] + out["open"]
        return out
