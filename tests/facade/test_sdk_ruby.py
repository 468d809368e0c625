"""The Ruby SDK (ruby-bandwidth 3.0.x, Bandwidth/ruby-bandwidth @ 0588b61f) against a real shim.

Each test replays the SDK's exact requests and parses the answers the way its source does:

- ``lib/bandwidth/client.rb``: Faraday with ``Accept: application/json``,
  ``User-Agent: ruby-bandwidth/v3.0.1``, Basic auth; ``make_request`` camel-cases the data and sends
  it as the query (GET, DELETE) or as a JSON body with ``Content-Type: application/json``;
  ``check_response`` runs ``JSON.parse(response.body)`` on **every** status >= 400 (an empty or
  non-JSON error body raises ``JSON::ParserError`` instead of ``GenericError``), and any non-empty
  2xx body is ``JSON.parse``d too; ``get_id_from_location_header`` is ``location.split('/').last``.
- ``lib/bandwidth/message.rb``: ``create`` (object: POST then GET by the Location id; array: per item
  ``error.message`` or the id from ``location``), ``get``, ``list`` (one page), ``patch``.
- ``lib/bandwidth/media.rb``: ``upload`` (PUT ``URI.encode(name)`` with ``Content-Length`` and
  ``Content-Type``, then ``check_response``), ``download`` (GET, body and Content-Type as they are),
  ``delete`` and ``list`` through ``make_request``, ``get_info`` (``make_request(:head, …)``).
- ``lib/bandwidth/account.rb``: ``Account.get`` (``GET /v1/users/{id}/account``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from ..conftest import Harness, HarnessFactory, auth
from ..test_web_bad_input import RAW_CASES, parse_raw, raw_exchange

compat = pytest.mark.compat
RUBY_HEADERS = {"Accept": "application/json", "User-Agent": "ruby-bandwidth/v3.0.1"}


def camelcase(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def ruby_parse(status: int, body: bytes, *, binary_ok: bool = False) -> Any:
    """``check_response`` + ``make_request``: what Ruby does with a response body."""
    if status >= 400:
        return json.loads(body)  # JSON.parse(response.body): raises on "" or non-JSON
    if body.strip() and not binary_ok:
        return json.loads(body)
    return {}


class RubySdk:
    def __init__(self, h: Harness, user_id: str = "u-test") -> None:
        self.h = h
        self.user_path = f"/users/{user_id}"
        self.headers = RUBY_HEADERS | h.auth

    async def make_request(self, method: str, path: str, data: Any = None) -> tuple[int, Any, Any]:
        url = f"{self.h.cfg.server.public_url}/v1{self.user_path}/{path}"
        d = {camelcase(k): v for k, v in data.items()} if isinstance(data, dict) else data
        if method in ("GET", "DELETE"):
            resp = await self.h.session.request(method, url, params=d or None, headers=self.headers)
        else:
            resp = await self.h.session.request(method, url, data=json.dumps(d).encode(),
                                                headers=self.headers | {"Content-Type": "application/json"})
        body = await resp.read()
        return resp.status, ruby_parse(resp.status, body), resp.headers


@compat("POST /v1/users/{userId}/messages", "single object", "supported",
        note="201 Created, empty body (Ruby parses any non-empty body), absolute Location; readable by GET at once")
@compat("PATCH /v1/users/{userId}/messages/{messageId}", "text", "supported",
        note='exactly {"text": ""}: redacts the message, its stored events and pending callback bodies; 200 empty body')
async def test_message_create_get_list_patch(harness: Harness) -> None:
    sdk = RubySdk(harness)
    status, body, headers = await sdk.make_request("POST", "messages", {
        "from": "+15551230001", "to": "+15551230002", "text": "ruby", "receipt_requested": "all",
        "callback_url": f"{harness.receiver.url}/rb"})
    assert status == 201 and body == {}
    message_id = headers["Location"].split("/")[-1]  # Client.get_id_from_location_header
    status, msg, _ = await sdk.make_request("GET", f"messages/{message_id}")
    assert status == 200 and msg["id"] == message_id and msg["receiptRequested"] == "all"
    status, listed, _ = await sdk.make_request("GET", "messages", {"from_date_time": "2012-10-05T20:38:11.023Z",
                                                                   "size": 5})
    assert status == 200 and [m["id"] for m in listed] == [message_id]
    status, patched, _ = await sdk.make_request("PATCH", f"messages/{message_id}", {"text": ""})
    assert status == 200 and patched == {}
    status, msg, _ = await sdk.make_request("GET", f"messages/{message_id}")
    assert msg["text"] == ""


@compat("POST /v1/users/{userId}/messages", "array (batch)", "supported",
        note="1..50 items sent concurrently; 202 with per-item {result: accepted, location} or {result: error, error}; "
             "> 50 is 403 limit/multi-message-limit and nothing is sent")
async def test_message_create_many(harness: Harness) -> None:
    sdk = RubySdk(harness)
    status, results, _ = await sdk.make_request("POST", "messages", [
        {"from": "+15551230001", "to": "+15551230002", "text": "1"},
        {"from": "+15551230001", "text": "2"},
    ])
    assert status == 202
    ok, bad = results
    assert ok["result"] == "accepted" and len(ok["location"].split("/")) >= 2
    assert bad["result"] == "error" and "'to'" in bad["error"]["message"]


@compat("GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}", "HEAD", "supported",
        note="HEAD gives Content-Type and Content-Length (Ruby Media.get_info); a HEAD error has no body by HTTP, "
             "so Ruby's JSON.parse of it fails before it can raise GenericError")
async def test_media_upload_download_info_list_delete(harness: Harness) -> None:
    sdk = RubySdk(harness)
    name = "pic one.png"
    url = f"{harness.url}/v1/users/u-test/media/{quote(name)}"  # URI.encode(name)
    data = b"\x89PNG" + bytes(range(256)) * 4
    resp = await harness.session.put(url, data=data, headers=sdk.headers | {
        "Content-Length": str(len(data)), "Content-Type": "image/png"})
    assert resp.status == 200
    ruby_parse(resp.status, await resp.read())
    resp = await harness.session.get(url, headers=sdk.headers)
    assert (await resp.read(), resp.headers["Content-Type"]) == (data, "image/png")
    resp = await harness.session.head(url, headers=sdk.headers)
    assert resp.status == 200 and await resp.read() == b""
    assert (resp.headers["Content-Type"], resp.headers["Content-Length"]) == ("image/png", str(len(data)))
    status, files, _ = await sdk.make_request("GET", "media")
    assert status == 200 and [f["mediaName"] for f in files] == [name]
    status, body, _ = await sdk.make_request("DELETE", f"media/{quote(name)}")
    assert status == 200 and body == {}


async def test_account_get(harness: Harness) -> None:
    status, account, _ = await RubySdk(harness).make_request("GET", "account")
    assert status == 200 and set(account) == {"balance", "accountType"}


def concrete(path: str) -> str:
    return (path.replace("{userId}", "u-test").replace("{messageId}", "m-nope")
            .replace("{mediaName:.+}", "none.png").replace("{tail:.*}", "x"))


async def sweep(h: Harness, session: aiohttp.ClientSession) -> int:
    """Every route of the app, every method, with and without credentials and with a bad body: the
    answer is what Ruby can parse. The exceptions are not JSON by design and never reached by Ruby
    through ``make_request``: ``/metrics`` (Prometheus text) and a media download (binary, read by
    ``Media.download`` as it is)."""
    paths = {concrete(r.canonical) for r in h.app.router.resources()}
    paths |= {"/", "/nope", "/v1", "/v1/users/u-test", "/v1/users/u-test/applications",
              "/v1/users/u-test/account/transactions", "/admin/nope"}
    checked = 0
    for path in sorted(paths):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            for headers in ({}, h.auth, auth("admin", "admin-password-1")):
                for body in (None, b"{not json"):
                    resp = await session.request(method, h.url + path, data=body, headers=RUBY_HEADERS | headers)
                    raw = await resp.read()
                    if path == "/metrics" and resp.status == 200:
                        continue
                    if resp.status < 400 and resp.content_type in ("text/html", "text/css") and (
                            path.startswith("/admin/ui/") or path.rstrip("/") == "/admin"):
                        continue  # the console's pages, for browsers (their errors are JSON unless asked for HTML)
                    binary = path.startswith("/v1/users/u-test/media/") and method == "GET" and resp.status == 200
                    try:
                        ruby_parse(resp.status, raw, binary_ok=binary)
                    except ValueError:
                        raise AssertionError(f"{method} {path} -> {resp.status}: {raw[:200]!r}") from None
                    if resp.status >= 400 or raw:
                        assert resp.headers["Content-Type"] == "application/json", (method, path)
                    checked += 1
    return checked


@compat("every path", "error bodies", "supported",
        note="every status >= 400 and every non-empty 2xx body is JSON with Content-Type: application/json exactly "
             "(404, 405, 401, aiohttp-level and malformed-HTTP errors, admin, health); except /metrics (Prometheus "
             "text), media downloads (the file) and the operator console's pages (HTML)")
@pytest.mark.compat("all v1 endpoints", "Content-Type", "supported",
                    note="application/json exactly, no charset (C# and Python ≤ 3.0.1 compare it)")
async def test_every_route_and_method_answers_what_ruby_parses(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin={"username": "admin", "password": "admin-password-1"})
    assert await sweep(h, h.session) > 300
    for raw, _status, _code in RAW_CASES:
        status, headers, body = parse_raw(await raw_exchange(h, raw))
        assert status >= 400 and headers["content-type"] == "application/json"
        json.loads(body[: int(headers["content-length"])])
