"""SQLite backend: the embedded default.

Writes run in batches, many transactions per commit (group commit). A batch runs first as it is,
in one transaction; only when one of its transactions fails is it rolled back and run again with
each transaction in its own SAVEPOINT, so the failing one rolls back alone. At most
``max_queued`` transactions wait; further writers wait for a slot (backpressure).

Where a batch runs (``store.sqlite_writer``):

* ``loop`` (the default): the short transactions of the hot paths (a send's intent and bind, an
  ingested callback's events, a delivery's claim and outcome: ``_write(short=True)``) gathered in
  one turn of the event loop run at the end of that turn (at most ``MAX_BATCH`` at a time), on the
  loop's own thread and write connection. On one core the hand-over to a thread and back (a wake
  of the writer thread, the GIL passed back and forth, a wake of the loop) buys no parallelism and
  delays every send twice by a scheduling round (docs/performance.md has what it measured to).
  The loop never waits for a lock, never syncs and never checkpoints (its connection has
  ``busy_timeout`` 0 and no autocheckpoint); its WAL appends can still wait behind a
  checkpoint's sync of the WAL, as the writer thread's do. A batch goes to the writer thread
  instead, which waits and runs it as below, when the write lock is held elsewhere, when one of
  its transactions fails, when its first write would start the WAL over (that write syncs the
  WAL's new header), or while the writer restarts the WAL.
  Everything else (retention, migrations, bulk operator actions, a claim that skips hosts: writes
  whose length the caller does not bound) and writes from another event loop go to the writer
  thread too.
* ``thread``: every write on the writer thread. SQLite releases the GIL while it works, so where
  shim has a second core, that work runs beside the loop.

One writer thread owns its write connection and runs whole batches there; the event loop is woken
once per batch. Reads run on a small pool of reader connections. WAL with ``synchronous=NORMAL`` keeps every committed
transaction across a process crash (``kill -9``); only an OS crash can lose the last commits.
Checkpoints run on their own thread and connection (PASSIVE), so the writer never waits for one;
each runs ``CHECKPOINT_AFTER_S`` after the first commit since the last, so it has little of the WAL
to sync (see ``_checkpoint_loop``).
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from shim.clock import Clock, now_us

from ._base import Store
from ._ops import Op, Tx, TxFn
from ._types import EventRules

T = TypeVar("T")
MAX_BATCH = 256
# Transactions queued for (or running on) the writer at most; further writers wait their turn, so
# an overload backs up into callers (who hold their requests) instead of growing memory.
MAX_QUEUED = 4096
# Prepared statements kept per connection (sqlite3's default is 128; shim's are a few dozen
# shapes, but ``IN (?, ?, …)`` lists of every length add up).
CACHED_STATEMENTS = 512
# A checkpoint runs this long after the first commit since the last one (none while idle). Short,
# because a checkpoint first fdatasyncs the WAL, and the writer's WAL appends stall behind that
# sync for as long as it takes: with a checkpoint a second under 500 sends/s (~40 MB of WAL), 20-50
# ms, every request of that moment delayed (performance issue 9, the bursts of the p99).
CHECKPOINT_AFTER_S = 0.05
# The WAL only starts over when a write begins with every frame of it checkpointed, which under
# steady load never happens by itself (each checkpoint trails the writer by CHECKPOINT_AFTER_S):
# the file would grow by tens of MB a second for as long as the load lasts. Past this many frames
# (about 64 MiB of 4 KiB pages), the writer checkpoints the little that is left between two of its
# batches (a short pause, once per this much WAL), so its next write starts the WAL over.
WAL_RESTART_FRAMES = 16_384

WRITERS = ("loop", "thread")

# (make the transaction, its caller's future, the caller's loop)
Item = tuple[TxFn[Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite:").removeprefix("//")
    if path.startswith("/./") or path == "/:memory:":
        path = path[1:]
    return path


def drive(conn: sqlite3.Connection, tx: Tx[T]) -> T:
    """Run a sans-io transaction generator to completion on a sqlite3 connection (``_ops.step``'s
    loop, written out: no ``Done`` made, one ``try`` per transaction)."""
    send = tx.send
    try:
        op = send(None)
        while True:
            op = send(run(conn, op))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# Each statement's text as run here: INSERT and UPDATE ``OR FAIL``. A failing statement fails its
# whole transaction, always rolled back (the batch, or the transaction's SAVEPOINT when run apart),
# so undoing just that statement's changes first (``ABORT``, the default) is work for nothing: for
# it SQLite journals, before a statement that may write several rows, every page it changes that
# the batch changed already (an outbox insert of an event's callbacks: a dozen indexes' pages), and
# past 64 KiB spills that journal to a file in /var/tmp, written a page at a time, once per batch.
_AS_RUN: dict[str, str] = {}


def as_run(sql: str) -> str:
    text = _AS_RUN.get(sql)
    if text is None:
        if sql.startswith("INSERT INTO "):
            text = "INSERT OR FAIL INTO " + sql[12:]
        elif sql.startswith("UPDATE ") and not sql.startswith("UPDATE OR "):
            text = "UPDATE OR FAIL " + sql[7:]
        else:
            text = sql
        if len(_AS_RUN) >= CACHED_STATEMENTS * 8:  # texts vary with ``IN (?, …)`` lengths only
            _AS_RUN.clear()
        _AS_RUN[sql] = text
    return text


def run(conn: sqlite3.Connection, op: Op) -> Any:
    if op.kind == "lock":  # one writer: nothing to serialize
        return None
    cur = conn.execute(as_run(op.sql), op.args)
    if op.kind == "exec":
        cur.fetchall()
        return None
    if op.kind == "one":
        row = cur.fetchone()
        cur.fetchall()
        return row
    return cur.fetchall()


class SqliteStore(Store):
    column_types: ClassVar[Mapping[str, str]] = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER"}
    split_returning = True

    def __init__(self, url: str, rules: EventRules, clock: Clock = now_us, max_queued: int = MAX_QUEUED,
                 writer: str = "loop") -> None:
        super().__init__(rules, clock)
        if writer not in WRITERS:
            raise ValueError(f"store.sqlite_writer: {writer!r} is not one of {', '.join(WRITERS)}")
        self.writer = writer
        self.max_queued = max_queued
        self._slots = asyncio.Semaphore(max_queued)
        self.path = sqlite_path(url)
        self.memory = self.path == ":memory:"
        # Transactions of one loop turn go to the writer together: one wake of its thread (a
        # system call) per turn, not per transaction.
        self._queue: queue.SimpleQueue[list[Item] | None] = queue.SimpleQueue()
        self._gathered: list[Item] = []
        self._writer: threading.Thread | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._committed = threading.Event()  # set by the writer: the WAL has frames to checkpoint
        self._wal_frames = 0  # the WAL's frames at the checkpointer's last pass
        # writer "loop": the loop's write connection, the loop it serves, the short transactions
        # gathered this turn, and whether the writer thread is asked to start the WAL over.
        self._loop_conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._short: list[Item] = []
        self._restarting = False
        self._shm: int | None = None  # the wal-index (-shm file), read by _wal_starts_over

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10,
                               cached_statements=CACHED_STATEMENTS)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def open(self) -> None:
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_conn = self._connect()
        if not self.memory:
            self._write_conn.execute("PRAGMA wal_autocheckpoint=0")
            self._closing.clear()
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="shim-sqlite-checkpoint",
                                                  daemon=True)
            self._checkpointer.start()
        if self.writer == "loop" and not self.memory:  # (each connection to :memory: is its own database)
            conn = self._loop_conn = self._connect()
            conn.execute("PRAGMA busy_timeout=0")  # the write lock is taken at once or not here
            conn.execute("PRAGMA wal_autocheckpoint=0")  # never a checkpoint (a sync) on the loop
            try:
                self._shm = os.open(f"{self.path}-shm", os.O_RDONLY)
            except OSError:  # (no wal-index file: WAL without shared memory)
                self._shm = None
            self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="shim-sqlite-writer", daemon=True)
        self._writer.start()
        if not self.memory:
            self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shim-sqlite-reader")
        # Migrations run on the writer like any write: BEGIN IMMEDIATE holds the database's write
        # lock, so another process opening the same file waits (busy_timeout) and finds them done.
        await self.migrate()

    async def close(self) -> None:
        self._closing.set()
        self._committed.set()  # wakes the checkpointer
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
            # Handed over after the writer's last batch: failed, not left waiting forever.
            while True:
                try:
                    items = self._queue.get_nowait()
                except queue.Empty:
                    break
                for _, fut, loop in items or ():
                    loop.call_soon_threadsafe(_settle, [(fut, False, RuntimeError("store is not open"))], self._slots)
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
            self._loop = None
        if self._shm is not None:
            os.close(self._shm)
            self._shm = None
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None

    # One writer: nothing to serialize, so no ``Lock`` to make and step through.
    def _lock_message(self, message_id: str) -> Iterable[Op]:
        return ()

    def _lock_messages(self, message_ids: Sequence[str]) -> Iterable[Op]:
        return ()

    async def take_back_orphaned_leases(self) -> None:
        # Single-process: leases left by a crashed run are ours to take back.
        await self.release_all()

    async def _write(self, make: TxFn[T], short: bool = False) -> T:
        if self._writer is None:
            raise RuntimeError("store is not open")
        await self._slots.acquire()  # released once the writer is done with this transaction
        if self._writer is None:  # closed while this waited for a slot
            self._slots.release()
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if short and loop is self._loop and not self._restarting:
            self._short.append((make, fut, loop))
            if len(self._short) == 1:
                loop.call_soon(self._run_short)
        else:
            self._gathered.append((make, fut, loop))
            if len(self._gathered) == 1:
                loop.call_soon(self._hand_over)
        return await fut

    def _hand_over(self) -> None:
        items, self._gathered = self._gathered, []
        self._to_writer(items)

    def _to_writer(self, items: list[Item]) -> None:
        if self._writer is None:  # closed since these were submitted
            _settle([(fut, False, RuntimeError("store is not open")) for _, fut, _ in items], self._slots)
        else:
            self._queue.put(items)

    def _run_short(self) -> None:
        """This turn's short transactions, in one transaction on the loop's connection; or, when
        that cannot be (the write lock is held elsewhere, one of them failed, the WAL is to start
        over, the store closed), on the writer thread."""
        # At most MAX_BATCH at a time: the rest in a later turn, other work served in between.
        batch, self._short = self._short[:MAX_BATCH], self._short[MAX_BATCH:]
        if self._short:
            asyncio.get_running_loop().call_soon(self._run_short)
        if not batch:
            return
        conn = self._loop_conn
        outcomes = None if conn is None or self._restarting else self._run_on_loop(conn, batch)
        if outcomes is None:
            self._to_writer(batch)
            return
        _settle([(fut, ok, value) for (_, fut, _), (ok, value) in zip(batch, outcomes, strict=True)], self._slots)
        if not self._committed.is_set():
            self._committed.set()
        if self._wal_frames >= WAL_RESTART_FRAMES:
            # The writer thread finishes a checkpoint (and syncs) off the loop; short writes go to
            # it meanwhile, so the WAL has no other writer and starts over at its next write.
            self._restarting = True
            self._queue.put([])

    def _wal_starts_over(self) -> bool:
        """Whether a write now starts the WAL over (every frame of it checkpointed, or none yet):
        that write syncs the WAL's new header (fdatasync) before its frames. Read from the
        wal-index header (mxFrame) and checkpoint info (nBackfill): sqlite.org/walformat.html."""
        if self._shm is None:
            return False
        head = os.pread(self._shm, 100, 0)
        if len(head) < 100:
            return True
        return int.from_bytes(head[96:100], sys.byteorder) >= int.from_bytes(head[16:20], sys.byteorder)

    def _run_on_loop(self, conn: sqlite3.Connection, batch: list[Item]) -> list[tuple[bool, Any]] | None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception:  # busy (or worse): the writer thread waits for the lock (or fails them) instead
            return None
        # Holding the write lock, the WAL's frames stay as they are and its checkpointed ones only
        # grow: not all checkpointed now, they were not at BEGIN either, so this transaction
        # appends to the WAL. Else its first write would start the WAL over and sync, on the loop.
        try:
            if self._wal_starts_over():
                conn.execute("ROLLBACK")
                return None
            outcomes: list[tuple[bool, Any]] = [(True, drive(conn, make())) for make, _, _ in batch]
            conn.execute("COMMIT")
        except Exception:  # the writer thread runs it again, the failing transaction apart
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return None
        return outcomes

    async def _read(self, make: TxFn[T]) -> T:
        if self.memory or self._readers is None:
            return await self._write(make)
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._read_sync, make)

    def _read_sync(self, make: TxFn[T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._reader_conns.append(conn)
        return drive(conn, make())

    def _checkpoint_loop(self) -> None:
        """A PASSIVE checkpoint ``CHECKPOINT_AFTER_S`` after the first commit since the last one:
        often under load, so each has a few MB of WAL to sync (the writer's appends wait for that
        sync), never while idle. Durability is SQLite's either way: a checkpoint syncs the WAL
        before it copies pages into the database."""
        conn = self._connect()
        try:
            while not self._closing.is_set():
                # A timeout, not an endless wait: close() may set _committed just before the
                # clear() below swallows it; then this wait ends within a second anyway.
                if not self._committed.wait(1.0):
                    continue
                if self._closing.wait(CHECKPOINT_AFTER_S):
                    break
                self._committed.clear()  # commits from here on are for the next checkpoint
                self._checkpoint(conn)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        """A PASSIVE checkpoint; True when it left nothing of the WAL unchecked."""
        try:
            (busy, frames, done), = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            return False
        self._wal_frames = frames
        return not busy and frames == done

    # -- the writer thread -----------------------------------------------------------------
    def _write_loop(self) -> None:
        conn = self._write_conn
        assert conn is not None
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = list(first)
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    items = self._queue.get_nowait()
                except queue.Empty:
                    break
                if items is None:
                    stop = True
                    break
                batch.extend(items)
            if batch:
                self._run_batch(conn, batch)
                if not self._committed.is_set():
                    self._committed.set()
            if self._wal_frames >= WAL_RESTART_FRAMES and not self.memory:
                # Between two batches: all of the WAL checkpointed, the next BEGIN starts it over.
                self._checkpoint(conn)
                self._wal_frames = 0
            self._restarting = False  # (asked by the loop's writes, or not at all)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Item]) -> None:
        try:
            outcomes = self._run_together(conn, batch)
        except Exception:  # one failed: again, each in its own SAVEPOINT
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            outcomes = self._run_apart(conn, batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, fut, loop), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled, self._slots)
            except RuntimeError:  # that event loop is closed; nobody waits for these results
                pass

    @staticmethod
    def _run_together(conn: sqlite3.Connection, batch: list[Item]) -> list[tuple[bool, Any]]:
        """The whole batch in one transaction (raises when any of it fails)."""
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[tuple[bool, Any]] = [(True, drive(conn, make())) for make, _, _ in batch]
        conn.execute("COMMIT")
        return outcomes

    @staticmethod
    def _run_apart(conn: sqlite3.Connection, batch: list[Item]) -> list[tuple[bool, Any]]:
        """The batch again, each transaction in its own SAVEPOINT: a failing one rolls back alone."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for make, _, _ in batch:
                conn.execute("SAVEPOINT tx")
                try:
                    value = drive(conn, make())
                except Exception as e:  # this transaction only
                    conn.execute("ROLLBACK TO tx")
                    outcomes.append((False, e))
                else:
                    outcomes.append((True, value))
                conn.execute("RELEASE tx")
            conn.execute("COMMIT")
        except Exception as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            outcomes = [(False, e)] * len(batch)
        return outcomes


def _settle(settled: list[tuple[asyncio.Future[Any], bool, Any]], slots: asyncio.Semaphore) -> None:
    for fut, ok, value in settled:
        slots.release()
        if fut.done():  # its caller gave up waiting (cancelled)
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
