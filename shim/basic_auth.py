"""HTTP Basic credentials, built and checked in one place for every side of shim: the v1 API,
callback ingest, the admin API, the v2 client, callback delivery and the sandbox."""

from __future__ import annotations

import base64
import binascii
import hmac


def basic_header(user: str, password: str) -> str:
    """An ``Authorization: Basic`` value (aiohttp's BasicAuth is deprecated)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def check_pair(given: tuple[str, str] | None, user: str, password: str) -> bool:
    """Constant-time comparison of both parts (no early exit on the user name). An empty
    password never authenticates, whatever is configured."""
    g_user, g_pass = given or ("", "")
    ok_user = hmac.compare_digest(g_user.encode(), user.encode())
    ok_pass = hmac.compare_digest(g_pass.encode(), password.encode())
    return bool(given) and bool(g_pass) and bool(password) and ok_user and ok_pass
