"""The store: messages, ingested v2 events and the callback outbox, on SQLite or PostgreSQL.

``open_store`` picks the backend from ``store.url``; everything above the store sees only ``Store``.
"""

from shim.clock import Clock, now_us

from ._base import Store
from ._deliveries import OUTCOMES, OutboxRow, Timeline
from ._postgres import PostgresStore
from ._sqlite import SqliteStore
from ._types import (
    Attempt,
    DeadLetter,
    DeliveryFilter,
    EventRules,
    IncomingEvent,
    PendingCallback,
    RetentionReport,
    host_key,
)

__all__ = [
    "OUTCOMES",
    "Attempt",
    "Clock",
    "DeadLetter",
    "DeliveryFilter",
    "EventRules",
    "IncomingEvent",
    "OutboxRow",
    "PendingCallback",
    "PostgresStore",
    "RetentionReport",
    "SqliteStore",
    "Store",
    "Timeline",
    "host_key",
    "open_store",
]


def open_store(url: str, rules: EventRules, *, pool_size: int = 40, clock: Clock = now_us,
               sqlite_writer: str = "loop") -> Store:
    """Pick the backend from ``store.url``. ``rules`` is the event core applied inside the
    store's transactions (``shim.gateway.Gateway``); ``clock`` gives epoch microseconds."""
    if url.startswith("sqlite:"):
        return SqliteStore(url, rules, clock=clock, writer=sqlite_writer)
    if url.startswith(("postgresql:", "postgres:")):
        return PostgresStore(url, rules, max_size=pool_size, clock=clock)
    raise ValueError(f"store.url: unsupported scheme in {url.split(':', 1)[0]!r}")
