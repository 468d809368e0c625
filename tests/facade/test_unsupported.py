"""What shim answers for the parts of v1 it does not serve (rows of ``docs/compatibility.md``): every
other v1 resource is a v1 JSON 404 (after authentication, so a bad credential is still a 401), so
legacy SDKs raise their usual not-found error instead of failing to parse."""

from __future__ import annotations

import asyncio

import pytest

from ..conftest import Harness, auth

compat = pytest.mark.compat
NOT_SERVED = 'v1 JSON 404 not-found/resource-not-found for every method'


@compat("other v1 resources", "/applications", "not supported",
        note=f"{NOT_SERVED}; inbound routing (incomingMessageUrl, its fallback, method, timeout) is users[].incoming "
             "in shim's config")
@compat("other v1 resources", "/phoneNumbers", "not supported",
        note=f"{NOT_SERVED}; numbers are bound to the v2 messaging application on Bandwidth's side")
@compat("other v1 resources", "/account/transactions", "not supported", note=NOT_SERVED)
@compat("other v1 resources", "/errors", "not supported", note=NOT_SERVED)
@compat("other v1 resources", "/calls, /bridges, /conferences, /recordings, /domains", "not supported",
        note=f"{NOT_SERVED}: shim is messaging only")
@compat("other v1 resources", "/availableNumbers, /numberInfo", "not supported", note=NOT_SERVED)
async def test_other_v1_resources_are_json_404s(harness: Harness) -> None:
    user = f"{harness.url}/v1/users/u-test"
    urls = [f"{user}/{p}" for p in ("applications", "applications/a-x", "phoneNumbers", "phoneNumbers/n-x",
                                     "account/transactions", "errors", "errors/e-x", "calls", "bridges",
                                     "conferences", "recordings", "domains")]
    urls += [f"{harness.url}/v1/availableNumbers/local", f"{harness.url}/v1/phoneNumbers/numberInfo/+15551230001"]
    for url in urls:
        for method in ("GET", "POST", "DELETE"):
            resp = await harness.session.request(method, url, headers=harness.auth, json={"name": "x"})
            assert resp.status == 404, (method, url)
            assert resp.headers["Content-Type"] == "application/json"
            body = await resp.json()
            assert (body["category"], body["code"]) == ("not-found", "resource-not-found")


@compat("GET /v1/users/{userId}/messages/{messageId}", "skipMMSCarrierValidation", "not supported",
        note="never shown (v2 has no such option); ignored when sent")
async def test_skip_mms_carrier_validation_is_ignored(harness: Harness) -> None:
    mid = await harness.send(skipMMSCarrierValidation=True)
    assert "skipMMSCarrierValidation" not in await harness.stored(mid)
    assert "skipMMSCarrierValidation" not in harness.v2_requests[-1]


@compat("all v1 endpoints", "429 too-many-requests (resource rate limits)", "not supported",
        note="shim does not rate-limit reads (v1: 1 request/s, then 429 rate-limit-reached with X-RateLimit-Reset); "
             "send rate limits are v2's, answered as 403 limit/message-rate-limit")
async def test_reads_are_not_rate_limited(harness: Harness) -> None:
    responses = await asyncio.gather(*(harness.session.get(harness.messages_url, headers=harness.auth)
                                       for _ in range(20)))
    assert {r.status for r in responses} == {200}
    assert not any("X-RateLimit-Reset" in r.headers for r in responses)


@compat("POST /v1/users/{userId}/messages",
        "number-access-denied, message-delay-limit, insufficient-available-balance, restricted-number", "not supported",
        note="v1's account-side refusals have no v2 twin at send time: what v2 refuses is a 400 validation-error with "
             "v2's fieldErrors in details, or a failed delivery (message-failed → state error, deliveryCode)")
async def test_v2_refusals_are_validation_errors(harness: Harness) -> None:
    resp = await harness.post({"from": "+15551230001", "to": "+1invalid", "text": "x"})
    assert resp.status == 400
    body = await resp.json()
    assert (body["category"], body["code"]) == ("bad-request", "validation-error")
    assert body["details"] and all(set(d) == {"name", "value"} for d in body["details"])
    resp = await harness.session.get(harness.messages_url, headers=auth("t-test-token", "nope"))
    assert resp.status == 401
