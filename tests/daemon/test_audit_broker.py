"""The audit trail on a running daemon: every face's actions, refused ones, paging, CSV, and
a restart after a snapshot (SPEC section 9, issue 16)."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import aiohttp
import pytest

from tests.daemon.test_cli_broker import cli
from tests.support import (
    AMQP_URL,
    Broker,
    FakeShop,
    clients_toml,
    free_port,
    running,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)
ADMIN = {"Authorization": "Bearer admin-token"}
SHOWN = ("actor", "via", "action", "client_id", "message_id", "reason", "outcome")


@pytest.fixture
def audit_settings(prefix, tmp_path, shop: FakeShop):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex"]))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port())


async def _get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(
        base + path, headers=ADMIN if headers is None else headers
    ) as response:
        return response.status, await response.json()


async def _post(base: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        base + path, headers=ADMIN, json=body
    ) as response:
        return response.status, await response.json()


async def _console_retry(base: str, client_id: str, message_id: str, reason: str) -> int:
    """Log in to the console as the admin, confirm a retry: the status of the confirmation."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(f"{base}/login") as form:
            csrf = _csrf(await form.text())
        async with http.post(f"{base}/login", data={"csrf": csrf, "token": "admin-token"}):
            pass
        async with http.get(f"{base}/clients/{client_id}") as page:
            csrf = _csrf(await page.text())
        async with http.post(f"{base}/clients/{client_id}/retry", allow_redirects=False,
                             data={"csrf": csrf, "confirm": "yes", "message_id": message_id,
                                   "reason": reason}) as done:
            return done.status


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page carries a CSRF token"
    return found.group(1)


def _shown(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(e[k] for k in SHOWN) for e in entries]


async def test_every_face_leaves_one_entry_with_who_how_and_the_outcome(
    audit_settings, amqp: Broker, shop: FakeShop
):
    """Control, the CLI, the API and the console each leave one entry per action, refused ones
    with their error, newest first."""
    shop.script["X"] = [422]
    env = {"S2SQ_AMQP_URL": AMQP_URL, "S2SQ_PREFIX": audit_settings.prefix}
    base = f"http://127.0.0.1:{audit_settings.http_port}"
    async with running(audit_settings) as sup:
        await amqp.publish("acme", "X")
        await amqp.wait_event("client.parked", "acme")
        paused = await amqp.control(action="pause", client_id="globex", actor="ops-bot")
        code, _, err = await cli("resume", "globex", **env)
        refused = await _post(base, "/api/v1/clients/globex/resume")
        retried = await _console_retry(base, "acme", "X", "fixed the SKU")
        code_add, _, err_add = await cli("clients", "add", "initech", **env)
        await wait_until(lambda: len(sup.state.view.audit) == 5, 15, "five audit entries")
        listed = await _get(base, "/api/v1/audit")
    assert (paused["ok"], code, err, retried, code_add, err_add) == (True, 0, "", 303, 0, "")
    assert refused == (409, {"ok": False, "error": "client 'globex' is not paused"})
    assert listed[0] == 200
    assert _shown(listed[1]["entries"]) == [
        ("cli", "cli", "register", "initech", None, None, "ok"),
        ("admin", "console", "retry", "acme", "X", "fixed the SKU", "succeeded"),
        ("admin", "api", "resume", "globex", None, None, "client 'globex' is not paused"),
        ("cli", "cli", "resume", "globex", None, None, "ok"),
        ("ops-bot", "control", "pause", "globex", None, None, "ok"),
    ]
    assert listed[1]["next"] is None
    ids = [e["id"] for e in listed[1]["entries"]]
    assert ids == sorted(ids, reverse=True)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["at"])
               for e in listed[1]["entries"])


async def test_pages_follow_next_and_survive_a_restart_after_a_snapshot(
    audit_settings, amqp: Broker
):
    """Six pauses and resumes page two at a time through `next`; after a snapshot and a
    restart on the same prefix the same entries are listed; CSV says the same."""
    base = f"http://127.0.0.1:{audit_settings.http_port}"
    async with running(audit_settings) as sup:
        for action in ("pause", "resume") * 3:
            assert (await _post(base, f"/api/v1/clients/acme/{action}"))[0] == 200
        await wait_until(lambda: len(sup.state.view.audit) == 6, 15, "six audit entries")
        pages, before = [], ""
        while True:
            status, page = await _get(base, f"/api/v1/audit?limit=2{before}")
            assert status == 200, page
            pages.append([e["action"] for e in page["entries"]])
            if page["next"] is None:
                break
            before = f"&before={page['next']}"
        everything = (await _get(base, "/api/v1/audit"))[1]
        await sup.state.write_snapshot()
    async with running(audit_settings) as again:
        after = (await _get(base, "/api/v1/audit"))[1]
        from_snapshot = again.state.replayed
        async with aiohttp.ClientSession() as http, http.get(
                f"{base}/api/v1/audit.csv?limit=4", headers=ADMIN) as response:
            text, kind, link = (await response.text(), response.content_type,
                                response.headers.get("Link"))
    assert pages == [["resume", "pause"]] * 3
    assert after == everything
    assert from_snapshot < 6  # the entries came with the snapshot, not from replaying them
    rows = list(csv.reader(io.StringIO(text)))
    assert kind == "text/csv"
    assert rows[0] == ["id", "at", "actor", "via", "action", "client_id", "message_id",
                       "reason", "outcome"]
    assert [r[2:] for r in rows[1:]] == [
        ["admin", "api", a, "acme", "", "", "ok"] for a in ("resume", "pause") * 2]
    assert link == f'</api/v1/audit.csv?limit=4&before={rows[-1][0]}>; rel="next"'


async def test_a_bad_query_answers_400_with_its_reason(audit_settings, amqp: Broker):
    base = f"http://127.0.0.1:{audit_settings.http_port}"
    async with running(audit_settings):
        limit = await _get(base, "/api/v1/audit?limit=5000")
        before = await _get(base, "/api/v1/audit.csv?before=latest")
    assert limit == (400, {"ok": False, "error": "limit must be a whole number from 1 to 1000"})
    assert before == (400, {"ok": False, "error": "before must be an entry's id (a whole "
                                                  "number), the `next` of the previous page"})


async def test_a_retry_forwarded_to_the_replica_holding_the_park_is_audited_once(
    audit_settings, amqp: Broker, shop: FakeShop
):
    """Asked at the replica that does not hold the park, the retry is carried out and
    audited by the holder, under the face and actor that asked: one entry, not two."""
    shop.script["X"] = [422]
    other = audit_settings.model_copy(update={"http_port": free_port()})
    async with running(audit_settings) as one, running(other) as two:
        await amqp.publish("acme", "X")
        await amqp.wait_event("client.parked", "acme")
        await wait_until(lambda: one.ops.holds_park("acme") or two.ops.holds_park("acme"), 15,
                         "a replica to hold acme's park")
        asked = other if one.ops.holds_park("acme") else audit_settings
        retried = await _post(f"http://127.0.0.1:{asked.http_port}",
                              "/api/v1/clients/acme/retry", {"reason": "fixed"})
        await wait_until(lambda: len(one.state.view.audit) >= 1, 15, "an audit entry")
        await one.state.sync()
        await two.state.sync()
        listed = (await _get(f"http://127.0.0.1:{asked.http_port}", "/api/v1/audit"))[1]
    assert retried == (200, {"ok": True, "outcome": "succeeded", "message_id": "X"})
    assert _shown(listed["entries"]) == [
        ("admin", "api", "retry", "acme", "X", "fixed", "succeeded")]


async def test_a_parked_group_retry_across_replicas_audits_each_member_once(
    audit_settings, amqp: Broker, shop: FakeShop
):
    """acme and globex parked on one 422, their parks held by either replica: the group
    retry, asked at the replica not holding acme's, forwards acme's to its holder. Each
    member leaves one entry under the face that asked (the forwarded one as the holder's
    `retry`); before, a forwarded member had two, one of them `via: control`."""
    shop.script.update({"X1": [422], "X2": [422]})
    other = audit_settings.model_copy(update={"http_port": free_port()})
    async with running(audit_settings) as one, running(other) as two:
        await amqp.publish("acme", "X1")
        await amqp.publish("globex", "X2")
        await wait_until(lambda: all(one.ops.holds_park(c) or two.ops.holds_park(c)
                                     for c in ("acme", "globex")), 15,
                         "a replica to hold each park")
        asked, there = (other, two) if one.ops.holds_park("acme") else (audit_settings, one)
        base = f"http://127.0.0.1:{asked.http_port}"
        await there.state.sync()  # both parks read where the group is asked for
        [group] = (await _get(base, "/api/v1/parked/groups"))[1]["groups"]
        retried = await _post(base, f"/api/v1/parked/groups/{group['group']}/retry",
                              {"reason": "fixed"})
        await wait_until(lambda: len(one.state.view.audit) >= 2, 15, "two audit entries")
        await one.state.sync()
        await two.state.sync()
        listed = (await _get(base, "/api/v1/audit"))[1]
    status, answer = retried
    assert (status, answer["count"]) == (200, 2), retried
    shown = sorted(_shown(listed["entries"]), key=lambda e: e[3])
    assert [e[3] for e in shown] == ["acme", "globex"], shown  # one entry each
    results = {r["client_id"]: (r["ok"], r["outcome"], r.get("forwarded", False))
               for r in answer["results"]}
    assert results["acme"] == (True, "succeeded", True), results
    assert results["globex"][:2] == (True, "succeeded"), results
    # globex's park: forwarded too (the holder audits it as `retry`), or held here.
    globex_action = "retry" if results["globex"][2] else "retry_parked_group"
    assert shown == [("admin", "api", "retry", "acme", "X1", "fixed", "succeeded"),
                     ("admin", "api", globex_action, "globex", "X2", "fixed", "succeeded")]
