"""The console's live updates in headless Chromium: pages change in place when events say so."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from playwright.async_api import Browser, Page, Route, expect

from tests.console import ACME_TOKEN, ADMIN_TOKEN, MARKS
from tests.console import base_url as _base
from tests.support import ROOT, Broker, FakeShop, running

pytestmark = MARKS


async def _cli(settings: Any, *argv: str) -> tuple[int, str]:
    """`s2s-queue ARGV` in its own process, as an operator types it: exit code, stdout."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("S2SQ_")}
    env.update(S2SQ_PREFIX=settings.prefix, S2SQ_AMQP_URL=settings.amqp_url.get_secret_value())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *argv, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def _login(browser: Browser, base: str, token: str, *,
                 javascript: bool = True) -> tuple[Page, list[str]]:
    """A logged-in page, and its script errors and failed requests (filled as they come;
    Chromium's own /favicon.ico, which the daemon has not, aside)."""
    context = await browser.new_context(java_script_enabled=javascript)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    await page.goto(base + "/login")
    await page.get_by_label("Your access token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    return page, errors


async def _live(page: Page) -> None:
    """Wait until the page's event stream is open, then mark the document: a reload loses
    the mark, so a page that still has it was changed in place."""
    await expect(page.locator("html[data-live=on]")).to_have_count(1)
    await page.evaluate("window.notReloaded = true")


async def _not_reloaded(page: Page) -> bool:
    return bool(await page.evaluate("window.notReloaded === true"))


async def _park_acme(amqp: Broker, shop: FakeShop) -> None:
    """acme parks on X (HTTP 422 forever); Y waits behind it."""
    shop.always["X"] = 422
    for sku in ("X", "Y"):
        await amqp.publish("acme", sku)
    await amqp.wait_event("client.parked", "acme")


async def test_a_parked_clients_page_shows_it_running_once_retried_from_the_cli(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """acme's own page, open in acme's console, loses its parked box and says running when
    an admin retries the item from the CLI and it succeeds; no reload, no error."""
    async with running(console_settings):
        await _park_acme(amqp, shop)
        page, errors = await _login(browser, _base(console_settings), ACME_TOKEN)
        await expect(page.get_by_role("heading", name="Parked item")).to_be_visible()
        await expect(page.locator("h1 .state")).to_have_text("parked")
        await _live(page)
        shop.always.pop("X")  # the shop is fixed
        code, out = await _cli(console_settings, "retry", "acme", "--message-id", "X")
        assert (code, '"outcome": "succeeded"' in out) == (0, True), out
        await expect(page.get_by_role("heading", name="Parked item")).to_have_count(0)
        await expect(page.locator("h1 .state")).to_have_text("running")
        assert await _not_reloaded(page)
        assert errors == []


async def test_an_event_between_the_pages_rendering_and_its_stream_opening_is_not_missed(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """The page's event stream is held back (a route) while acme is retried from the CLI:
    once it opens, from a second before the page was rendered (`?since=`), the page still
    learns of the retry and shows acme running. Before, it opened at the next event and
    stayed on "parked"."""
    async with running(console_settings):
        await _park_acme(amqp, shop)
        asked, release = asyncio.Event(), asyncio.Event()

        async def hold(route: Route) -> None:
            asked.set()
            await release.wait()
            await route.continue_()

        context = await browser.new_context()
        await context.route("**/api/v1/events/stream*", hold)
        page = await context.new_page()
        await page.goto(_base(console_settings) + "/login")
        await page.get_by_label("Your access token").fill(ACME_TOKEN)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.locator("h1 .state")).to_have_text("parked")
        await asyncio.wait_for(asked.wait(), 10)
        await page.evaluate("window.notReloaded = true")
        shop.always.pop("X")
        code, out = await _cli(console_settings, "retry", "acme", "--message-id", "X")
        assert (code, '"outcome": "succeeded"' in out) == (0, True), out
        await amqp.wait_event("client.resumed", "acme")
        release.set()
        await expect(page.locator("html[data-live=on]")).to_have_count(1)
        await expect(page.locator("h1 .state")).to_have_text("running")
        assert await _not_reloaded(page)


async def test_the_clients_page_follows_a_retry_and_keeps_the_last_actions_outcome(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """The admin pauses globex in the console, then acme is retried from the CLI: acme's row
    turns from parked to running in place, and the pause's outcome stays."""
    async with running(console_settings):
        await _park_acme(amqp, shop)
        base = _base(console_settings)
        page, errors = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/clients/globex")
        await page.get_by_role("button", name="Pause").click()
        await expect(page.get_by_role("status")).to_have_text(
            "globex is paused: it stops after its current item.")
        await page.goto(base + "/clients")
        row = page.get_by_role("row").filter(has_text="acme Ltd")
        await expect(row).to_contain_text("parked")
        await expect(row).to_contain_text("HTTP 422")
        await page.evaluate("document.querySelector('main').insertAdjacentHTML('afterbegin',"
                            " '<div class=\"flash flash-ok\" role=\"status\">kept</div>')")
        await _live(page)
        shop.always.pop("X")
        code, out = await _cli(console_settings, "retry", "acme", "--reason", "shop is back")
        assert (code, '"outcome": "succeeded"' in out) == (0, True), out
        await expect(row).to_contain_text("running")
        await expect(row).not_to_contain_text("HTTP 422")
        await expect(page.get_by_role("status")).to_have_text("kept")
        assert await _not_reloaded(page)
        assert errors == []


async def test_with_javascript_off_the_pages_work_as_before(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """No script: the parked page is whole, and a skip through its form ends on acme running."""
    async with running(console_settings):
        await _park_acme(amqp, shop)
        page, _ = await _login(browser, _base(console_settings), ADMIN_TOKEN, javascript=False)
        await page.goto(_base(console_settings) + "/clients/acme")
        await expect(page.locator(".error")).to_contain_text("HTTP 422")
        await page.get_by_role("button", name="Skip…").click()
        await page.get_by_role("button", name="Yes, skip").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Skipped X (kept in the archive). acme runs again.")
        await expect(page.locator("h1 .state")).to_have_text("running")
        await expect(page.locator("html[data-live]")).to_have_count(0)


async def test_the_script_is_served_by_the_daemon_and_no_inline_script_may_run(
    console_settings, amqp: Broker, browser: Browser
):
    """`/static/live.js` as JavaScript; the pages' policy allows scripts from the daemon
    only, so an injected inline script would not run."""
    async with running(console_settings):
        base = _base(console_settings)
        page, _ = await _login(browser, base, ADMIN_TOKEN)
        response = await page.goto(base + "/clients")
        assert response is not None
        policy = response.headers["content-security-policy"]
        script = await page.context.request.get(base + "/static/live.js")
        body = await script.text()
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy.split("style-src")[0]
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert 'new EventSource("/api/v1/events/stream" +' in body  # and ?since=
    assert len(body.splitlines()) < 60
