"""The store: messages, ingested v2 events and the callback outbox, on SQLite or PostgreSQL.

``open_store`` picks the backend from ``store.url``; everything above the store sees only ``Store``.
"""

from ._base import DeadLetter, IncomingEvent, Store, host_key, open_store
from ._postgres import PostgresStore
from ._sqlite import SqliteStore

__all__ = ["DeadLetter", "IncomingEvent", "PostgresStore", "SqliteStore", "Store", "host_key", "open_store"]
