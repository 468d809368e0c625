"""Sans-io SQL: what a transaction yields, and the one place a transaction is stepped.

A transaction is a generator that yields ``Op``s and receives their results (``None`` for
``Exec`` and ``Lock``, a row tuple or ``None`` for ``One``, a list of row tuples for ``All``).
Backends run each ``Op`` their own way (sqlite3 in a thread, asyncpg awaited) around ``step``.

A write transaction is handed to a backend as a ``TxFn``, a function making the generator, so
that a backend may run it again: both group several transactions into one database transaction
(one commit) and, when that batch fails, roll it back and run each transaction again on its own.
A transaction's code must therefore only depend on what it reads (its clock and rules aside).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

T = TypeVar("T")


class Op(NamedTuple):
    """One SQL statement (``?`` placeholders) and what the transaction wants back. (A named tuple,
    not a frozen dataclass: made for every statement, it costs half as much.)"""

    kind: Literal["exec", "one", "all", "lock"]
    sql: str
    args: tuple[Any, ...]
    # ``One`` only: the value the first column of its row will hold, if a row comes back. A
    # backend running many transactions together may then run the same statement of several in
    # one round trip and hand each its row (PostgreSQL's lockstep batches).
    key: Any = None


def Exec(sql: str, *args: Any) -> Op:
    return Op("exec", sql, args)


def One(sql: str, *args: Any, key: Any = None) -> Op:
    return Op("one", sql, args, key)


def All(sql: str, *args: Any) -> Op:
    return Op("all", sql, args)


def Lock(*message_ids: str) -> Op:
    """Serialize work on these message ids until the transaction ends (args: the ids, sorted,
    once each). Where the backend has one writer it does nothing; PostgreSQL takes advisory
    locks, those of a whole batch at once in one order when this is a transaction's first Op."""
    return Op("lock", "", tuple(sorted(set(message_ids))))


# A transaction: yields Ops, receives None / a row tuple or None / a list of row tuples.
Tx = Generator[Op, Any, T]
# What makes a transaction (again): a write handed to a backend.
TxFn = Callable[[], Tx[T]]


@dataclass(frozen=True)
class Done(Generic[T]):
    """A transaction's return value."""

    value: T


def step(tx: Tx[T], result: Any = None) -> Op | Done[T]:
    """Hand ``result`` (of the previous Op; ``None`` to start) to ``tx``: its next Op, or Done.

    Every backend drives transactions with this loop, differing only in how it runs an Op::

        out = step(tx)
        while isinstance(out, Op):
            out = step(tx, run(out))
        return out.value
    """
    try:
        return tx.send(result)
    except StopIteration as stop:
        return Done(stop.value)


def returning(sql: str, args: tuple[Any, ...], column: str, key: Any, more: str = "",
              more_args: tuple[Any, ...] = (), *, split: bool = False) -> Tx[Any]:
    """``sql``, a statement changing one row at most, ``RETURNING column, more``: that row, or None
    when it changed none. ``key`` is the value ``column`` will hold (a ``One``'s key); ``more``
    reads only its parameters ``more_args`` and tables, never the changed row's columns, so that
    ``split`` may run it as two statements: ``sql``, then ``SELECT ?, more WHERE changes() > 0``.
    SQLite splits: it runs a RETURNING clause as a trigger, which costs more than a statement (an
    UPDATE with one can no longer change its row in one pass)."""
    extra = f", {more}" if more else ""
    if split:
        yield Exec(sql, *args)
        return (yield One(f"SELECT ?{extra} WHERE changes() > 0", key, *more_args))
    return (yield One(f"{sql} RETURNING {column}{extra}", *args, *more_args, key=key))


# Single-statement transactions.
def exec_tx(sql: str, *args: Any) -> Tx[None]:
    yield Exec(sql, *args)


def one_tx(sql: str, *args: Any) -> Tx[Any]:
    return (yield One(sql, *args))


def all_tx(sql: str, *args: Any) -> Tx[list[Any]]:
    rows: list[Any] = yield All(sql, *args)
    return rows
