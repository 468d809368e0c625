"""JSON logs never carry URL userinfo."""

from __future__ import annotations

from shim.ops import scrub


def test_scrub_userinfo() -> None:
    assert scrub("posting to https://user:pa55@host/x failed") == "posting to https://***@host/x failed"
