"""v1 Basic auth: the same 401 for an unknown user, wrong credentials or someone else's userId.
Once authenticated, the user's deprecation headers (if configured) go on every response."""

from __future__ import annotations

from shim.basic_auth import basic_credentials, check_pair
from shim.config import Config, UserConfig
from shim.errors import AccessDenied
from shim.keys import USER_HEADERS, USER_ID

from .web_v1 import V1Request


def authenticate(request: V1Request, cfg: Config) -> UserConfig:
    user = cfg.user(request.match_info.get("userId", ""))
    given = basic_credentials(request.headers.get("Authorization"))
    if user is None:
        # Do the same work as for a known user so timing does not reveal user ids.
        check_pair(given, "\0" * 16, "\0" * 32)
        raise AccessDenied()
    if not check_pair(given, user.api_token, user.api_secret.get_secret_value()):
        raise AccessDenied()
    request[USER_ID] = user.user_id
    if user.deprecation is not None:
        request[USER_HEADERS] = user.deprecation.headers
    return user
