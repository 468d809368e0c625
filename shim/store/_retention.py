"""Retention and redaction (SPEC §5): message text cleared everywhere it is kept, old records purged.

Text is kept in three places: the message's doc, the raw v2 event payloads stored for
de-duplication (``message.text``), and the outbox bodies of the callbacks (``text`` in a v1 body;
a native route in v2 format carries the raw events, each with ``message.text``). Clearing a
message's text clears all three in one transaction, for retention and for redaction alike. A
payload keeps its ``dedupe_key`` (the hash of the event as received), so a duplicate of it is still
recognised. A pending delivery whose text was cleared is still delivered, with empty text.

A retention pass purges first, then clears, each step in bounded batches (``retention_batch``
rows), each batch its own short transaction, looping until a batch comes back short: however big
the backlog, one pass finishes it without holding the write lock for long. Every batch finds its
rows through an index on exactly the rows still to do (text: partial indexes on
``text_cleared = 0``; purge: time indexes), so its cost does not grow with history.

* Purge (older than ``purge_before_us``): messages by ``time_us``, events by ``received_us``,
  outbox rows in any status by ``updated_us`` (their last change): delivered, dead letters, and
  pending rows too, which are past any retry schedule by then (retries span about a day; a
  replayed dead letter starts a new period); the delivery log's attempts by ``at_us``; the
  migration report's daily counts of days before the UTC day of ``purge_before_us`` (a small
  table: one statement, no batches).
* Text (older than ``clear_text_before_us``): messages by ``time_us``, with their events and
  outbox rows whatever their age; then events and outbox rows by their own age (events of
  messages sent natively on v2, which shim has no record of, and late arrivals).

Replicas sharing a PostgreSQL database never pick the same rows: batches are selected with
``FOR UPDATE SKIP LOCKED``. A message is only cleared under its advisory lock, taken without
waiting (``_try_lock_messages``; a message a request is working on is left for the next batch or
pass), so a concurrent event can never write back a doc it read before the text was cleared, and
retention never waits on a lock (no deadlock with requests or the delivery engine). A row of a
message's events or outbox that another transaction has locked at that moment is skipped too, and
cleared by its own age instead. SQLite has one writer process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from shim.core import DeliverySpec, MessageRecord

from ._core import StoreCore
from ._messages import doc, record
from ._ops import All, Exec, One, Tx
from ._types import RetentionReport
from ._usage import utc_day

# A batch: rows looked at, rows done (a batch that did nothing ends the step), what it did.
Batch = tuple[int, int, RetentionReport]


def _clear_event(event: Any) -> bool:
    """Clear ``message.text`` of one v2 event in place; whether there was text to clear."""
    message = event.get("message") if isinstance(event, dict) else None
    if isinstance(message, dict) and message.get("text"):
        message["text"] = ""
        return True
    return False


def cleared_payload(payload: str) -> str | None:
    """A stored v2 event (canonical JSON) without its text; None when it has none."""
    event = json.loads(payload)
    if not _clear_event(event):
        return None
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cleared_spec(raw: str) -> str | None:
    """An outbox row's spec whose body carries no text (v1: ``text``; v2: each event's
    ``message.text``); None when it has none. The delivery goes ahead with empty text."""
    spec = DeliverySpec.model_validate_json(raw)
    body = spec.body
    if isinstance(body, list):
        changed = [_clear_event(event) for event in body]
        if not any(changed):
            return None
    elif isinstance(body, dict) and body.get("text"):
        body["text"] = ""
    else:
        return None
    return spec.model_dump_json()


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _clear_rows(table: str, key: str, column: str, cleared: Callable[[str], str | None],
                rows: Sequence[Sequence[Any]]) -> Tx[int]:
    """Rows of (key, raw JSON): rewrite those with text (``cleared`` returns None when there is
    none), mark them all cleared."""
    plain: list[Any] = []
    for row_key, raw in rows:
        new = cleared(raw)
        if new is None:
            plain.append(row_key)
        else:
            yield Exec(f"UPDATE {table} SET {column} = ?, text_cleared = 1 WHERE {key} = ?", new, row_key)
    if plain:
        yield Exec(f"UPDATE {table} SET text_cleared = 1 WHERE {key} IN ({_marks(plain)})", *plain)
    return len(rows)


def clear_event_rows(rows: Sequence[Sequence[Any]]) -> Tx[int]:
    """Rows of (dedupe_key, payload)."""
    return _clear_rows("events", "dedupe_key", "payload", cleared_payload, rows)


def clear_outbox_rows(rows: Sequence[Sequence[Any]]) -> Tx[int]:
    """Rows of (id, spec)."""
    return _clear_rows("outbox", "id", "spec", cleared_spec, rows)


def clear_messages(recs: Sequence[MessageRecord], skip_locked: str, mark: bool) -> Tx[RetentionReport]:
    """Clear the text of messages (held under their message locks) everywhere it is kept: their
    docs, their events' payloads and their callbacks' bodies. ``mark``: record the message as
    done for retention (redaction leaves it to retention, which then also clears what arrives
    later)."""
    if not recs:
        return RetentionReport()
    for rec in recs:
        rec.text = ""
        yield Exec(f"UPDATE messages SET doc = ?{', text_cleared = 1' if mark else ''} WHERE seq = ?", doc(rec), rec.seq)
    ids = [rec.id for rec in recs]
    events = yield All(
        f"SELECT dedupe_key, payload FROM events WHERE message_id IN ({_marks(ids)}) AND text_cleared = 0"
        f"{skip_locked}", *ids)
    outbox = yield All(
        f"SELECT id, spec FROM outbox WHERE order_key IN ({_marks(ids)}) AND text_cleared = 0{skip_locked}", *ids)
    return RetentionReport(
        messages_cleared=len(recs) if mark else 0,
        events_cleared=(yield from clear_event_rows(events)),
        outbox_cleared=(yield from clear_outbox_rows(outbox)),
    )


class RetentionTxs(StoreCore):
    # Rows per retention transaction.
    retention_batch = 1000

    async def apply_retention(self, clear_text_before_us: int, purge_before_us: int) -> RetentionReport:
        """One complete pass (see the module): purge what is older than ``purge_before_us``, then
        clear the text of what is older than ``clear_text_before_us``, in batches until done."""
        report = RetentionReport()
        for step, before_us in (
            (self._tx_purge_messages, purge_before_us),
            (self._tx_purge_events, purge_before_us),
            (self._tx_purge_outbox, purge_before_us),
            (self._tx_purge_attempts, purge_before_us),
            (self._tx_purge_usage_days, purge_before_us),
            (self._tx_purge_rejected, clear_text_before_us),
            (self._tx_clear_messages, clear_text_before_us),
            (self._tx_clear_events, clear_text_before_us),
            (self._tx_clear_outbox, clear_text_before_us),
        ):
            report.add(await self._drain(step, before_us))
        return report

    async def _drain(self, step: Callable[[int, int], Tx[Batch]], before_us: int) -> RetentionReport:
        report = RetentionReport()
        while True:
            seen, done, did = await self._timed_write(step, before_us, self.retention_batch)
            report.add(did)
            # A short batch: nothing left (but rows other replicas hold, which they finish).
            if seen < self.retention_batch or done == 0:
                return report

    # -- purge ----------------------------------------------------------------------------------
    def _purge(self, table: str, key: str, time_col: str, before_us: int, limit: int) -> Tx[int]:
        rows = yield All(
            f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {time_col} < ?"
            f" ORDER BY {time_col} LIMIT ?{self.skip_locked}) RETURNING 1", before_us, limit)
        return len(rows)

    def _tx_purge_messages(self, before_us: int, limit: int) -> Tx[Batch]:
        n = yield from self._purge("messages", "seq", "time_us", before_us, limit)
        return n, n, RetentionReport(messages_purged=n)

    def _tx_purge_events(self, before_us: int, limit: int) -> Tx[Batch]:
        n = yield from self._purge("events", "dedupe_key", "received_us", before_us, limit)
        return n, n, RetentionReport(events_purged=n)

    def _tx_purge_outbox(self, before_us: int, limit: int) -> Tx[Batch]:
        n = yield from self._purge("outbox", "id", "updated_us", before_us, limit)
        return n, n, RetentionReport(outbox_purged=n)

    def _tx_purge_attempts(self, before_us: int, limit: int) -> Tx[Batch]:
        n = yield from self._purge("delivery_log", "id", "at_us", before_us, limit)
        return n, n, RetentionReport(attempts_purged=n)

    def _tx_purge_usage_days(self, before_us: int, limit: int) -> Tx[Batch]:
        # One row per user, feature and day: small enough for one statement (a pass's first
        # batch deletes them all; the next finds none and ends the step).
        rows = yield All("DELETE FROM migration_usage_daily WHERE day < ? RETURNING 1", utc_day(before_us))
        return len(rows), len(rows), RetentionReport(usage_days_purged=len(rows))

    def _tx_purge_rejected(self, before_us: int, limit: int) -> Tx[Batch]:
        # Kept raw for inspection, so they go when text goes.
        n = yield from self._purge("rejected_events", "id", "received_us", before_us, limit)
        return n, n, RetentionReport(rejected_purged=n)

    # -- text -------------------------------------------------------------------------------------
    def _tx_clear_messages(self, before_us: int, limit: int) -> Tx[Batch]:
        rows = yield All(
            "SELECT seq, doc FROM messages WHERE text_cleared = 0 AND time_us < ?"
            f" ORDER BY time_us LIMIT ?{self.skip_locked}", before_us, limit)
        recs = [record(r) for r in rows]
        taken = yield from self._try_lock_messages(sorted({rec.id for rec in recs}))
        report = yield from clear_messages([rec for rec in recs if rec.id in taken], self.skip_locked, mark=True)
        return len(rows), report.messages_cleared, report

    def _tx_clear_events(self, before_us: int, limit: int) -> Tx[Batch]:
        rows = yield All(
            "SELECT dedupe_key, payload FROM events WHERE text_cleared = 0 AND received_us < ?"
            f" ORDER BY received_us LIMIT ?{self.skip_locked}", before_us, limit)
        n = yield from clear_event_rows(rows)
        return n, n, RetentionReport(events_cleared=n)

    def _tx_clear_outbox(self, before_us: int, limit: int) -> Tx[Batch]:
        rows = yield All(
            "SELECT id, spec FROM outbox WHERE text_cleared = 0 AND created_us < ?"
            f" ORDER BY created_us LIMIT ?{self.skip_locked}", before_us, limit)
        n = yield from clear_outbox_rows(rows)
        return n, n, RetentionReport(outbox_cleared=n)

    # -- redaction --------------------------------------------------------------------------------
    async def redact_text(self, user_id: str, message_id: str) -> bool:
        """Clear a message's text everywhere it is kept (doc, stored events, outbox bodies), in
        one transaction. Its pending callbacks are still delivered, with empty text."""
        return await self._timed_write(self._tx_redact, user_id, message_id)

    def _tx_redact(self, user_id: str, message_id: str) -> Tx[bool]:
        yield from self._lock_message(message_id)
        row = yield One("SELECT seq, doc FROM messages WHERE id = ? AND user_id = ?", message_id, user_id)
        if not row:
            return False
        yield from clear_messages([record(row)], "", mark=False)
        return True
