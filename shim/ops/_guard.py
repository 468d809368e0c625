"""What keeps a browser session from being used against shim: the admin credentials are Basic auth,
which a browser sends by itself with any request to shim, so a page elsewhere could post a form to
the console (replay everything, discard dead letters). Every state-changing request must come from
shim's own pages: same origin by the browser's own headers, and carrying a token only those pages
hold. Pure: the clock and the secret are handed in."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

TOKEN_TTL_S = 2 * 3600
# Replicas' clocks differ a little: a token issued by one a bit ahead is still good on another.
CLOCK_SKEW_S = 60
_TOKEN = re.compile(r"([0-9]{1,12})\.([0-9a-f]{32})")


def cross_origin(headers: Mapping[str, str], hosts: Collection[str]) -> str | None:
    """Why a state-changing request did not come from shim's own pages, or None when it may have.
    Browsers send ``Sec-Fetch-Site`` and ``Origin`` with every cross-origin POST; clients that are
    not browsers (curl, scripts) send neither and are judged by their credentials alone. ``hosts``:
    the ``host[:port]`` shim is reached as (the request's ``Host``, ``server.public_url``'s, for a
    proxy that rewrites ``Host``)."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site}"
    origin = headers.get("Origin")
    if origin is not None:
        if origin == "null" or urlsplit(origin).netloc.lower() not in {h.lower() for h in hosts if h}:
            return "Origin is not this server"
    return None


def _mac(secret: str, username: str, issued_s: int) -> str:
    msg = f"shim-console:{username}:{issued_s}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()[:32]


def form_token(secret: str, username: str, now_s: int) -> str:
    """A token for the forms of one page: the time it was issued and a MAC under the admin password
    (every replica can check it, nothing is stored, and it dies with a password change)."""
    return f"{now_s}.{_mac(secret, username, now_s)}"


def token_ok(token: str | None, secret: str, username: str, now_s: int) -> bool:
    m = _TOKEN.fullmatch(token or "")
    if m is None:
        return False
    issued = int(m.group(1))
    if not -CLOCK_SKEW_S <= now_s - issued <= TOKEN_TTL_S:
        return False
    return hmac.compare_digest(m.group(2), _mac(secret, username, issued))
