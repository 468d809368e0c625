"""JSON logs: no URL userinfo, access lines buffered and whole, request ids bounded."""

from __future__ import annotations

import json
import logging

import pytest

from shim.keys import ACCESS_LOG
from shim.ops import AccessLog, scrub
from shim.web_app import request_id

from ..conftest import Harness


def test_scrub_userinfo() -> None:
    assert scrub("posting to https://user:pa55@host/x failed") == "posting to https://***@host/x failed"


async def test_access_lines_are_buffered_json_written_whole_on_flush() -> None:
    written: list[str] = []
    access = AccessLog(written.append, interval_s=3600)
    access.request("rid-1", "POST", "/v1/users/{userId}/messages", 201, 1.25, "u-1")
    access.request("rid-2", "GET", "unmatched", 404, 0.5, None)
    assert written == []  # nothing per request: the writer task (or a flush) writes them
    access.flush()
    (chunk,) = written
    lines = [json.loads(line) for line in chunk.splitlines()]
    assert [(x["request_id"], x["status"], x.get("user_id")) for x in lines] == [("rid-1", 201, "u-1"),
                                                                                 ("rid-2", 404, None)]
    assert all(x["logger"] == "shim.access" and x["msg"] == "request" and x["ts"].endswith("Z") for x in lines)
    access.flush()
    assert len(written) == 1  # an empty buffer writes nothing


async def test_access_log_is_bounded_and_flushed_on_stop() -> None:
    written: list[str] = []
    access = AccessLog(written.append, interval_s=3600)
    await access.start()
    for i in range(AccessLog.MAX_BUFFERED):
        access.request(f"r{i}", "GET", "/healthz", 200, 0.1, None)
    assert len(written) == 1 and written[0].count("\n") == AccessLog.MAX_BUFFERED
    access.request("last", "GET", "/healthz", 200, 0.1, None)
    await access.stop()
    assert '"request_id":"last"' in written[-1]


@pytest.mark.parametrize(("given", "kept"), [
    ("req-abc-1", True), ("a" * 128, True), ("a" * 129, False), ("", False), (None, False),
    ("bad id", False), ("x\ny", False), ("\u00e9", False),
])
def test_request_id_is_taken_only_when_short_and_plain(given: str | None, kept: bool) -> None:
    rid = request_id(given)
    assert (rid == given) is kept
    assert 0 < len(rid) <= 128


async def test_probe_and_scrape_lines_are_debug_level(harness: Harness) -> None:
    written: list[str] = []
    access = harness.app[ACCESS_LOG]
    access.write = written.append
    logger = logging.getLogger("shim.access")
    old = logger.level
    try:
        for level in (logging.INFO, logging.DEBUG):
            logger.setLevel(level)
            for path in ("/healthz", "/metrics", "/v1/users/u-test/messages/nope"):
                async with harness.session.get(harness.url + path, headers=harness.auth) as r:
                    await r.read()
            access.flush()
    finally:
        logger.setLevel(old)
    info, debug = ([json.loads(line) for line in chunk.splitlines()] for chunk in written)
    assert [x["route"] for x in info] == ["/v1/users/{userId}/messages/{messageId}"]
    assert [(x["route"], x["level"]) for x in debug] == [
        ("/healthz", "debug"), ("/metrics", "debug"), ("/v1/users/{userId}/messages/{messageId}", "info")]


async def test_unsupported_v1_endpoints_log_their_path_shape_and_user(harness: Harness) -> None:
    written: list[str] = []
    access = harness.app[ACCESS_LOG]
    access.write = written.append
    logger = logging.getLogger("shim.access")
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        for headers in (harness.auth, {}):
            async with harness.session.post(f"{harness.url}/v1/users/u-test/calls/c-1/audio", headers=headers) as r:
                assert r.status == 404
        access.flush()
    finally:
        logger.setLevel(old)
    lines = [json.loads(line) for line in "".join(written).splitlines()]
    assert [(x["route"], x.get("user_id")) for x in lines] == [
        ("unsupported POST /v1/users/{userId}/calls/{id}/audio", "u-test"), ("unmatched", None)]
