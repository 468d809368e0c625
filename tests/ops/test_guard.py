"""What keeps another site from using an admin's browser against shim: origin checks and form tokens."""

from __future__ import annotations

import pytest

from shim.ops._guard import CLOCK_SKEW_S, TOKEN_TTL_S, cross_origin, form_token, token_ok

HOST = "shim.example:8080"


@pytest.mark.parametrize(("headers", "refused"), [
    ({}, False),  # curl, scripts: credentials decide
    ({"Sec-Fetch-Site": "same-origin"}, False),
    ({"Sec-Fetch-Site": "none"}, False),  # typed in the address bar
    ({"Sec-Fetch-Site": "cross-site"}, True),
    ({"Sec-Fetch-Site": "same-site"}, True),  # another port or subdomain is another app
    ({"Origin": "http://shim.example:8080"}, False),
    ({"Origin": "https://SHIM.example:8080"}, False),  # TLS ended in front of shim
    ({"Origin": "http://evil.example"}, True),
    ({"Origin": "http://shim.example:8081"}, True),
    ({"Origin": "null"}, True),  # sandboxed frames, data: URLs
    ({"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"}, True),
])
def test_cross_origin(headers: dict[str, str], refused: bool) -> None:
    assert (cross_origin(headers, (HOST, "")) is not None) is refused


def test_cross_origin_accepts_the_public_host_behind_a_proxy() -> None:
    # A proxy that rewrites Host: the browser's Origin is server.public_url's host.
    assert cross_origin({"Origin": "https://shim.example.com"}, ("10.0.0.5:8080", "shim.example.com")) is None
    assert cross_origin({"Origin": "https://evil.example"}, ("10.0.0.5:8080", "shim.example.com")) is not None


def test_form_tokens_expire_and_are_bound_to_the_password_and_user() -> None:
    t = form_token("pw-long-secret", "admin", 1_000_000)
    assert token_ok(t, "pw-long-secret", "admin", 1_000_000)
    assert token_ok(t, "pw-long-secret", "admin", 1_000_000 + TOKEN_TTL_S)
    assert not token_ok(t, "pw-long-secret", "admin", 1_000_000 + TOKEN_TTL_S + 1)
    assert token_ok(t, "pw-long-secret", "admin", 1_000_000 - CLOCK_SKEW_S)  # a replica's clock a bit behind
    assert not token_ok(t, "pw-long-secret", "admin", 1_000_000 - CLOCK_SKEW_S - 1)  # from the future
    assert not token_ok(t, "other-password", "admin", 1_000_000)
    assert not token_ok(t, "pw-long-secret", "root", 1_000_000)
    assert "pw-long-secret" not in t


@pytest.mark.parametrize("token", [None, "", "x", "1000000", "1000000.", "abc.def", "1000000." + "0" * 32,
                                   "99999999999999999999.abc", "\u00b2." + "0" * 32, "1000000." + "0" * 33])
def test_malformed_tokens_are_refused(token: str | None) -> None:
    assert not token_ok(token, "pw-long-secret", "admin", 1_000_000)
