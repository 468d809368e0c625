"""The sandbox's message search answers in the official ``messagesList`` shape (validated against
the spec shipped in ``shim/data``), pages with tokens, filters, and refuses what v2 refuses."""

from __future__ import annotations

from typing import Any

from shim.basic_auth import basic_header
from shim.core import validator

from ..conftest import HarnessFactory, wait_until


async def test_search_shape_paging_and_filters(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    ids = [await h.send(to=to, tag="app") for to in ("+15551230002", "+15550004720", "+15551230003")]
    await wait_until(lambda: len(h.sandbox_state.searchable) == 3)
    base = f"{h.cfg.upstream.base_url}/users/9900001/messages"

    auth = {"Authorization": basic_header("v2user", "v2pass-secret")}

    async def search(**params: Any) -> tuple[int, Any]:
        async with h.session.get(base, params={k: str(v) for k, v in params.items()}, headers=auth) as r:
            return r.status, await r.json()

    status, body = await search(messageDirection="OUTBOUND", limit=2)
    assert status == 200
    assert not list(validator("messagesList").iter_errors(body))
    assert body["totalCount"] == 3 and [m["messageId"] for m in body["messages"]] == ids[:2]
    assert body["messages"][1]["messageStatus"] == "FAILED" and body["messages"][1]["errorCode"] == 4720
    assert body["messages"][0]["tag"].startswith("shim1:") and body["messages"][0]["tag"].endswith(":app")
    status, page2 = await search(messageDirection="OUTBOUND", limit=2, pageToken=body["pageInfo"]["nextPageToken"])
    assert [m["messageId"] for m in page2["messages"]] == ids[2:] and "nextPageToken" not in page2["pageInfo"]
    assert not list(validator("messagesList").iter_errors(page2))
    assert (await search(messageId=ids[1]))[1]["totalCount"] == 1
    assert (await search(messageStatus="DELIVERED"))[1]["totalCount"] == 2
    assert (await search(destinationTn="+15551230003"))[1]["messages"][0]["messageId"] == ids[2]
    assert (await search(messageDirection="OUTBOUND", toDateTime="2000-01-01T00:00:00Z"))[1]["totalCount"] == 0
    assert (await search(fromDateTime="2026-01-01T00:00:00Z", toDateTime="2026-02-01T00:00:00Z"))[0] == 400
    assert (await search(messageStatus="NOPE"))[0] == 400
    assert (await search(limit="x"))[0] == 400
    async with h.session.get(base) as r:
        assert r.status == 401
    async with h.session.get(base, headers=auth) as r:
        assert r.status == 400  # at least one query parameter
