"""A client's history tab in headless Chromium (Debian's), driven by Playwright, on a real daemon.

Set S2SQ_SCREENSHOTS=docs/console to save docs/console/history.png.
"""

from __future__ import annotations

import re

from playwright.async_api import Browser, expect

from daemon.operations.history import HistoryQuery
from tests.console import ACME_TOKEN, ADMIN_TOKEN, MARKS, SHOTS
from tests.console import base_url as _base
from tests.console import login as _login
from tests.support import (
    Broker,
    FakeShop,
    running,
    wait_until,
)

pytestmark = MARKS


async def test_the_history_tab_lists_what_ran_newest_first_and_only_to_whom_it_may(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """Three items succeed, one parks and is skipped: the admin sees the five outcomes newest
    first on acme's history tab; acme's token sees its own tab, and globex's is not found."""
    shop.always["P-4"] = 422
    async with running(console_settings) as sup:
        for sku in ("S-1", "S-2", "S-3", "P-4"):
            await amqp.publish("acme", sku)
        await amqp.wait_event("client.parked", "acme")
        assert (await amqp.control(action="skip", client_id="acme", reason="bad data"))["ok"]
        await wait_until(
            lambda: len(sup.ops.history("acme", HistoryQuery())["items"]) == 5, 15,
            "five outcomes in acme's history")
        page = await _login(browser, _base(console_settings), ADMIN_TOKEN)
        await page.get_by_role("link", name="acme", exact=True).click()
        await page.get_by_role("link", name="History").click()
        await expect(page.get_by_role("heading", name="What ran, newest first")).to_be_visible()
        rows = page.locator("tbody tr")
        await expect(rows).to_have_count(5)
        expected = [("P-4", "skipped"), ("P-4", "failed"), ("S-3", "succeeded"),
                    ("S-2", "succeeded"), ("S-1", "succeeded")]
        for n, (message_id, outcome) in enumerate(expected):
            await expect(rows.nth(n).locator("td").nth(1)).to_have_text(message_id)
            await expect(rows.nth(n).locator("td").nth(3)).to_have_text(outcome)
        await expect(rows.nth(1).locator("td").nth(6)).to_contain_text(
            "PUT /acme/products/P-4 → HTTP 422")
        await expect(rows.nth(2).locator("td").nth(5)).to_have_text(re.compile(r"^\d+\.\d ms$"))
        if SHOTS:
            await page.screenshot(path=f"{SHOTS}/history.png", full_page=True)
        await page.goto(_base(console_settings) + "/clients/acme/history?limit=2")
        await page.get_by_role("link", name="Older").click()
        await expect(rows.locator("td:nth-child(2)")).to_have_text(["S-3", "S-2"])
        await page.get_by_role("link", name="Older").click()
        await expect(rows.locator("td:nth-child(2)")).to_have_text(["S-1"])
        await expect(page.get_by_role("link", name="Older")).to_have_count(0)
        await page.get_by_role("link", name="Newest").click()
        await expect(rows.locator("td:nth-child(2)")).to_have_text(["P-4", "P-4"])
        await page.goto(_base(console_settings) + "/clients/acme/history?before=yesterday")
        await expect(page.get_by_text("before must be the next cursor of a previous page,"
                                      " like 1234-5.")).to_be_visible()

        own = await _login(browser, _base(console_settings), ACME_TOKEN)
        await own.get_by_role("link", name="History").click()
        await expect(own.locator("tbody tr")).to_have_count(5)
        answer = await own.goto(_base(console_settings) + "/clients/globex/history")
        assert answer is not None
        assert answer.status == 404
        await expect(own.get_by_role("heading", name="Not found")).to_be_visible()
        await expect(own.get_by_text("client 'globex' is not registered")).to_be_visible()
