"""Reconciliation (SPEC §9): messages whose events never came are looked up in v2's message
search and repaired as the events would have repaired them (``Reconciler``)."""

from ._engine import Reconciler, RunReport

__all__ = ["Reconciler", "RunReport"]
