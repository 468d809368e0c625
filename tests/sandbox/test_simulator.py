"""The simulator's pure pieces: ids, segment counts, the callbacks it would send."""

from __future__ import annotations

from shim.sandbox import message_id, segment_count, status_events


def test_sandbox_helpers() -> None:
    assert len(message_id()) == 29
    assert segment_count("a" * 160, []) == 1 and segment_count("a" * 161, []) == 2
    assert segment_count("é" * 70, []) == 1 and segment_count("ش" * 71, []) == 2
    assert segment_count("x" * 1000, ["https://m"]) == 1
    msg = {"id": "m", "to": ["+15551230001", "+15550004432"], "media": ["https://m/a.png"], "from": "+1",
           "applicationId": "a", "text": "t", "priority": "default"}
    types = [(e["type"], e["to"]) for e in status_events(msg)]
    assert types == [("message-sending", "+15551230001"), ("message-delivered", "+15551230001"),
                     ("message-sending", "+15550004432"), ("message-failed", "+15550004432")]
    assert status_events(msg)[3]["errorCode"] == 4432
