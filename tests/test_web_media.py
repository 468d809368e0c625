"""End to end: the v1 media resource over the sandbox's v2 media API."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator

from .conftest import Harness


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
    assert await resp.read() == data

    resp = await harness.session.get(f"{harness.url}/v1/users/u-test/media", headers=harness.auth)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == [{"mediaName": "cat.png", "contentLength": len(data), "content": url}]

    resp = await harness.session.delete(url, headers=harness.auth)
    assert resp.status == 200
    resp = await harness.session.get(url, headers=harness.auth)
    assert resp.status == 404
    assert (await resp.json())["code"] == "media-not-found"


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
    url = f"{harness.url}/v1/users/u-test/media/a/b/c.txt"
    resp = await harness.session.put(url, data=b"hello", headers=harness.auth | {"Content-Type": "text/plain"})
    assert resp.status == 200
    assert ("9900001", "a/b/c.txt") in harness.sandbox_state.media
    resp = await harness.session.get(url)
    assert resp.status == 401
