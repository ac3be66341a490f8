"""The console's audit trail in headless Chromium, against a real daemon (issue 16).

Set S2SQ_SCREENSHOTS=docs/console to save docs/console/audit.png.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.console import ACME_TOKEN, ADMIN_TOKEN, MARKS
from tests.console import base_url as _base
from tests.console import login as _login
from tests.console import shot as _shot
from tests.support import Broker, FakeShop, running, wait_until

pytestmark = MARKS

ROW = ("When (UTC)", "Who", "Via", "Action", "Client", "Item", "Reason", "Outcome")


async def test_a_retry_from_the_console_appears_on_the_audit_page_with_who_and_how(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """The admin retries acme's parked item; /audit lists it first: admin, console, retry,
    acme, X, the reason, succeeded; acme's page shows it among its recent actions."""
    shop.script["X"] = [422]
    base = _base(console_settings)
    async with running(console_settings) as sup:
        await amqp.publish("acme", "X")
        await amqp.wait_event("client.parked", "acme")
        await amqp.control(action="pause", client_id="globex", actor="ops-bot")
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/clients/acme")
        await page.get_by_label("Reason (optional)").first.fill("SKU fixed in the ERP")
        await page.get_by_role("button", name="Retry…").click()
        await page.get_by_role("button", name="Yes, retry").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Retried X: it succeeded. acme runs again.")
        await wait_until(lambda: len(sup.state.view.audit) == 2, 15, "two audit entries")
        await page.get_by_role("link", name="Audit").click()
        await expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
        rows = page.locator("table.audit tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.nth(0).locator("td").nth(1)).to_have_text("admin")
        cells = [await c.inner_text() for c in await rows.nth(0).locator("td").all()]
        await _shot(page, "audit")
        await page.get_by_label("Actor").fill("ops-bot")
        await page.get_by_role("button", name="Filter").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("globex")
        await page.goto(base + "/clients/acme")
        await expect(page.get_by_role("heading", name="Recent admin actions")).to_be_visible()
        recent = page.locator("table.audit tbody tr")
        await expect(recent).to_have_count(1)
        await expect(recent.first).to_contain_text("succeeded")
    assert cells[1:] == ["admin", "console", "retry", "acme", "X", "SKU fixed in the ERP",
                         "succeeded"]


async def test_a_client_token_sees_only_its_own_clients_entries(
    console_settings, amqp: Broker, browser: Browser
):
    """acme's token: /audit shows acme's entries, none of globex's; asking for globex is
    "not found"."""
    base = _base(console_settings)
    async with running(console_settings) as sup:
        for client in ("acme", "globex"):
            await amqp.control(action="pause", client_id=client, actor="ops-bot")
        await wait_until(lambda: len(sup.state.view.audit) == 2, 15, "two audit entries")
        page = await _login(browser, base, ACME_TOKEN)
        await expect(page.get_by_role("heading", name="acme")).to_be_visible()
        await page.get_by_role("link", name="Audit").click()
        rows = page.locator("table.audit tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("acme")
        content = await page.content()
        response = await page.goto(base + "/audit?client_id=globex")
        assert response is not None
        status = response.status
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert "globex" not in content
    assert status == 404


@pytest.mark.parametrize("query", ["limit=0", "before=last"])
async def test_a_bad_address_is_a_400_page_naming_the_parameter(
    console_settings, amqp: Broker, browser: Browser, query
):
    base = _base(console_settings)
    async with running(console_settings):
        page = await _login(browser, base, ADMIN_TOKEN)
        await expect(page.get_by_role("heading", name="Clients")).to_be_visible()
        response = await page.goto(f"{base}/audit?{query}")
        assert response is not None
        status = response.status
        text = await page.locator("main").inner_text()
    assert status == 400
    assert ("limit must be a whole number from 1 to 1000" in text if query.startswith("limit")
            else "before must be an entry's id" in text)
