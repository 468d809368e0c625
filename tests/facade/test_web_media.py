"""End to end: the v1 media resource over the sandbox's v2 media API."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator

import pytest

from ..conftest import OTHER_USER, USER, Harness, auth


@pytest.mark.compat("GET /v1/users/{userId}/media", "mediaName, content, contentLength", "supported",
                    note="content is shim's URL of the file; v2's continuationToken paging becomes a Link rel=\"next\"")
@pytest.mark.compat("GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}", "PUT", "supported",
                    note="the raw body streamed to the v2 media API of the user's account; Content-Length required")
@pytest.mark.compat("GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}", "GET", "supported",
                    note="streamed with its stored Content-Type")
@pytest.mark.compat("GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}", "DELETE", "supported",
                    note="200, also for a name that is not there")
async def test_put_get_list_delete_roundtrip(harness: Harness) -> None:
    url = f"{harness.url}/v1/users/u-test/media/cat.png"
    data = os.urandom(3_000_000)
    resp = await harness.session.put(url, data=io.BytesIO(data),
                                     headers=harness.auth | {"Content-Type": "image/png"})
    assert resp.status == 200, await resp.text()
    assert harness.sandbox_state.media[("9900001", "cat.png")] == (data, "image/png")

    resp = await harness.session.get(url, headers=harness.auth)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/png"
    # Never a page of shim's origin (where the console lives), whatever the file is.
    assert resp.headers["Content-Security-Policy"] == "sandbox" and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert await resp.read() == data

    resp = await harness.session.get(f"{harness.url}/v1/users/u-test/media", headers=harness.auth)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == [{"mediaName": "cat.png", "contentLength": len(data), "content": url}]

    resp = await harness.session.delete(url, headers=harness.auth)
    assert resp.status == 200
    resp = await harness.session.get(url, headers=harness.auth)
    assert resp.status == 404
    assert (await resp.json())["code"] == "media-not-found"


@pytest.mark.compat("GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}", "size limit", "partial",
                    note="v2's 3.75 MB per file (v1 allowed 65 MB): larger is 403 media-size-overflow before anything is "
                         "sent upstream")
async def test_upload_over_limit_refused_before_upstream(harness: Harness) -> None:
    url = f"{harness.url}/v1/users/u-test/media/big.bin"
    resp = await harness.session.put(url, data=io.BytesIO(b"x" * 3_750_001), headers=harness.auth)
    assert resp.status == 403
    assert (await resp.json())["code"] == "media-size-overflow"
    assert harness.sandbox_state.media == {}


async def test_upload_needs_content_length(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"

    url = f"{harness.url}/v1/users/u-test/media/chunked.bin"
    resp = await harness.session.put(url, data=chunks(), headers=harness.auth)
    assert resp.status == 400
    assert harness.sandbox_state.media == {}


async def test_media_is_per_user(harness: Harness) -> None:
    a_auth, b_auth = harness.auth, auth(OTHER_USER["api_token"], OTHER_USER["api_secret"])
    a_base, b_base = f"{harness.url}/v1/users/u-test/media", f"{harness.url}/v1/users/u-other/media"
    # The same name under each user lands in that user's own v2 account.
    for base, creds, data in ((a_base, a_auth, b"from A"), (b_base, b_auth, b"from B")):
        resp = await harness.session.put(f"{base}/a/b/c.txt", data=data, headers=creds | {"Content-Type": "text/plain"})
        assert resp.status == 200, await resp.text()
    assert harness.sandbox_state.media == {
        (USER["account_id"], "a/b/c.txt"): (b"from A", "text/plain"),
        (OTHER_USER["account_id"], "a/b/c.txt"): (b"from B", "text/plain"),
    }
    for base, creds, data in ((a_base, a_auth, b"from A"), (b_base, b_auth, b"from B")):
        resp = await harness.session.get(f"{base}/a/b/c.txt", headers=creds)
        assert resp.status == 200 and await resp.read() == data
        resp = await harness.session.get(base, headers=creds)
        assert await resp.json() == [{"mediaName": "a/b/c.txt", "contentLength": 6, "content": f"{base}/a/b/c.txt"}]

    # Nobody's credentials (none, or the other user's) reach a user's media.
    denied = {"category": "authorization", "code": "access-denied",
              "message": "The authenticated user does not have sufficient permissions to access this resource"}
    for base, creds in ((a_base, {}), (a_base, b_auth), (b_base, a_auth)):
        for method, url in (("GET", base), ("GET", f"{base}/a/b/c.txt"), ("PUT", f"{base}/a/b/c.txt"),
                            ("DELETE", f"{base}/a/b/c.txt")):
            resp = await harness.session.request(method, url, data=b"hijack" if method == "PUT" else None,
                                                 headers=creds)
            assert resp.status == 401, (method, url, resp.status)
            body = await resp.json()
            assert body == denied | {"details": [
                {"name": "requestMethod", "value": method}, {"name": "remoteAddress", "value": "127.0.0.1"},
                {"name": "requestPath", "value": url.split("/v1/", 1)[1]}]}, (method, url)
    assert harness.sandbox_state.media == {
        (USER["account_id"], "a/b/c.txt"): (b"from A", "text/plain"),
        (OTHER_USER["account_id"], "a/b/c.txt"): (b"from B", "text/plain"),
    }
