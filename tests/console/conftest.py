"""A real browser for the console's tests: Debian's headless Chromium driven by Selenium through the
system ChromeDriver. Selenium is synchronous and shim runs in the test's own event loop, so every
browser call goes through a thread (``Browser``) while the loop keeps serving."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shim.basic_auth import basic_header

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ADMIN = {"username": "admin", "password": "adm1n-pass-long"}
# Where the README's screenshots come from: SHIM_SCREENSHOTS=docs/console make test (or pytest tests/console).
SCREENSHOTS = os.environ.get("SHIM_SCREENSHOTS")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: install chromium and chromium-driver (.ci/chromium.sh)")
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (.ci/chromium.sh does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # No network but loopback: Chromium's own background traffic off (it would be refused anyway).
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--window-size=1366,900", "--hide-scrollbars",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    # A form submitted by a click or Enter loads its page after the call returns: finding an
    # element waits for it to appear (and ``Browser.wait_url`` for the new page).
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


class Browser:
    """One page of the shared Chromium, awaited from async tests."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def login(self, username: str | None = ADMIN["username"], password: str = ADMIN["password"]) -> None:
        """Basic auth for every request the page makes (what a person types in the browser's prompt)."""
        headers = {"Authorization": basic_header(username, password)} if username else {}
        await self.call(self.driver.execute_cdp_cmd, "Network.enable", {})
        await self.call(self.driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": headers})

    async def open(self, path: str) -> None:
        await self.call(self.driver.get, self.base + path)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    async def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return await self.call(self.driver.find_element, By.CSS_SELECTOR, css)

    async def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(await self.call(self.driver.find_elements, By.CSS_SELECTOR, css))

    async def text(self, css: str = "main") -> str:
        el = await self.find(css)
        return str(await self.call(lambda: el.text))

    async def click(self, css: str) -> None:
        el = await self.find(css)
        await self.call(el.click)

    async def type(self, css: str, text: str) -> None:
        el = await self.find(css)
        await self.call(el.clear)
        await self.call(el.send_keys, text)

    async def wait_url(self, needle: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in await self.call(lambda: self.driver.current_url):
            if time.monotonic() > deadline:
                raise AssertionError(f"never navigated to {needle!r}: at {self.driver.current_url}")
            await asyncio.sleep(0.05)

    async def select(self, css: str, value: str) -> None:
        from selenium.webdriver.support.select import Select

        el = await self.find(css)
        await self.call(lambda: Select(el).select_by_value(value))

    @property
    def path(self) -> str:
        return str(self.driver.current_url).removeprefix(self.base)

    async def wait_text(self, needle: str, css: str = "main", timeout: float = 10.0) -> str:
        """Reload the page until ``needle`` shows (state that changes behind the page)."""
        deadline = time.monotonic() + timeout
        while True:
            text = await self.text(css)
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never showed in {css}: {text[:2000]}")
            await asyncio.sleep(0.1)
            await self.call(self.driver.refresh)

    async def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            out = Path(SCREENSHOTS)
            await self.call(lambda: out.mkdir(parents=True, exist_ok=True))
            # The window's height includes the browser's own frame: what the page gets is innerHeight.
            height = await self.js("return Math.min(document.documentElement.scrollHeight, 2000)"
                                   " + window.outerHeight - window.innerHeight")
            await self.call(self.driver.set_window_size, 1366, max(700, int(height)))
            await self.call(self.driver.save_screenshot, str(out / f"{name}.png"))
            await self.call(self.driver.set_window_size, 1366, 900)
