"""The operator console (issue 13): HTML pages at ``/admin/`` for message timelines, deliveries and
dead letters, migration readiness and health, served with the admin API (``web_console``)."""

from .web_console import add_routes

__all__ = ["add_routes"]
