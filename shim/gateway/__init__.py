"""The callback gateway: ingest of Bandwidth's v2 callback arrays (``web_ingest``) and the routing
of each event to its user, its stored message or the native route (``Gateway``)."""

from . import web_ingest
from ._routing import Gateway, canonical, dedupe_key

__all__ = ["Gateway", "canonical", "dedupe_key", "web_ingest"]
