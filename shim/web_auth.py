"""v1 Basic auth: the same 401 for an unknown user, wrong credentials or someone else's userId."""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web

from .config import Config, UserConfig
from .errors import AccessDenied


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
    """Constant-time comparison of both parts (no early exit on the user name)."""
    g_user, g_pass = given or ("", "")
    ok_user = hmac.compare_digest(g_user.encode(), user.encode())
    ok_pass = hmac.compare_digest(g_pass.encode(), password.encode())
    return bool(given) and ok_user and ok_pass


def authenticate(request: web.Request, cfg: Config) -> UserConfig:
    user = cfg.user(request.match_info.get("userId", ""))
    given = basic_credentials(request.headers.get("Authorization"))
    if user is None:
        # Do the same work as for a known user so timing does not reveal user ids.
        check_pair(given, "\0" * 16, "\0" * 32)
        raise AccessDenied()
    if not check_pair(given, user.api_token, user.api_secret.get_secret_value()):
        raise AccessDenied()
    return user
