"""``python bench/tail_probe.py serve --config PATH``: ``python -m shim serve`` with timing probes,
for ``bench/tail.py --trace``. Nothing here is part of shim: the probes are patched in at start,
so shim itself pays nothing for them.

With ``SHIM_TAIL_TRACE=PATH`` set, shim's process records, on ``time.monotonic()`` (one clock for
every process on the machine, so they line up with the load generator's request times):

- ``lag``: the event loop's lag, a task sleeping 1 ms and noting each wake-up more than 2 ms late;
- ``batch``: each SQLite writer batch: when its oldest transaction was handed to the writer, when
  the writer began it, how long BEGIN, the transactions and COMMIT took, its size;
- ``ckpt``: each WAL checkpoint: start, end, its result (busy, WAL frames, frames checkpointed);
- ``wait``: each request handler's wait for its store write (``record_intent``, ``bind_send``).

The records are written to PATH as JSON lines when the store closes (shim's graceful stop).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sqlite3
import sys
import threading
import time
from typing import Any

TRACE: list[tuple[Any, ...]] = []
clock = time.monotonic


def install(path: str) -> None:
    from shim.store import _sqlite as mod

    cls = mod.SqliteStore
    handed: dict[int, float] = {}
    orig_open, orig_close, orig_hand_over = cls.open, cls.close, cls._hand_over

    async def open_(self: Any) -> None:
        await orig_open(self)
        self._tail_lag = asyncio.get_running_loop().create_task(lag_probe())

    async def close(self: Any) -> None:
        self._tail_lag.cancel()
        await orig_close(self)
        with open(path, "w") as f:
            for rec in TRACE:
                f.write(json.dumps(rec) + "\n")

    def hand_over(self: Any) -> None:
        now = clock()
        for _, fut, _ in self._gathered:
            handed[id(fut)] = now
        orig_hand_over(self)

    def run_batch(self: Any, conn: sqlite3.Connection, batch: list[Any]) -> None:
        began = clock()
        oldest = min((handed.pop(id(fut), began) for _, fut, _ in batch), default=began)
        self._tail_batch = [oldest, began, len(batch)]
        orig_run_batch(self, conn, batch)
        TRACE.append(("batch", *self._tail_batch, clock()))

    orig_run_batch = cls._run_batch

    def run_together(conn: sqlite3.Connection, batch: list[Any]) -> list[tuple[bool, Any]]:
        t0 = clock()
        conn.execute("BEGIN IMMEDIATE")
        t1 = clock()
        outcomes: list[tuple[bool, Any]] = [(True, mod.drive(conn, make())) for make, _, _ in batch]
        t2 = clock()
        conn.execute("COMMIT")
        t3 = clock()
        TRACE.append(("commit", t0, t1 - t0, t2 - t1, t3 - t2))
        return outcomes

    def checkpoint_loop(self: Any) -> None:
        # shim's own loop, timed: the same statements at the same interval.
        conn = self._connect()
        interval = float(os.environ.get("SHIM_TAIL_CKPT_S", "1.0"))
        # Experiments: the checkpoint thread's niceness, or its own core.
        if os.environ.get("SHIM_TAIL_CKPT_NICE"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(os.environ["SHIM_TAIL_CKPT_NICE"]))
        if os.environ.get("SHIM_TAIL_CKPT_CPU"):
            os.sched_setaffinity(0, {int(os.environ["SHIM_TAIL_CKPT_CPU"])})
        try:
            while not self._closing.wait(interval):
                t0, cpu0 = clock(), time.thread_time()
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:
                    row = [str(e)]
                TRACE.append(("ckpt", t0, clock(), [*row, f"cpu {(time.thread_time() - cpu0) * 1000:.1f} ms"]))
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass
        finally:
            conn.close()

    if hasattr(cls, "_run_on_loop"):  # store.sqlite_writer: loop — batches on the loop's thread, timed whole
        orig_on_loop = cls._run_on_loop

        def run_on_loop(self: Any, conn: sqlite3.Connection, batch: list[Any]) -> Any:
            t0 = clock()
            outcomes = orig_on_loop(self, conn, batch)
            t1 = clock()
            TRACE.append(("batch", t0, t0, len(batch), t1))
            TRACE.append(("commit", t0, 0.0, t1 - t0, 0.0))
            return outcomes

        cls._run_on_loop = run_on_loop  # type: ignore[method-assign]

    cls.open, cls.close, cls._hand_over = open_, close, hand_over  # type: ignore[method-assign]
    cls._run_batch = run_batch  # type: ignore[method-assign]
    cls._run_together = staticmethod(run_together)  # type: ignore[method-assign]
    if os.environ.get("SHIM_TAIL_CKPT_S") or not hasattr(cls, "_checkpoint"):
        # An interval given, or a shim before issue 9's fix (a checkpoint a second): the loop replaced.
        cls._checkpoint_loop = checkpoint_loop  # type: ignore[method-assign]
    else:
        original_checkpoint = inspect.getattr_static(cls, "_checkpoint")
        static = isinstance(original_checkpoint, staticmethod)  # shims before the WAL restart: (conn) -> None

        def checkpoint(self: Any, conn: sqlite3.Connection) -> bool:
            # shim's ``_checkpoint``, timed, with the WAL's frames it saw and whether it finished.
            t0, cpu0 = clock(), time.thread_time()
            done = original_checkpoint.__func__(conn) if static else original_checkpoint(self, conn)
            TRACE.append(("ckpt", t0, clock(), [getattr(self, "_wal_frames", None), done,
                                                f"cpu {(time.thread_time() - cpu0) * 1000:.1f} ms"]))
            return bool(done)

        cls._checkpoint = checkpoint  # type: ignore[method-assign]

    for name in ("record_intent", "bind_send"):
        orig = getattr(cls, name)

        def wrap(orig: Any = orig, name: str = name) -> Any:
            async def timed(self: Any, *a: Any, **k: Any) -> Any:
                t0 = clock()
                try:
                    return await orig(self, *a, **k)
                finally:
                    TRACE.append(("wait", name, t0, clock() - t0))
            return timed

        setattr(cls, name, wrap())


async def lag_probe() -> None:
    while True:
        t0 = clock()
        await asyncio.sleep(0.001)
        late = clock() - t0 - 0.001
        if late > 0.002:
            TRACE.append(("lag", t0, late, threading.active_count()))


def main() -> None:
    path = os.environ.get("SHIM_TAIL_TRACE")
    if path:
        install(path)
    from shim.cli import main as shim_main

    sys.exit(shim_main())


if __name__ == "__main__":
    main()
