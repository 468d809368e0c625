"""``GET /v1/users/{userId}/account``: enough of v1's account resource for legacy SDKs to start.

The Java SDK (java-bandwidth ``BandwidthClient.validateCredentials``) calls it whenever credentials
are set and treats only a 401 as bad credentials; Ruby ``Account.get`` and C# ``Account.GetAsync``
read the same body. v2 has no account balance for messaging, so shim answers a fixed, plausible
v1 body: ``balance`` a decimal string (C# ``string``, Java ``Double.parseDouble``) and ``accountType``
``pre-pay`` (the only value of C#'s ``AccountType`` enum).
"""

from __future__ import annotations

from aiohttp import web

from shim.keys import CONFIG

from .web_auth import authenticate
from .web_v1 import json_response

ACCOUNT_BODY = {"balance": "0.00", "accountType": "pre-pay"}


async def get_account(request: web.Request) -> web.StreamResponse:
    authenticate(request, request.app[CONFIG])
    return json_response(ACCOUNT_BODY)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/users/{userId}/account", get_account, allow_head=False)
