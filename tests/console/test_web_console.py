"""The console over plain HTTP: who may see it, what it refuses (forms from other sites, bad input),
what it never shows (secrets), and the headers that keep a page from being turned against itself.
The browser tests (``test_browser.py``) cover what a person sees and clicks."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import aiohttp

from shim.keys import STORE

from ..conftest import Harness, HarnessFactory, auth, free_port, outbox_is, wait_until
from .conftest import ADMIN

CREDS = auth(ADMIN["username"], ADMIN["password"])
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
PAGES = ("/admin/", "/admin/ui/deliveries", "/admin/ui/migration", "/admin/ui/health")


async def _page(h: Harness, path: str, url: str | None = None, **kw: Any) -> tuple[aiohttp.ClientResponse, str]:
    r = await h.session.get((url or h.url) + path, headers=BROWSER | kw.pop("headers", CREDS), allow_redirects=False,
                            **kw)
    return r, await r.text()


async def _token(h: Harness) -> str:
    _, html = await _page(h, "/admin/ui/deliveries")
    m = re.search(r'name="token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


async def _post(h: Harness, path: str, form: dict[str, str], headers: dict[str, str] | None = None
                ) -> tuple[int, str]:
    r = await h.session.post(h.url + path, data=form, headers=BROWSER | CREDS | (headers or {}), allow_redirects=False)
    return r.status, await r.text()


async def _dead(h: Harness) -> str:
    h.receiver.script["/down"] = [500]
    mid = await h.send(callbackUrl=f"{h.receiver.url}/down")
    await wait_until(outbox_is(h.app[STORE], pending=0, dead=1))
    return mid


async def test_every_page_needs_the_admin_credentials_and_is_off_without_them(make_harness: HarnessFactory) -> None:
    off = await make_harness()
    for path in (*PAGES, "/admin", "/admin/ui/messages/x", "/admin/ui/console.css"):
        r, body = await _page(off, path)
        assert r.status == 404 and r.content_type == "application/json", (path, body)  # as any unknown path

    h = await make_harness(admin=ADMIN)
    for path in (*PAGES, "/admin/ui/messages/x"):
        r, body = await _page(h, path, headers={})
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), path
        assert "text/html" in r.headers["Content-Type"] and "Latest messages" not in body
        r, _ = await _page(h, path, headers=auth("admin", "not-the-password"))
        assert r.status == 401
        r, body = await _page(h, path)
        assert r.status == (404 if path.endswith("/x") else 200), (path, body)
        assert ADMIN["password"] not in body
    r, _ = await _page(h, "/admin")
    assert (r.status, r.headers["Location"]) == (301, "/admin/")
    # Not a browser (curl, an SDK): the v1 JSON errors of every other path.
    for headers in ({}, auth("admin", "not-the-password")):
        r = await h.session.get(f"{h.url}/admin/ui/deliveries", headers=headers)
        assert r.status == 401 and r.headers["Content-Type"] == "application/json"
        assert (await r.json())["code"] == "access-denied"
    r = await h.session.get(f"{h.url}/admin/ui/messages/nope", headers=CREDS)
    assert r.status == 404 and (await r.json())["code"] == "resource-not-found"


async def test_pages_carry_headers_that_forbid_scripts_frames_and_caching(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin=ADMIN)
    for path in PAGES:
        r, body = await _page(h, path)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script" not in csp
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
        assert "<script" not in body and "style=" not in body  # nothing the policy would block
        css = re.search(r'href="(/admin/ui/console.css\?v=[0-9a-f]+)"', body)
        assert css, body
    r, _ = await _page(h, css.group(1))
    assert r.status == 200 and r.content_type == "text/css"


async def test_forms_from_other_sites_are_refused_and_change_nothing(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin=ADMIN)
    await _dead(h)
    h.receiver.script["/down"] = [200]
    token = await _token(h)
    form = {"action": "replay", "outcome": "dead", "token": token}
    for path in ("/admin/ui/deliveries/confirm", "/admin/ui/deliveries/apply"):
        for headers, why in (({"Origin": "http://evil.example"}, "Origin"), ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site")):
            status, body = await _post(h, path, form, headers)
            assert status == 403 and why in body, body
        status, body = await _post(h, path, form | {"token": ""})
        assert status == 403 and "expired" in body
        status, body = await _post(h, path, form | {"token": token[:-1] + ("0" if token[-1] != "0" else "1")})
        assert status == 403
    assert (await h.app[STORE].outbox_counts())["dead"] == 1
    # The admin JSON API: the same origin rule, and JSON only (a form can post text/plain).
    r = await h.session.post(f"{h.url}/admin/deliveries/replay", data='{"all": true}',
                             headers=CREDS | {"Content-Type": "text/plain"})
    assert r.status == 400 and "application/json" in (await r.json())["message"]
    r = await h.session.post(f"{h.url}/admin/deliveries/replay", json={"all": True},
                             headers=CREDS | {"Origin": "http://evil.example"})
    assert r.status == 403
    assert (await h.app[STORE].outbox_counts())["dead"] == 1

    # From the console itself: counted, then done (up to what was counted: "upto", from the count's page).
    status, body = await _post(h, "/admin/ui/deliveries/confirm", form, {"Origin": h.url, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and '<strong id="match-count">1</strong>' in body
    upto = re.search(r'name="upto" value="([0-9]+)"', body)
    assert upto, body
    status, body = await _post(h, "/admin/ui/deliveries/apply", form, {"Origin": h.url})
    assert status == 400 and "Confirm from the page that shows the count" in body  # never without a count
    status, _ = await _post(h, "/admin/ui/deliveries/apply", form | {"upto": upto.group(1)}, {"Origin": h.url})
    assert status == 303
    await wait_until(outbox_is(h.app[STORE], dead=0, pending=0, delivered=1))


async def test_bad_input_gets_a_clear_page_and_changes_nothing(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin=ADMIN)
    await _dead(h)
    token = await _token(h)
    for form, message in (
        ({"action": "explode", "outcome": "dead"}, "action must be replay or discard"),
        ({"action": "replay"}, "Choose at least one filter"),
        ({"action": "replay", "outcome": "lost"}, "Callbacks must be"),
        ({"action": "discard", "outcome": "", "host": "h:1"}, "dead letters only"),
        ({"action": "replay", "ids": "1; DROP TABLE outbox"}, "ids must be callback ids"),
        ({"action": "replay", "ids": " ".join(["1"] * 101)}, "ids must be callback ids"),
        ({"action": "replay", "outcome": "dead", "since": "yesterday"}, "is not a time"),
        ({"action": "replay", "ids": "\u00b2"}, "ids must be callback ids"),  # a digit to str.isdigit() only
        ({"action": "replay", "outcome": "delivered"}, "too broad"),
        ({"action": "replay", "outcome": ""}, "Choose at least one filter"),
        ({"action": "replay", "outcome": "", "ids": "1", "upto": "x"}, "upto must be an outbox id"),
        ({"action": "replay", "host": "x" * 100_000}, "0</strong> callbacks match"),  # cut to 300 characters
    ):
        for path in ("/admin/ui/deliveries/confirm", "/admin/ui/deliveries/apply"):
            status, body = await _post(h, path, {"upto": "1000"} | form | {"token": token})
            expected = 200 if "match" in message and path.endswith("confirm") else 400
            if path.endswith("apply") and "match" in message:
                expected = 303
            assert status == expected and (status == 303 or message in body), (form, path, status, body[-600:])
    assert (await h.app[STORE].outbox_counts())["dead"] == 1

    r, body = await _page(h, "/admin/", params={"q": "+15551230002", "since": "soon"})
    assert r.status == 200 and "is not a time" in body and 'role="alert"' in body
    r, body = await _page(h, "/admin/", params={"q": "x" * 5_000})
    assert r.status == 200 and "No message, event or callback has this id" in body
    r, body = await _page(h, "/admin/ui/messages/%F0%9F%92%A9<b>")
    assert r.status == 404 and "Nothing is stored" in body
    r, body = await _page(h, "/admin/ui/deliveries", params={"done": "<script>", "n": "9" * 40})
    assert r.status == 200 and "<script>" not in body and 'class="notice done"' not in body
    r, body = await _page(h, "/admin/ui/deliveries", params={"done": "replay", "n": "2"})
    assert "Replayed 2 callbacks" in body
    r, body = await _page(h, "/admin/ui/deliveries", params={"done": "replay", "n": "\u00b2"})
    assert r.status == 200 and 'class="notice done"' not in body
    raw = b"action=replay&outcome=dead&host=\xff\xfe&token=" + token.encode()
    r = await h.session.post(f"{h.url}/admin/ui/deliveries/confirm", data=raw,
                             headers=BROWSER | CREDS | {"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 400 and "UTF-8" in await r.text()
    r, _ = await _page(h, "/admin/dead-letters", params={"limit": "\u00b2"})
    assert r.status == 400


async def test_search_finds_by_id_number_user_and_time(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin=ADMIN)
    a = await h.send(to="+15557770001", text="first")
    b = await h.send(to="+15557770002", text="second")
    r, _ = await _page(h, "/admin/", params={"q": a})
    assert (r.status, r.headers["Location"]) == (303, f"/admin/ui/messages/{a}")
    _, body = await _page(h, "/admin/", params={"q": "+1 555 777 0002"})
    assert b in body and a not in body and "to or from +15557770002" in body
    _, body = await _page(h, "/admin/", params={"q": "15551230001"})  # the sender of both
    assert a in body and b in body
    _, body = await _page(h, "/admin/", params={"user": "u-other"})
    assert a not in body and "No message matches" in body
    _, body = await _page(h, "/admin/", params={"until": "2000-01-01"})
    assert a not in body and b not in body
    _, body = await _page(h, "/admin/")
    assert body.index(b) < body.index(a)  # newest first


async def test_secrets_and_hostile_text_never_reach_the_page_raw(make_harness: HarnessFactory) -> None:
    h = await make_harness(admin=ADMIN)
    hook = h.receiver.url.replace("http://", "http://hook:hook-secret-77@")
    token_hook = h.receiver.url.replace("http://", "http://tok-secret-88@")
    mid = await h.send(text='<img src=x onerror="alert(1)">', tag="</pre><script>alert(2)</script>",
                       callbackUrl=f"{hook}/cb", fallbackUrl=f"{token_hook}/fb",
                       media=["https://mu:media-secret-99@cdn.example/a.png"])
    h.receiver.script["/down"] = [500]
    await h.send(callbackUrl=f"{token_hook}/down")
    await wait_until(outbox_is(h.app[STORE], pending=0, delivered=1, dead=1))
    for path in (f"/admin/ui/messages/{mid}", "/admin/", "/admin/ui/deliveries"):
        _, body = await _page(h, path)
        for secret in ("hook-secret-77", "tok-secret-88", "media-secret-99", ADMIN["password"]):
            assert secret not in body, (path, secret)
        assert "<script>alert" not in body and "<img src=x" not in body, path
    _, body = await _page(h, f"/admin/ui/messages/{mid}")
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in body and "hook:***@" in body and "//***@" in body
    assert "mu:***@cdn.example" in body  # in the v1 fields and the v2 request's media


async def test_console_on_the_admin_listener_only(make_harness: HarnessFactory) -> None:
    port = free_port()
    h = await make_harness(admin=ADMIN | {"listen": f"127.0.0.1:{port}"})
    r, _ = await _page(h, "/admin/")
    assert r.status == 404
    from aiohttp import web

    from shim.web_app import build_admin_app, make_runner

    runner = make_runner(build_admin_app(h.app), h.cfg)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        r, body = await _page(h, "/admin/ui/health", url=f"http://127.0.0.1:{port}")
        assert r.status == 200 and "queue depth" in body
    finally:
        await runner.cleanup()


async def test_a_confirmed_discard_never_reaches_callbacks_that_died_after_the_count(
        make_harness: HarnessFactory) -> None:
    h = await make_harness(admin=ADMIN)
    await _dead(h)
    token = await _token(h)
    form = {"action": "discard", "outcome": "dead", "token": token}
    status, body = await _post(h, "/admin/ui/deliveries/confirm", form)
    assert status == 200 and '<strong id="match-count">1</strong>' in body
    upto = re.search(r'name="upto" value="([0-9]+)"', body)
    assert upto
    await h.send(callbackUrl=f"{h.receiver.url}/down")  # another one dies while the operator reads
    await wait_until(outbox_is(h.app[STORE], pending=0, dead=2))
    r = await h.session.post(f"{h.url}/admin/ui/deliveries/apply", data=form | {"upto": upto.group(1)},
                             headers=BROWSER | CREDS, allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (303, "/admin/ui/deliveries?done=discard&n=1")
    assert (await h.app[STORE].outbox_counts())["dead"] == 1


async def test_dry_run_shows_the_v2_request_it_did_not_send(make_harness: HarnessFactory) -> None:
    from ..conftest import OTHER_USER, USER

    h = await make_harness(admin=ADMIN, users=[USER | {"mode": "dry-run"}, OTHER_USER])
    mid = await h.send(text="rehearsal", tag="t1")
    _, body = await _page(h, f"/admin/ui/messages/{mid}")
    assert "not sent (dry-run)" in body and "shim1:dry-run:t1" in body and "rehearsal" in body
    assert h.v2_requests == []


async def test_a_failing_store_gets_a_browser_an_error_page_and_an_api_client_a_v1_error(
        make_harness: HarnessFactory, monkeypatch: Any, caplog: Any) -> None:
    h = await make_harness(admin=ADMIN)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked: SECRET-DETAIL")

    monkeypatch.setattr(h.app[STORE], "outbox_gauges", broken)
    r, body = await _page(h, "/admin/ui/deliveries", headers=CREDS | {"X-Request-Id": "req-console-1"})
    assert r.status == 500 and r.content_type == "text/html", (r.status, body[:300])
    assert "500: internal error" in body and "req-console-1" in body and "SECRET-DETAIL" not in body
    assert 'href="/admin/ui/deliveries"' in body  # the console's own frame, navigation included
    assert any(rec.message == "console page failed" and getattr(rec, "request_id", "") == "req-console-1"
               for rec in caplog.records)
    r = await h.session.get(h.url + "/admin/ui/deliveries", headers=CREDS)
    assert r.status == 500 and (await r.json())["code"] == "internal-error" and "SECRET-DETAIL" not in await r.text()
    monkeypatch.undo()
    r, body = await _page(h, "/admin/ui/deliveries")
    assert r.status == 200  # nothing was left broken
