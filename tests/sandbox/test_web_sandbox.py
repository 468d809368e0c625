"""The sandbox upstream validates like the official spec and answers like v2."""

from __future__ import annotations

import json
from typing import Any

from shim.sandbox.web_sandbox import SandboxState

from ..conftest import USER, Harness, auth

V2AUTH = auth(USER["v2_username"], USER["v2_password"])


async def send(h: Harness, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {"Content-Type": "application/json; charset=utf-8"} | V2AUTH if headers is None else headers
    r = await h.session.post(f"{h.cfg.upstream.base_url}/users/9900001/messages",
                             data=json.dumps(body), headers=hdrs)
    text = await r.text()
    return r.status, (json.loads(text) if text else None)


async def test_accepts_valid_request(harness: Harness) -> None:
    status, body = await send(harness, {"applicationId": "a", "to": ["+15551230002"], "from": "+15551230001",
                                        "text": "hello", "tag": "t"})
    assert status == 202
    assert len(body["id"]) == 29
    assert (body["to"], body["from"], body["text"], body["tag"], body["direction"], body["segmentCount"]) == (
        ["+15551230002"], "+15551230001", "hello", "t", "out", 1)
    harness.v2_requests.clear()  # hand-made request, not shim's


async def test_spec_validation_400_with_field_errors(harness: Harness) -> None:
    for bad, field in (
        ({"to": ["+15551230002"], "from": "+15551230001", "text": "x"}, "applicationId"),
        ({"applicationId": "a", "to": "+15551230002", "from": "+15551230001"}, "to"),
        ({"applicationId": "a", "to": ["+1", "+1"], "from": "+15551230001"}, "to"),
        ({"applicationId": "a", "to": ["+15551230002"], "from": "+15551230001", "text": "x" * 2049}, "text"),
        ({"applicationId": "a", "to": ["+15551230002"], "from": "+15551230001", "priority": "urgent"}, "priority"),
        ({"applicationId": "a", "to": ["+15551230002"], "from": "+15551230001", "media": ["no uri"]}, "media.0"),
        ({"applicationId": "a", "to": ["+1invalid"], "from": "+15551230001", "text": "x"}, "to"),
    ):
        status, body = await send(harness, bad)
        assert status == 400, bad
        assert body["type"] == "request-validation"
        assert any(fe["fieldName"] in (field, "body") for fe in body["fieldErrors"]), (bad, body)
    harness.v2_requests.clear()


async def test_401_and_415(harness: Harness) -> None:
    ok = {"applicationId": "a", "to": ["+15551230002"], "from": "+15551230001", "text": "x"}
    status, body = await send(harness, ok, {"Content-Type": "application/json"})
    assert status == 401 and body["type"] == "unauthorized"
    status, body = await send(harness, ok, {"Content-Type": "application/json"} | auth("v2user", "nope"))
    assert status == 401
    status, body = await send(harness, ok, {"Content-Type": "text/plain"} | V2AUTH)
    assert status == 415 and body["type"] == "unsupported-content-type"
    harness.v2_requests.clear()


def test_sent_and_media_are_bounded() -> None:
    """The sandbox runs as long as a demo does: what it keeps is capped, the oldest dropped first."""
    state = SandboxState(credentials=None, target=None)
    for i in range(5000):
        state.sent.append({"id": i})
    assert len(state.sent) == 1000 and state.sent[0] == {"id": 4000} and state.sent[-1] == {"id": 4999}
    for i in range(300):
        state.media[("9900001", f"m{i}")] = (b"x", "image/png")
    assert len(state.media) == 256
    assert ("9900001", "m43") not in state.media and state.media[("9900001", "m44")] == (b"x", "image/png")
    big = bytes(20 * 1024 * 1024)
    for i in range(5):
        state.media[("9900001", f"big{i}")] = (big, "image/png")
    assert sum(len(d) for d, _ in state.media.values()) <= 64 * 1024 * 1024
    assert ("9900001", "big4") in state.media and ("9900001", "big0") not in state.media
    state.media[("9900001", "big1")] = (b"y", "text/plain")  # rewritten: the newest again
    assert list(state.media)[-1] == ("9900001", "big1")
    state.media.pop(("9900001", "big1"))
    assert ("9900001", "big1") not in state.media
