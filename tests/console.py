"""What the console's browser tests share: Debian's chromium, headless, driven by Playwright;
the daemon's settings with a console token for acme; a logged-in page; screenshots.

Set S2SQ_SCREENSHOTS=docs/console to save the screenshots committed under docs/. A test
module sets `pytestmark = MARKS`; the fixtures `browser` and `console_settings` are in
tests/e2e/conftest.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MARKS = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                       reason="Debian's chromium is not installed (make test installs it)"),
]
ADMIN_TOKEN = "admin-token"
ACME_TOKEN = "acme-console-token"
SHOTS = os.environ.get("S2SQ_SCREENSHOTS")  # Playwright makes the folder


async def login(browser: Browser, base: str, token: str, *, height: int = 900) -> Page:
    """A page logged in with `token`, on /clients or the client's own page."""
    page = await (await browser.new_context(viewport={"width": 1200, "height": height})
                  ).new_page()
    await page.goto(base + "/clients")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await page.get_by_label("Your access token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    return page


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)


def base_url(settings: Any) -> str:
    return f"http://127.0.0.1:{settings.http_port}"
