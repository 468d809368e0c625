"""Messages: the stored v1 records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from shim.clock import Clock
from shim.core import ListQuery, MessageRecord, stored_fields
from shim.core._message import built_model

from ._core import StoreCore
from ._ops import Exec, Tx, all_tx, one_tx
from ._ops import returning as _returning


def doc(rec: MessageRecord) -> str:
    """The stored document: ``rec.model_dump_json(exclude={"seq"})``, byte for byte. orjson
    encodes the record's plain values (str, int, bool, None, a list of str) the same way, several
    times faster; pydantic for anything orjson refuses (the same error, then)."""
    values = dict(rec.__dict__)
    del values["seq"]
    try:
        return orjson.dumps(values).decode()
    except (TypeError, orjson.JSONEncodeError):
        return rec.model_dump_json(exclude={"seq"})


# The fields of a stored document, in order (``doc`` writes every one but ``seq``).
_DOC_FIELDS = tuple(name for name in MessageRecord.model_fields if name != "seq")
_ALL_FIELDS = frozenset(MessageRecord.model_fields)


def record(row: Sequence[Any]) -> MessageRecord:
    """The stored record (``seq``, ``doc``). A document with exactly the fields ``doc`` writes
    today was written by shim from a validated record (no field ever changed type; fields were
    only added): it is rebuilt without validating it again, the same record validation would build
    (``tests/store/test_store_json.py``). Anything else (an older document, lacking later fields;
    JSON orjson refuses) is validated, as before."""
    values = stored_fields(row[1], _DOC_FIELDS)
    if values is not None:
        values["seq"] = int(row[0])
        return built_model(MessageRecord, values, set(_ALL_FIELDS))
    rec = MessageRecord.model_validate_json(row[1])
    rec.seq = int(row[0])
    return rec


def insert_row(rec: MessageRecord, clock: Clock, bound: bool = True, returning: str = "",
               split: bool = False) -> Tx[Any]:
    """``bound=False``: a send's intent, under its pending id until its v2 id is known.
    ``returning``: the ``PENDING`` test (``_events``), (id, its value) returned (None: not inserted);
    ``split``: see ``_ops.returning``."""
    sql = ("INSERT INTO messages (id, user_id, direction, from_number, to_number, state,"
           " delivery_state, time_us, created_us, text_cleared, doc, send_key, bound)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
    args = (rec.id, rec.user_id, rec.direction, rec.from_, rec.to, rec.state,
            rec.delivery_state, rec.time_us, clock(), doc(rec), rec.send_key, 1 if bound else 0)
    if not returning:
        yield Exec(sql, *args)
        return None
    return (yield from _returning(sql, args, "id", rec.id, returning, (rec.id, rec.send_key), split=split))


def bind_row(rec: MessageRecord, returning: str = "", split: bool = False) -> Tx[Any]:
    """An intent becomes the message ``rec.id`` (its v2 id). ``returning``, ``split``: as
    ``insert_row``'s (None: there was no unbound intent)."""
    assert rec.send_key is not None
    sql = ("UPDATE messages SET id = ?, bound = 1, state = ?, delivery_state = ?, time_us = ?, doc = ?"
           " WHERE send_key = ? AND bound = 0")
    args = (rec.id, rec.state, rec.delivery_state, rec.time_us, doc(rec), rec.send_key)
    if not returning:
        yield Exec(sql, *args)
        return None
    return (yield from _returning(sql, args, "id", rec.id, returning, (rec.id, rec.send_key), split=split))


def update_row(rec: MessageRecord, text_cleared: bool = False) -> Tx[None]:
    extra = ", text_cleared = 1" if text_cleared else ""
    yield Exec(
        f"UPDATE messages SET state = ?, delivery_state = ?, doc = ?{extra} WHERE id = ?",
        rec.state, rec.delivery_state, doc(rec), rec.id,
    )


class MessageTxs(StoreCore):
    """Reading and listing messages (recording one is in ``_events``: it applies the events that
    arrived before it; redacting one is in ``_retention``: its text is kept in events and outbox too)."""

    async def get_message(self, user_id: str, message_id: str) -> MessageRecord | None:
        row = await self._timed_read(one_tx, "SELECT seq, doc FROM messages WHERE id = ? AND user_id = ?", message_id, user_id)
        return record(row) if row else None

    async def list_messages(self, user_id: str, q: ListQuery) -> list[MessageRecord]:
        # Unbound intents (a send whose v2 id is not known yet) are not messages the app can see.
        where, args = ["user_id = ?", "bound = 1"], [user_id]
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
        rows = await self._timed_read(all_tx, sql, *args, *extra, q.size + 1, q.offset)
        return [record(r) for r in rows]

    async def find_messages(self, *, message_id: str | None = None, number: str | None = None,
                            user_id: str | None = None, since_us: int | None = None, until_us: int | None = None,
                            limit: int = 50) -> list[MessageRecord]:
        """An operator's search across every user: the newest ``limit`` messages (``time_us``,
        then ``seq``, descending) matching every filter given: ``message_id`` (the exact id; a
        send's unbound intent has its ``pending-…`` id), ``number`` (sender or recipient),
        ``user_id``, ``since_us``/``until_us`` (message time, both inclusive). Unbound intents are
        included (an operator must see orphaned sends). Found through an index: the id, one
        lookup per side of a number (``messages_from_time``, ``messages_to_time``, each reading
        at most ``limit`` rows, merged), else the user's rows newest recorded first (by ``seq``
        on ``messages_user_seq``), else the time index (newest first, or the window)."""
        if limit <= 0:
            return []
        conds: list[str] = []
        args: list[Any] = []
        for cond, value in (("id = ?", message_id), ("user_id = ?", user_id),
                            ("time_us >= ?", since_us), ("time_us <= ?", until_us)):
            if value is not None:
                conds.append(cond)
                args.append(value)
        newest = "ORDER BY time_us DESC, seq DESC LIMIT ?"
        if number is None:
            where = f" WHERE {' AND '.join(conds)}" if conds else ""
            order = newest
            if user_id is not None and message_id is None:
                # The user's rows newest recorded first, read in order from their index
                # (``messages_user_seq``): never a walk of the time index through every user's
                # history, nor a sort of all of this user's.
                order = "ORDER BY seq DESC LIMIT ?"
            rows = await self._timed_read(all_tx, f"SELECT seq, doc FROM messages{where} {order}", *args, limit)
            return [record(r) for r in rows]
        # One indexed lookup per side, each its newest ``limit``; UNION drops a message found by
        # both (sent to its own sender's number).
        rest = "".join(f" AND {c}" for c in conds)
        side = "SELECT seq, time_us, doc FROM messages WHERE {col} = ?" + rest + " " + newest
        sql = (f"SELECT seq, doc FROM (SELECT * FROM ({side.format(col='from_number')}) f"
               f" UNION SELECT * FROM ({side.format(col='to_number')}) t) u {newest}")
        rows = await self._timed_read(all_tx, sql, number, *args, limit, number, *args, limit, limit)
        return [record(r) for r in rows]
