"""The console's Groups pages in headless Chromium: failed items and parks grouped by error,
a whole group retried or skipped after a confirmation, and a client's token seeing its own."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from daemon.supervisor import Supervisor
from tests.console import ACME_TOKEN, ADMIN_TOKEN, MARKS
from tests.console import base_url as _base
from tests.console import login as _login
from tests.console import shot as _shot
from tests.support import Broker, FakeShop, running, wait_until

pytestmark = MARKS

SHOP = '{"message":"sku rejected by the shop"}'


async def _fail_one_by_one(sup: Supervisor, amqp: Broker, orders: list[tuple[str, str]]) -> None:
    """Publish each order once the one before has failed: their failed_at are in this order."""
    for n, (client, order) in enumerate(orders, 1):
        await amqp.order(client, order)
        await wait_until(lambda: len(sup.ops.failed()) == n, 15,  # noqa: B023
                         f"{n} failed orders")


async def test_a_wave_of_thirty_failures_is_one_group_retried_once_from_the_console(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """An ERP refuses 30 orders of two clients alike: the Groups page shows them as one row
    of 30, and one "Retry all…" with its confirmation sends all 30 back to run."""
    wave = [("acme" if n % 2 else "globex", f"W{n:02}") for n in range(30)]
    shop.script.update({order: [422] for _, order in wave})
    base = _base(console_settings)
    async with running(console_settings) as sup:
        for client, order in wave:
            await amqp.order(client, order)
        await wait_until(lambda: len(sup.ops.failed()) == 30, 30, "thirty failed orders")
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.get_by_role("link", name="Groups").click()
        rows = page.get_by_role("row").filter(has_text="order.add_to_source")
        await expect(rows).to_have_count(1)
        await expect(rows.locator("td").first).to_have_text("30")
        await rows.get_by_role("button", name="Retry all…").click()
        await expect(page.get_by_role("heading", name="Retry 30 items of 2 clients?")) \
            .to_be_visible()
        await page.get_by_role("button", name="Yes, retry all").click()
        await expect(page.get_by_role("status")).to_contain_text("(30 items).")
        await wait_until(lambda: sorted(set(shop.skus())) == sorted(o for _, o in wave), 30,
                         "every order of the wave to run again")
        await wait_until(lambda: sup.ops.failed() == [], 15, "the failed store to empty")
    assert sorted(e["message_id"] for e in amqp.named("item.succeeded")) == sorted(
        o for _, o in wave)


async def test_admin_retries_a_group_of_failed_orders_and_skips_a_group_of_parks(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """Three orders of two clients refused alike are one row; "Retry all…" and a confirmation
    send all three back; on the parked tab the clients parked alike are skipped with a reason."""
    shop.script.update({"O1": [422], "O2": [422], "G1": [422]})
    shop.always.update({"X": 409, "Y": 409})
    base = _base(console_settings)
    async with running(console_settings) as sup:
        await _fail_one_by_one(sup, amqp, [("acme", "O1"), ("acme", "O2"), ("globex", "G1")])
        for client, sku in (("acme", "X"), ("globex", "Y")):
            await amqp.publish(client, sku)
        await wait_until(lambda: len(sup.ops.failed()) == 3 and len(sup.state.view.parked) == 2,
                         15, "three failed orders and two parks")
        page = await _login(browser, base, ADMIN_TOKEN)
        await page.get_by_role("link", name="Groups").click()
        await expect(page.get_by_role("heading", name="Failed items by error")).to_be_visible()
        row = page.get_by_role("row").filter(has_text="order.add_to_source")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text(f"POST /<client>/orders → HTTP 422: {SHOP}")
        await expect(row.get_by_role("link")).to_have_text(["acme", "globex"])
        await _shot(page, "groups-failed")
        await row.get_by_role("button", name="Retry all…").click()
        await expect(page.get_by_role("heading", name="Retry 3 items of 2 clients?")) \
            .to_be_visible()
        await page.get_by_role("button", name="Yes, retry all").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Sent back to run: O1 of acme, O2 of acme, G1 of globex (3 items).")
        await expect(page.get_by_text("No failed items.")).to_be_visible()
        await page.get_by_role("link", name="parked clients").click()
        row = page.get_by_role("row").filter(has_text="product.sync")
        await expect(row).to_contain_text(f"PUT /<client>/products/<id> → HTTP 409: {SHOP}")
        await row.get_by_role("button", name="Skip all…").click()
        await expect(page.get_by_role("heading", name="Skip 2 parked items of 2 clients?")) \
            .to_be_visible()
        await page.get_by_label("Reason (optional)").fill("discontinued products")
        await page.get_by_role("button", name="Yes, skip all").click()
        await expect(page.get_by_role("status")).to_contain_text(
            "Skipped (kept in the archive): ")
        await expect(page.get_by_text("No parked clients.")).to_be_visible()
        await wait_until(lambda: sorted(shop.skus()).count("G1") == 2, 15, "G1 to run again")
    assert sorted((e["client_id"], e["message_id"], e["actor"], e["reason"])
                  for e in amqp.named("item.skipped")) == [
        ("acme", "X", "admin", "discontinued products"),
        ("globex", "Y", "admin", "discontinued products")]
    assert sorted(e["message_id"] for e in amqp.named("item.succeeded")) == ["G1", "O1", "O2"]


async def test_a_client_sees_and_retries_only_its_own_items_of_a_group(
    console_settings, amqp: Broker, shop: FakeShop, browser: Browser
):
    """acme's token: the group counts acme's two orders, names no other client, and retrying
    it leaves globex's order failed; globex's group address is not found."""
    shop.script.update({"O1": [422], "O2": [422]})
    shop.always["G1"] = 422
    base = _base(console_settings)
    async with running(console_settings) as sup:
        await _fail_one_by_one(sup, amqp, [("acme", "O1"), ("acme", "O2"), ("globex", "G1")])
        page = await _login(browser, base, ACME_TOKEN)
        await page.goto(base + "/groups/failed")
        row = page.get_by_role("row").filter(has_text="order.add_to_source")
        await expect(row.locator("td").first).to_have_text("2")
        await expect(row.get_by_role("link")).to_have_text(["acme"])
        await expect(page.locator("main")).not_to_contain_text("globex")
        await row.get_by_role("button", name="Retry all…").click()
        await expect(page.get_by_role("heading", name="Retry 2 items of 1 client?")) \
            .to_be_visible()
        await page.get_by_role("button", name="Yes, retry all").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Sent back to run: O1 of acme, O2 of acme (2 items).")
        answer = await page.goto(base + "/groups/failed?client_id=globex")
        assert answer is not None
        assert answer.status == 404
        await wait_until(lambda: sorted(sup.state.view.failed) == ["G1"], 15,
                         "only globex's order to stay failed")
