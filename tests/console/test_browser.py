"""The console in a real browser (headless Chromium) against a live shim with traffic: each page,
a replay from the dead-letter page that ends in a delivered callback at the live receiver, a
discard by filter confirmed by its count, keyboard use, and credentials."""

from __future__ import annotations

import json
from typing import Any

from selenium.webdriver.common.keys import Keys

from shim.keys import STORE

from ..conftest import USER, Harness, HarnessFactory, auth, outbox_is, wait_until
from .conftest import ADMIN, Browser

V2_AUTH = auth(USER["v2_username"], USER["v2_password"])


async def _setup(make_harness: HarnessFactory, chromium: Any, **overrides: Any) -> tuple[Harness, Browser]:
    h = await make_harness(admin=ADMIN, **overrides)
    b = Browser(chromium, h.url)
    await b.login()
    return h, b


async def _dead_letter(h: Harness, path: str = "/down") -> str:
    h.receiver.script[path] = [500]
    mid = await h.send(callbackUrl=f"{h.receiver.url}{path}")
    await wait_until(outbox_is(h.app[STORE], pending=0, dead=1))
    return mid


async def test_replay_from_the_dead_letter_page_reaches_the_live_receiver(make_harness: HarnessFactory,
                                                                          chromium: Any) -> None:
    h, b = await _setup(make_harness, chromium)
    mid = await _dead_letter(h)
    down_before = len(h.receiver.at("/down"))
    h.receiver.script["/down"] = [200]  # the app is back

    await b.open("/admin/ui/deliveries")
    text = await b.text()
    assert "Dead letters (1)" in text and mid in text, text
    await b.screenshot("deliveries")
    (button,) = await b.find_all('button[aria-label^="Replay dead letter"]')
    await b.call(button.click)
    # The count comes first; nothing has changed yet.
    assert await b.text("#match-count") == "1"
    assert "Replay 1 callback" in await b.text("form button")
    await b.screenshot("confirm")
    assert (await h.app[STORE].outbox_counts())["dead"] == 1
    await b.click('form[action$="/deliveries/apply"] button[type=submit]')
    await b.wait_url("/admin/ui/deliveries?done=replay&n=1")
    assert "Replayed 1 callback" in await b.text(".notice.done")

    await wait_until(outbox_is(h.app[STORE], pending=0, dead=0, delivered=1))
    last = h.receiver.at("/down")[-1]
    assert len(h.receiver.at("/down")) == down_before + 1
    assert last.headers["webhook-id"] == f"evt_{mid}_sent" and last.json["messageId"] == mid
    await b.open(f"/admin/ui/messages/{mid}")
    text = await b.wait_text("delivered", "#cbh + table")
    attempts = await b.find_all("#ath + table tbody tr")
    assert len(attempts) == 5, text  # 4 failed before the dead letter, then the replay's success
    await b.open("/admin/ui/deliveries")
    assert "Dead letters (0)" in await b.text()


async def test_discard_by_filter_shows_the_count_before_anything_changes(make_harness: HarnessFactory,
                                                                         chromium: Any) -> None:
    h, b = await _setup(make_harness, chromium)
    h.receiver.script["/down"] = [500]
    for _ in range(2):
        await h.send(callbackUrl=f"{h.receiver.url}/down")
    await h.send(callbackUrl=f"{h.receiver.url}/ok")
    await wait_until(outbox_is(h.app[STORE], pending=0, dead=2, delivered=1))
    host = h.receiver.url.removeprefix("http://")

    await b.open("/admin/ui/deliveries")
    await b.select("#b-action", "discard")
    await b.type("#b-host", host)
    await b.click('form.bar button[type=submit]')
    assert await b.text("#match-count") == "2"
    assert "Discard 2 callbacks" in await b.text("form button")
    await b.click('a[href="/admin/ui/deliveries"]')  # cancel
    await b.wait_url("/admin/ui/deliveries", 10)
    assert await h.app[STORE].outbox_counts() == {"pending": 0, "delivered": 1, "dead": 2}

    await b.select("#b-action", "discard")
    await b.type("#b-host", host)
    await b.click('form.bar button[type=submit]')
    await b.click('form[action$="/deliveries/apply"] button[type=submit]')
    assert "Discarded 2 dead letters." in await b.text(".notice.done")
    assert await h.app[STORE].outbox_counts() == {"pending": 0, "delivered": 1, "dead": 0}

    # Discarding delivered callbacks is refused with the reason, and changes nothing.
    await b.select("#b-action", "discard")
    await b.select("#b-outcome", "delivered")
    await b.click('form.bar button[type=submit]')
    await b.wait_url("/deliveries/confirm")
    assert "dead letters only" in await b.text()
    assert await h.app[STORE].outbox_counts() == {"pending": 0, "delivered": 1, "dead": 0}


async def test_search_by_number_with_the_keyboard_then_a_timeline_of_20_attempts(make_harness: HarnessFactory,
                                                                                 chromium: Any) -> None:
    h, b = await _setup(make_harness, chromium, callbacks__retry_schedule_s=[0.01] * 19,
                        callbacks__breaker={"enabled": False})
    h.receiver.script["/flaky"] = [500] * 19 + [200]
    mid = await h.send(to="+15557770020", text="<b>hello</b> & bye", tag="<script>x</script>",
                       callbackUrl=f"{h.receiver.url.replace('http://', 'http://hook:hook-pw-999@')}/flaky")
    await h.send(to="+15557770021")
    # 19 retries, each picked up at the delivery engine's next poll (every 0.5 s): ~9.5 s.
    await wait_until(outbox_is(h.app[STORE], pending=0, delivered=1), timeout=30)

    await b.open("/admin/")
    focused = await b.js("return document.activeElement.id")
    assert focused == "q"  # the search box has the focus: type and press Enter
    el = await b.find("#q")
    await b.call(el.send_keys, "+1 (555) 777-0020", Keys.ENTER)
    await b.wait_url("q=%2B1+%28555%29+777-0020")
    rows = await b.find_all("main table tbody tr")
    assert len(rows) == 1 and mid in await b.call(lambda: rows[0].text)
    await b.screenshot("search")
    await b.click(f'a[href="/admin/ui/messages/{mid}"]')
    await b.wait_url(f"/admin/ui/messages/{mid}")
    attempts = await b.find_all("#ath + table tbody tr")
    assert len(attempts) == 20
    text = await b.text()
    assert text.count("http-error") == 19 and "delivered" in text
    # What the app sent, escaped; what shim sent to v2; secrets masked.
    assert "<script>x</script>" in text and "<b>hello</b> & bye" in text
    assert await b.js("return document.querySelectorAll('main script, main b').length") == 0
    v2 = json.loads(await b.text("#v2h ~ pre"))
    assert v2 == h.v2_requests[0], (v2, h.v2_requests[0])
    assert "hook-pw-999" not in await b.js("return document.documentElement.outerHTML")
    assert "hook:***@" in text
    await b.screenshot("timeline")

    # Page weight and first render, for the record (never asserted: machines are noisy).
    nav = await b.js("const n = performance.getEntriesByType('navigation')[0];"
                     "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                     "const r = performance.getEntriesByType('resource');"
                     "return {html: n.transferSize, htmlBody: n.decodedBodySize, fcp: p ? p.startTime : null,"
                     " resources: r.map(x => [x.name, x.transferSize, x.decodedBodySize])}")
    print(f"\ntimeline of 20 attempts: {nav}")
    assert nav["fcp"] is not None and all("/admin/ui/console.css" in r[0] for r in nav["resources"])

    # Keyboard: the first Tab reaches the skip link, which leads to the content.
    body = await b.find("body")
    await b.call(body.send_keys, Keys.TAB)
    assert await b.js("return document.activeElement.className") == "skip"


async def test_migration_and_health_pages_show_live_figures(make_harness: HarnessFactory, chromium: Any) -> None:
    h, b = await _setup(make_harness, chromium, users=[USER | {"native_events": {"url": "{receiver}/native"}}])
    for _ in range(2):
        await h.send(callbackUrl=f"{h.receiver.url}/ok", fallbackUrl=f"{h.receiver.url}/fb")
    body = {"applicationId": USER["application_id"], "from": "+15551230001", "to": ["+15551230003"], "text": "v2"}
    r = await h.session.post(f"{h.url}/api/v2/users/{USER['account_id']}/messages", json=body, headers=V2_AUTH)
    assert r.status == 202, await r.text()
    await wait_until(lambda: len(h.receiver.at("/ok")) == 2 and len(h.receiver.at("/native")) >= 1)
    await wait_until(outbox_is(h.app[STORE], pending=0))

    # Twelve earlier days of this app moving to v2 (as the replicas' flushes would have stored them).
    now = h.app[STORE].clock()
    await h.app[STORE].add_usage([
        row for i in range(12) for row in (
            ("u-test", "v1:message", 30 - 2 * i, now - (12 - i) * 86_400_000_000),
            ("u-test", "native:message", 3 * i, now - (12 - i) * 86_400_000_000)) if row[2]])

    await b.open("/admin/ui/migration")
    row = await b.text("main table tbody tr")
    assert row.split() == ["u-test", "live", "2", "230", "199", "46.4%", "3"], row
    text = await b.text()
    assert "field:fallbackUrl" in text and "still on v1" in text
    assert len(await b.find_all("svg rect.v1")) == 13 and len(await b.find_all("svg rect.native")) == 12
    titles = await b.js("return [...document.querySelectorAll('svg g title')].map(t => t.textContent)")
    assert titles[0].endswith(": 30 v1, 0 native") and titles[-1].endswith(": 2 v1, 1 native"), titles
    await b.screenshot("migration")

    await b.open("/admin/ui/health")
    cards = await b.text(".cards")
    assert "ok\nstore" in cards and "0\nqueue depth" in cards, cards
    rates = await b.text("main table")
    # Each v1 send: sending + sent events from the sandbox; delivered: one callback each.
    minute = next(r for r in rates.splitlines() if r.startswith("minute"))
    assert minute.split()[1] != "0" and int(minute.split()[3]) >= 2, rates
    await b.screenshot("health")


async def test_the_console_asks_for_the_admin_credentials(make_harness: HarnessFactory, chromium: Any) -> None:
    h, b = await _setup(make_harness, chromium)
    mid = await h.send()
    await b.login(None)
    await b.open(f"/admin/ui/messages/{mid}")
    # A 401 with a Basic challenge: a browser asks for credentials (headless shows nothing).
    assert mid not in await b.call(lambda: b.driver.page_source)
    await b.login("admin", "wrong-password")
    await b.open("/admin/ui/deliveries")
    assert "Dead letters" not in await b.call(lambda: b.driver.page_source)
    await b.login()
    await b.open(f"/admin/ui/messages/{mid}")
    assert mid in await b.text("h1")


async def test_every_field_is_labelled_and_every_page_has_one_heading(make_harness: HarnessFactory,
                                                                      chromium: Any) -> None:
    h, b = await _setup(make_harness, chromium)
    mid = await _dead_letter(h)
    unlabelled_js = ("return [...document.querySelectorAll('input:not([type=hidden]), select, button')]"
                     ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
                     " && !e.textContent.trim()).map(e => e.outerHTML)")
    for path in ("/admin/", f"/admin/ui/messages/{mid}", "/admin/ui/deliveries", "/admin/ui/migration",
                 "/admin/ui/health"):
        await b.open(path)
        assert await b.js(unlabelled_js) == [], path
        assert await b.js("return document.querySelectorAll('h1').length") == 1, path
        assert await b.js("return document.documentElement.lang") == "en"
        # Readable on a laptop: nothing wider than the window.
        assert await b.js("return document.documentElement.scrollWidth <= window.innerWidth"), path
