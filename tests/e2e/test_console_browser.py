"""The web console in headless Chromium (Debian's), driven by Playwright, against a real daemon
(tests/console.py and tests/e2e/conftest.py: what the console's browser tests share)."""

from __future__ import annotations

from urllib.parse import quote

from playwright.async_api import Browser, Page, expect

from tests.console import ACME_TOKEN, ADMIN_TOKEN, MARKS
from tests.console import base_url as _base
from tests.console import login as _login
from tests.console import shot as _shot
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    free_port,
    running,
    settings_for,
    stays,
    wait_until,
)

pytestmark = MARKS


async def test_admin_retries_a_parked_client_then_skips_an_item_with_a_reason(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """Log in, see acme parked, retry (it succeeds), skip the next failure with a reason."""
    shop.script["X"] = [422]
    shop.always["Y"] = 422
    base = _base(console_settings)
    async with running(console_settings):
        for sku in ("X", "Y", "Z"):
            await amqp.publish("acme", sku)
        await amqp.wait_event("client.parked", "acme")
        page = await _login(browser, base, ADMIN_TOKEN)
        row = page.get_by_role("row").filter(has_text="acme Ltd")
        await expect(row).to_contain_text("parked")
        await expect(row).to_contain_text("HTTP 422")
        await _shot(page, "clients")
        await page.get_by_role("link", name="acme", exact=True).click()
        await expect(page.get_by_role("heading", name="Parked item")).to_be_visible()
        await expect(page.locator(".error")).to_contain_text("PUT /acme/products/X → HTTP 422")
        await expect(page.locator("pre.payload").first).to_contain_text('"sku": "X"')
        await expect(page.get_by_text("2 items wait behind the parked item")).to_be_visible()
        await _shot(page, "client-parked")
        await page.get_by_role("button", name="Retry…").click()
        await expect(page.get_by_role("heading", name="Retry item of acme?")).to_be_visible()
        await page.get_by_role("button", name="Yes, retry").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Retried X: it succeeded. acme runs again.")
        await amqp.wait_event("client.parked", "acme", count=2)
        await page.reload()
        await expect(page.locator(".error")).to_contain_text("/Y → HTTP 422")
        await page.get_by_role("button", name="Skip…").click()
        await page.get_by_label("Reason (optional)").fill("bad price, fixed in the ERP")
        await _shot(page, "confirm-skip")
        await page.get_by_role("button", name="Yes, skip").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Skipped Y (kept in the archive). acme runs again.")
        await expect(page.locator("h1 .state")).to_have_text("running")
        await wait_until(lambda: "Z" in shop.skus("acme"), 15, "acme to run Z")
    [skipped] = amqp.named("item.skipped", "acme")
    assert (skipped["message_id"], skipped["actor"], skipped["reason"]) == (
        "Y", "admin", "bad price, fixed in the ERP")
    [retried] = [e for e in amqp.named("client.resumed", "acme") if e["how"] == "retry"]
    assert retried["actor"] == "admin"
    assert shop.skus("acme") == ["X", "X", "Y", "Z"]


async def test_a_client_sees_its_own_queue_and_no_trace_of_others(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    shop.always["G1"] = 422
    for order in ("A-1", "G-1"):
        shop.always[order] = 422
    base = _base(console_settings)
    async with running(console_settings):
        await amqp.publish("globex", "G1")
        await amqp.order("acme", "A-1")
        await amqp.order("globex", "G-1")
        await amqp.wait_event("client.parked", "globex")
        await amqp.wait_event("item.failed", "globex")
        await amqp.wait_event("item.failed", "acme")
        page = await _login(browser, base, ACME_TOKEN)
        await expect(page.get_by_role("heading", name="acme")).to_be_visible()
        seen = [await page.content()]
        for path in ("/clients", "/clients?state=parked", "/failed", "/unrouted"):
            await page.goto(base + path)
            seen.append(await page.content())
        await expect(page.get_by_role("heading", name="Unrouted items")).to_be_visible()
        await page.goto(base + "/failed")
        await expect(page.get_by_role("row").filter(has_text="A-1")).to_have_count(1)
        await _shot(page, "failed-as-client")
        response = await page.goto(base + "/clients/globex")
        assert response is not None
        assert response.status == 404
        seen.append(await page.content())
        response = await page.goto(base + "/failed?client_id=globex")
        assert response is not None
        assert response.status == 404
    assert not [html for html in seen if "globex" in html.replace("client 'globex'", "")]
    assert "client 'globex' is not registered" in seen[-1]


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    base = _base(console_settings)
    async with running(console_settings) as sup:
        page = await _login(browser, base, ADMIN_TOKEN)
        await expect(page.get_by_role("heading", name="Clients")).to_be_visible()
        [cookie] = [c for c in await page.context.cookies() if c["name"] == "s2s_session"]
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        forms: list[dict[str, str | float | bool]] = [{}, {"csrf": "forged"}]
        for form in forms:
            refused = await page.context.request.post(base + "/clients/acme/pause", form=form)
            assert refused.status == 403
            assert "did not come from your console session" in await refused.text()
        await stays(lambda: not sup.consumers["acme"].paused, 0.5, "acme was paused")
        await page.goto(base + "/clients/acme")
        await page.get_by_role("button", name="Pause").click()
        await expect(page.get_by_role("status")).to_have_text(
            "acme is paused: it stops after its current item.")
        await page.get_by_role("button", name="Log out").click()
        await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        response = await page.goto(base + "/clients")
        assert response is not None
        assert response.url.endswith("/login")


async def test_failed_items_are_filtered_and_a_selection_is_retried_or_skipped(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    for order in ("O1", "O2", "O3"):
        shop.always[order] = 422
    base = _base(console_settings)
    async with running(console_settings) as sup:
        for order in ("O1", "O2", "O3"):
            await amqp.order("acme", order)
        await amqp.order("globex", "G9")
        await wait_until(lambda: len(sup.ops.failed()) == 3, 15, "three failed orders")
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/failed")
        await page.get_by_label("Client").select_option("acme")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.get_by_role("checkbox")).to_have_count(3)
        await _shot(page, "failed")
        for order in ("O1", "O2"):
            shop.always.pop(order)
            await page.get_by_label(f"select {order}").check()
        await page.get_by_role("button", name="Retry selected…").click()
        await expect(page.get_by_role("heading", name="Retry 2 items?")).to_be_visible()
        await page.get_by_role("button", name="Yes, retry").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Sent back to run: O1, O2 (2 items).")
        await wait_until(lambda: shop.skus("acme").count("O1") == 2
                         and shop.skus("acme").count("O2") == 2, 15, "O1 and O2 to run again")
        await page.reload()
        await expect(page.get_by_role("checkbox")).to_have_count(1)
        await page.get_by_role("button", name="Skip…").click()
        await page.get_by_role("button", name="Yes, skip").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Skipped (kept in the archive): O3 (1 item).")
        await expect(page.get_by_text("No failed items for acme.")).to_be_visible()
    assert sup.ops.failed() == []


async def test_unrouted_items_are_replayed_in_order_after_registering_the_client(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    base = _base(console_settings)
    async with running(console_settings) as sup:
        for n in range(3):
            await amqp.publish("newco", type_="system.noop", payload={}, message_id=f"N{n}")
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/unrouted")
        await expect(page.get_by_role("heading", name="newco (3 items)")).to_be_visible()
        await _shot(page, "unrouted")
        await page.get_by_role("button", name="Register newco and replay").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Replayed 3 items to newco, in their original order.")
        await expect(page.get_by_text("No unrouted items.")).to_be_visible()
        await amqp.wait_event("item.succeeded", "newco", count=3)
        assert "newco" in sup.consumers
    assert [e["message_id"] for e in amqp.named("item.succeeded", "newco")] == ["N0", "N1", "N2"]


async def test_an_item_parked_without_a_message_id_is_skipped_from_the_console(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """Hole 10: the skip form of an item with no message_id used to send the text 'None'."""
    base = _base(console_settings)
    async with running(console_settings):
        await amqp.publish_raw(b'{"sku": "N", "product": {}}', "acme",
                               content_type="application/json", type="product.sync",
                               headers={"client_id": "acme"})
        await amqp.publish("acme", "AFTER")
        [parked] = await amqp.wait_event("client.parked", "acme")
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/clients/acme")
        await expect(page.locator(".error")).to_have_text("message has no message_id property")
        assert 'value="None"' not in await page.content(), "the form names the item 'None'"
        await expect(page.get_by_text("none (the producer sent no message_id)")).to_be_visible()
        await page.get_by_role("button", name="Skip…").click()
        await page.get_by_role("button", name="Yes, skip").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Skipped the item (it has no message id) (kept in the archive). acme runs again.")
        await wait_until(lambda: "AFTER" in shop.skus("acme"), 15, "the next item to run")
    assert parked["message_id"] is None


async def test_an_unrouted_routing_key_that_is_not_a_client_id_offers_no_action(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """Issue 12, hole 4: a producer's routing key `../clients/acme/pause?` once became a
    "Register … and replay" form posting to /clients/acme/pause with the admin's CSRF
    token. It is shown as text, with no form; pressing every button offered pauses nothing."""
    base = _base(console_settings)
    async with running(console_settings) as sup:
        await amqp.publish_raw(b"{}", "../clients/acme/pause?", content_type="application/json",
                               type="system.noop", message_id="EVIL",
                               headers={"client_id": "../clients/acme/pause?"})
        await amqp.publish("newco", type_="system.noop", payload={}, message_id="N0")
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/unrouted")
        await expect(page.get_by_role("heading", name="../clients/acme/pause? (1 item)")
                     ).to_be_visible()
        forms = page.locator("main form")
        actions = [await forms.nth(n).evaluate("f => new URL(f.action).pathname")
                   for n in range(await forms.count())]
        assert actions == ["/unrouted/newco/replay"]
        await expect(page.get_by_text("is not a valid client id")).to_be_visible()
        buttons = page.locator("main form button")
        labels = await buttons.all_inner_texts()
        assert labels == ["Register newco and replay"]
        for n in range(await buttons.count()):
            await page.goto(base + "/unrouted")
            await page.locator("main form button").nth(n).click()
            await expect(page.get_by_role("status")).to_be_visible()
        await amqp.wait_event("item.succeeded", "newco")
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        crafted = await page.request.post(
            f"{base}/unrouted/{quote('../clients/acme/pause?', safe='')}/replay",
            form={"csrf": csrf or ""}, max_redirects=0)
        paused = sup.state.view.paused
    assert crafted.status == 404
    assert "acme" not in paused
    assert amqp.named("client.paused") == []


async def test_the_unrouted_page_shows_the_oldest_hundred_and_replay_moves_them_all(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """Issue 12, hole 11: the page reads no more than it shows, says so, and replaying
    the client still moves every one of its items in order."""
    base = _base(console_settings)
    ids = [f"N{n:03d}" for n in range(101)]
    async with running(console_settings):
        for message_id in ids:
            await amqp.publish("newco", type_="system.noop", payload={}, message_id=message_id)
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/unrouted")
        await expect(page.get_by_text("Showing the oldest 100 of 101 unrouted items")
                     ).to_be_visible()
        await expect(page.get_by_role("heading", name="newco (100 items)")).to_be_visible()
        await page.get_by_role("button", name="Register newco and replay").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Replayed 101 items to newco, in their original order.")
        await amqp.wait_event("item.succeeded", "newco", count=101)
    assert [e["message_id"] for e in amqp.named("item.succeeded", "newco")] == ids


async def test_the_clients_page_pages_by_id_and_keeps_the_state_filter(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, browser: Browser
):
    """Issue 13: "Next page" walks every client once in order, a filter stays on across
    pages, "First page" goes back, and a bad limit is a page naming it."""
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex", "initech", "umbrella", "wayne"]))
    settings = settings_for(prefix, tmp_path, clients_file=path, http_port=free_port(),
                            admin_token=ADMIN_TOKEN, depth_refresh=0.1)
    shop.script["X"] = [422]
    base = _base(settings)
    async with running(settings) as sup:
        await amqp.publish("globex", "X")
        await amqp.wait_event("client.parked", "globex")
        await sup.depth_cache.refreshed()
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.goto(base + "/clients?limit=2")
        pages = [await _client_rows(page)]
        while await page.get_by_role("link", name="Next page").count():
            await page.get_by_role("link", name="Next page").click()
            pages.append(await _client_rows(page))
        await page.get_by_role("link", name="running (4)").click()
        assert page.url == base + "/clients?state=running"
        await page.goto(base + "/clients?state=running&limit=2")
        running_pages = [await _client_rows(page)]
        await page.get_by_role("link", name="Next page").click()
        running_url = page.url
        running_pages.append(await _client_rows(page))
        await expect(page.get_by_role("link", name="Next page")).to_have_count(0)
        await page.get_by_role("link", name="First page").click()
        first_url = page.url
        response = await page.goto(base + "/clients?limit=0")
        assert response is not None
        refused = (response.status, await page.locator("main").inner_text())
    assert pages == [[("acme", "running", "0"), ("globex", "parked", "0")],
                     [("initech", "running", "0"), ("umbrella", "running", "0")],
                     [("wayne", "running", "0")]]
    assert running_pages == [[("acme", "running", "0"), ("initech", "running", "0")],
                             [("umbrella", "running", "0"), ("wayne", "running", "0")]]
    assert running_url == base + "/clients?state=running&limit=2&after=initech"
    assert first_url == base + "/clients?state=running&limit=2"
    assert refused[0] == 400
    assert "limit must be a whole number from 1 to 1000." in refused[1]


async def _client_rows(page: Page) -> list[tuple[str, str, str]]:
    """(client id, state, items waiting) of each row of the clients table."""
    rows = page.locator("table tbody tr")
    return [(await row.locator("td").nth(0).locator("a").inner_text(),
             await row.locator("td").nth(1).inner_text(),
             await row.locator("td").nth(2).inner_text()) for row in await rows.all()]
