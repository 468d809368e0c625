"""PostgreSQL backend (asyncpg): several shim replicas share one database.

Work on one message id is serialized with a transaction-scoped advisory lock (so a callback and
the send record it belongs to can never miss each other), outbox rows are leased with
``FOR UPDATE SKIP LOCKED``, and migrations run under a transaction-scoped advisory lock so
replicas starting together do not race.

Group commit: the write transactions submitted in one turn of the event loop run on one
connection inside one database transaction (one commit, one WAL flush). The advisory locks
their first ``Lock`` ops ask for are taken for the whole batch at once, in one order (of the lock
keys), in the same round trip as ``BEGIN``; a lock asked for later is only tried (never waited
for). When anything in a batch fails (an error, a lock another holds, a deadlock with another
replica's batch, which PostgreSQL breaks), the batch is rolled back and each of its transactions
runs again on its own. The only session state shim uses is transaction-scoped advisory locks,
gone with the transaction, so connections go back to the pool without a reset.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import asyncpg

from shim.clock import Clock, now_us

from ._base import Store
from ._ops import All, Done, Exec, Op, Tx, TxFn, step
from ._types import EventRules

T = TypeVar("T")

SCHEMA_LOCK = 7_240_311_001
# Transactions per group commit at most.
MAX_BATCH = 64

_PLACEHOLDER = re.compile(r"\?")
# Advisory locks on message ids, in the order of their keys (one order for every batch of every
# replica: batches cannot deadlock on them). The volatile lock function runs after the sort.
_LOCK_KEYS = ("SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtext(m) AS k"
              " FROM unnest({ids}::text[]) AS m) AS s ORDER BY k")
_TRY_LOCK = "SELECT m FROM unnest($1::text[]) AS m WHERE pg_try_advisory_xact_lock(hashtext(m))"


@functools.lru_cache(maxsize=512)
def to_pg(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (shim's SQL has no literal question marks)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def literal(text: str) -> str:
    """``text`` as an SQL string literal (escape syntax: right whatever
    ``standard_conforming_strings`` is); for the one statement sent with ``BEGIN``."""
    if "\x00" in text:
        raise ValueError("a NUL character cannot be stored in PostgreSQL text")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def begin_sql(ids: Sequence[str]) -> str:
    """``BEGIN`` and the advisory locks on ``ids``, in one round trip (simple query protocol)."""
    if not ids:
        return "BEGIN"
    return "BEGIN; " + _LOCK_KEYS.format(ids="ARRAY[" + ", ".join(literal(i) for i in ids) + "]")


class Contended(Exception):
    """A lock a batched transaction asked for late is held by another transaction."""


async def take_locks(conn: asyncpg.Connection, op: Op, held: set[str], batched: bool) -> None:
    """A ``Lock`` op: the advisory locks not held yet (in a batch only tried: a batch never waits
    with its locks held, it runs apart instead)."""
    need = [i for i in op.args if i not in held]
    if need and batched:
        if len(await conn.fetch(_TRY_LOCK, need)) != len(need):
            raise Contended(need)
    elif need:
        await conn.execute(_LOCK_KEYS.format(ids="$1"), need)
    held.update(need)


async def drive(conn: asyncpg.Connection, tx: Tx[T], out: Op | Done[T] | None = None,
                held: set[str] | None = None, batched: bool = False) -> T:
    """Run a sans-io transaction generator on an asyncpg connection (``out``: its first Op,
    when stepped already; ``held``: the message locks this transaction holds)."""
    held = set() if held is None else held
    result = out if out is not None else step(tx)
    while isinstance(result, Op):
        if result.kind == "lock":
            await take_locks(conn, result, held, batched)
            result = step(tx, None)
        else:
            result = step(tx, await run(conn, result))
    return result.value


async def drive_lockstep(conn: asyncpg.Connection, txs: list[Tx[Any]], held: set[str]) -> list[Any]:
    """Transactions on disjoint messages (their locks held), stepped together: the statements
    that several ask for at once go in one round trip when their results need no telling apart
    (``Exec``: ``executemany``) or tell whose they are (``One`` with a ``key``: ``fetchmany``);
    the others one by one."""
    cur: list[Op | Done[Any]] = [step(tx, None) for tx in txs]  # each first asked for its locks
    while True:
        active = [j for j, out in enumerate(cur) if isinstance(out, Op)]
        if not active:
            return [out.value for out in cur if isinstance(out, Done)]
        groups: dict[str, list[int]] = {}
        keyed: dict[str, list[int]] = {}
        for j in active:
            op = cur[j]
            assert isinstance(op, Op)
            if op.kind == "exec":
                groups.setdefault(op.sql, []).append(j)
                continue
            if op.kind == "one" and op.key is not None:
                keyed.setdefault(op.sql, []).append(j)
                continue
            if op.kind == "lock":
                await take_locks(conn, op, held, batched=True)
                cur[j] = step(txs[j], None)
            else:
                cur[j] = step(txs[j], await run(conn, op))
        for sql, js in keyed.items():
            ops = [cur[j] for j in js]
            keys = [op.key for op in ops if isinstance(op, Op)]
            if len(js) == 1 or len(set(keys)) != len(keys):
                for j in js:
                    op = cur[j]
                    assert isinstance(op, Op)
                    cur[j] = step(txs[j], await run(conn, op))
                continue
            rows = {r[0]: tuple(r) for r in await conn.fetchmany(to_pg(sql), [op.args for op in ops if isinstance(op, Op)])}
            for j, k in zip(js, keys, strict=True):
                cur[j] = step(txs[j], rows.get(k))
        for sql, js in groups.items():
            if len(js) == 1:
                op = cur[js[0]]
                assert isinstance(op, Op)
                await run(conn, op)
            else:
                await conn.executemany(to_pg(sql), [cur[j].args for j in js])  # type: ignore[union-attr]
            for j in js:
                cur[j] = step(txs[j], None)


async def run(conn: asyncpg.Connection, op: Op) -> Any:
    sql = to_pg(op.sql)
    if op.kind == "exec":
        await conn.execute(sql, *op.args)
        return None
    if op.kind == "one":
        row = await conn.fetchrow(sql, *op.args)
        return tuple(row) if row is not None else None
    return [tuple(r) for r in await conn.fetch(sql, *op.args)]


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Connections come back with no state to reset (asyncpg still rolls back an open transaction)."""


Item = tuple[TxFn[Any], "asyncio.Future[Any]"]


class PostgresStore(Store):
    skip_locked = " FOR UPDATE SKIP LOCKED"
    column_types: ClassVar[Mapping[str, str]] = {"serial": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"}

    def __init__(self, url: str, rules: EventRules, min_size: int = 2, max_size: int = 20,
                 clock: Clock = now_us) -> None:
        super().__init__(rules, clock)
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._submitted: list[Item] = []
        self._batches: set[asyncio.Future[None]] = set()

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=self.min_size, max_size=self.max_size,
                                               reset=_no_reset)
        await self.migrate()

    async def close(self) -> None:
        while self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _write(self, make: TxFn[T], short: bool = False) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._submitted.append((make, fut))
        if len(self._submitted) == 1:  # the first of this turn: run them all in the next one
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        submitted, self._submitted = self._submitted, []
        for start in range(0, len(submitted), MAX_BATCH):
            task = asyncio.ensure_future(self._run_batch(submitted[start:start + MAX_BATCH]))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: list[Item]) -> None:
        if len(batch) == 1:
            await self._run_alone(*batch[0])
            return
        try:
            values = await self._run_together(batch)
        except Exception:  # any of it: each again on its own
            await asyncio.gather(*(self._run_alone(make, fut) for make, fut in batch))
            return
        for (_, fut), value in zip(batch, values, strict=True):
            if not fut.done():
                fut.set_result(value)

    async def _run_alone(self, make: TxFn[Any], fut: asyncio.Future[Any]) -> None:
        try:
            value = await self._run_together([(make, fut)], batched=False)
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
        else:
            if not fut.done():
                fut.set_result(value[0])

    async def _run_together(self, batch: list[Item], batched: bool = True) -> list[Any]:
        """Every transaction of ``batch`` in one database transaction (raises if any fails)."""
        if self._pool is None:
            raise RuntimeError("store is not open")
        txs = [make() for make, _ in batch]
        try:
            firsts = [step(tx) for tx in txs]
            wanted = sorted({i for out in firsts if isinstance(out, Op) and out.kind == "lock" for i in out.args})
            async with self._pool.acquire() as conn:
                await conn.execute(begin_sql(wanted))
                try:
                    held = set(wanted)
                    if batched:
                        values = await self._drive_batch(conn, txs, firsts, held)
                    else:
                        values = [await drive(conn, txs[0], firsts[0], held)]
                    await conn.execute("COMMIT")
                except BaseException:
                    if not conn.is_closed():
                        await conn.execute("ROLLBACK")
                    raise
            return values
        finally:
            for tx in txs:
                tx.close()

    @staticmethod
    async def _drive_batch(conn: asyncpg.Connection, txs: list[Tx[Any]], firsts: list[Op | Done[Any]],
                           held: set[str]) -> list[Any]:
        """A batch's transactions, in order, inside its database transaction: consecutive ones
        that started by locking messages no other of them locks run in lockstep (a wave)."""
        values: list[Any] = [None] * len(txs)
        wave: list[int] = []
        wave_keys: set[str] = set()

        async def flush() -> None:
            for j, value in zip(wave, await drive_lockstep(conn, [txs[j] for j in wave], held), strict=True):
                values[j] = value
            wave.clear()
            wave_keys.clear()

        for i, out in enumerate(firsts):
            if isinstance(out, Done):
                values[i] = out.value
            elif out.kind == "lock":
                if wave_keys.intersection(out.args):
                    await flush()
                wave.append(i)
                wave_keys.update(out.args)
            else:
                await flush()
                values[i] = await drive(conn, txs[i], out, held, batched=True)
        await flush()
        return values

    async def _read(self, make: TxFn[T]) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        async with self._pool.acquire() as conn:
            return await drive(conn, make())

    async def analyze(self) -> None:
        if self._pool is None:
            return
        async with self._pool.acquire() as conn:
            await conn.execute("ANALYZE outbox")

    async def take_back_orphaned_leases(self) -> None:
        """Nothing to do: other replicas may hold live leases; a dead one's leases expire."""

    def _try_lock_messages(self, message_ids: Sequence[str]) -> Tx[set[str]]:
        if not message_ids:
            return set()
        rows = yield All("SELECT m FROM unnest(?::text[]) AS m WHERE pg_try_advisory_xact_lock(hashtext(m))",
                         list(message_ids))
        return {r[0] for r in rows}

    def _lock_schema(self) -> Tx[None]:
        yield Exec("SELECT pg_advisory_xact_lock(?)", SCHEMA_LOCK)
