"""Who may do what over HTTP (SPEC §8): every route and every kind of token, on a real daemon.

The matrix is one table. Each row is a request about client acme (or the
daemon as a whole) and the status each caller gets: no token, a wrong one,
acme's console token ("own"), globex's ("other"), and the admin token. One
daemon per caller runs the rows top to bottom, so the allowed actions form a
story: retry resumes acme, a skip archives the next parked item, a pause is
undone, a failed order is retried and another skipped, acme's unrouted items
are replayed. Afterwards the test checks what really happened, and who the
daemon says did it (its audit trail too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from daemon.core.records import Record, Unfailed
from daemon.core.state import StateLog
from daemon.operations.groups import group_id
from daemon.supervisor import Supervisor
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    free_port,
    running,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

TOKENS = {"none": None, "wrong": "not-a-token", "own": "acme-console-token",
          "other": "globex-console-token", "admin": "admin-token"}
ACTORS = {"own": "client:acme", "admin": "admin"}
UNAUTHORIZED = {"ok": False, "error": "missing or wrong bearer token"}
SHOP_422 = '{"message":"sku rejected by the shop"}'
ORDERS_422 = f"POST /<client>/orders → HTTP 422: {SHOP_422}"
PARKED_422 = group_id("parked", "product.sync", f"PUT /<client>/products/<id> → HTTP 422: "
                      f"{SHOP_422}")


def _parked(message_id: str) -> Callable[[Broker], bool]:
    return lambda amqp: any(e["message_id"] == message_id
                            for e in amqp.named("client.parked", "acme"))


@dataclass(frozen=True)
class Row:
    """One request and the status each caller gets (None: not sent by that caller)."""

    method: str
    path: str
    statuses: tuple[int | None, int | None, int | None, int | None, int | None]
    body: dict[str, Any] | None = None
    ready: Callable[[Broker], bool] | None = None  # an allowed action waits for this first

    def status(self, caller: str) -> int | None:
        return self.statuses[list(TOKENS).index(caller)]


#            method  path                                    none wrong own other admin
MATRIX = [
    Row("GET", "/healthz",                                   (200, 200, 200, 200, 200)),
    Row("GET", "/readyz",                                    (200, 200, 200, 200, 200)),
    Row("GET", "/metrics",                                   (200, 200, 200, 200, 200)),
    Row("GET", "/api/v1/clients",                            (401, 401, 200, 200, 200)),
    Row("GET", "/api/v1/clients?limit=0",                    (401, 401, 400, 400, 400)),
    Row("GET", "/api/v1/clients/acme",                       (401, 401, 200, 404, 200)),
    Row("GET", "/api/v1/clients/globex",                     (401, 401, 404, 200, 200)),
    Row("GET", "/api/v1/clients/nobody",                     (401, 401, 404, 404, 404)),
    Row("GET", "/api/v1/clients/acme/history",               (401, 401, 200, 404, 200)),
    Row("GET", "/api/v1/clients/globex/history",             (401, 401, 404, 200, 200)),
    Row("GET", "/api/v1/clients/acme/history?limit=0",       (401, 401, 400, 404, 400)),
    Row("GET", "/api/v1/clients/nobody/history",             (401, 401, 404, 404, 404)),
    Row("GET", "/api/v1/failed",                             (401, 401, 200, 200, 200)),
    Row("GET", "/api/v1/failed?client_id=acme",              (401, 401, 200, 404, 200)),
    Row("GET", "/api/v1/unrouted",                           (401, 401, 200, 200, 200)),
    Row("GET", "/api/v1/failed/groups",                      (401, 401, 200, 200, 200)),
    Row("GET", "/api/v1/failed/groups?client_id=acme",       (401, 401, 200, 404, 200)),
    Row("GET", "/api/v1/failed/groups?limit=0",              (401, 401, 400, 400, 400)),
    Row("GET", "/api/v1/parked/groups",                      (401, 401, 200, 200, 200)),
    Row("POST", "/api/v1/failed/groups/0123456789abcdef/retry", (401, 401, 404, 404, 404)),
    Row("GET", "/api/v1/events/stream",                      (401, 401, 200, 200, 200)),
    Row("POST", "/api/v1/clients",                           (401, 401, 404, 404, 201),
        {"client_id": "initech"}),
    Row("POST", "/api/v1/clients/acme/retry",                (401, 401, 200, 404, 200)),
    Row("POST", f"/api/v1/parked/groups/{PARKED_422}/retry", (401, 401, 200, 404, 200),
        {"reason": "once more"}, ready=_parked("P")),
    Row("POST", f"/api/v1/parked/groups/{PARKED_422}/explode", (401, 401, 404, 404, 404)),
    Row("POST", "/api/v1/clients/acme/skip",                 (401, 401, 200, 404, 200),
        {"message_id": "P", "reason": "bad data"}, ready=_parked("P")),
    Row("POST", "/api/v1/clients/acme/pause",                (401, 401, 200, 404, 200)),
    Row("POST", "/api/v1/clients/acme/resume",               (401, 401, 200, 404, 200)),
    Row("POST", "/api/v1/clients/acme/explode",              (401, 401, 404, 404, 404)),
    Row("POST", "/api/v1/failed/SO-A1/retry",                (401, 401, 200, 404, 200)),
    Row("POST", "/api/v1/failed/SO-A2/skip",                 (401, 401, 200, 404, 200),
        {"reason": "duplicate"}),
    Row("POST", "/api/v1/failed/SO-G/retry",                 (401, 401, 404, None, 200)),
    Row("POST", "/api/v1/failed/SO-G/explode",               (401, 401, 404, 404, 404)),
    Row("POST", "/api/v1/failed/nope/retry",                 (401, 401, 404, 404, 404)),
    Row("POST", "/api/v1/unrouted/acme/replay",              (401, 401, 200, 404, 200)),
    Row("POST", "/api/v1/actions/status",                   (401, 401, 404, 404, 200)),
    Row("POST", "/api/v1/actions/explode",                  (401, 401, 404, 404, 409)),
    Row("GET", "/api/v1/audit",                              (401, 401, 200, 200, 200)),
    Row("GET", "/api/v1/audit?client_id=acme",               (401, 401, 200, 404, 200)),
    Row("GET", "/api/v1/audit?client_id=globex&actor=admin", (401, 401, 404, 200, 200)),
    Row("GET", "/api/v1/audit?limit=0",                      (401, 401, 400, 400, 400)),
    Row("GET", "/api/v1/audit.csv",                          (401, 401, 200, 200, 200)),
    Row("GET", "/api/v1/audit.csv?client_id=globex",         (401, 401, 404, 200, 200)),
    Row("GET", "/api/v1/nothing-here",                       (401, 401, 404, 404, 404)),
    Row("DELETE", "/api/v1/clients/acme",                    (401, 401, 405, 405, 405)),
]


@dataclass
class Run:
    """What one caller got for each row: (status, JSON body)."""

    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def body(self, method: str, path: str) -> Any:
        return self.answers[f"{method} {path}"][1]


async def _call(base: str, row: Row, token: str | None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.request(
        row.method, base + row.path, headers=headers, json=row.body
    ) as response:
        if response.content_type == "text/event-stream":  # never ends: its first line only
            return response.status, {"stream": (await response.content.readline()).decode()}
        if response.content_type != "application/json":
            return response.status, f"{response.content_type}: {await response.text()}"
        return response.status, await response.json()


async def run_column(base: str, caller: str, amqp: Broker) -> Run:
    """Send every row the caller sends; collect each answer that differs from the table."""
    run, wrong = Run(), []
    for row in MATRIX:
        expected = row.status(caller)
        if expected is None:
            continue
        ready = row.ready
        if ready is not None and expected < 300:
            await wait_until(lambda: ready(amqp), 15, f"{row.path} to be ready")  # noqa: B023
        status, body = await _call(base, row, TOKENS[caller])
        run.answers[f"{row.method} {row.path}"] = (status, body)
        if status != expected:
            wrong.append(f"{row.method} {row.path}: expected {expected}, got {status} {body}")
        elif row.path != "/metrics" and ".csv" not in row.path and not isinstance(body, dict):
            wrong.append(f"{row.method} {row.path}: not JSON: {status} {body}")
        elif status >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if body != {"ok": False, "error": error} or not error:
                wrong.append(f"{row.method} {row.path}: not a JSON error: {body}")
            elif status == 401 and body != UNAUTHORIZED:
                wrong.append(f"{row.method} {row.path}: {body}")
    assert wrong == [], "\n".join(wrong)
    return run


async def _audit(port: int, caller: str) -> list[tuple[Any, ...]]:
    """The audit trail as the caller reads it: (actor, via, action, client, message, outcome)."""
    row = Row("GET", "/api/v1/audit", (None,) * 5)
    status, body = await _call(f"http://127.0.0.1:{port}", row, TOKENS[caller])
    assert status == 200, body
    return [(e["actor"], e["via"], e["action"], e["client_id"], e["message_id"], e["outcome"])
            for e in reversed(body["entries"])]


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def access_settings(prefix, tmp_path: Path, shop: FakeShop):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(
        shop.url, ["acme", "globex"],
        acme=f'console_token_sha256 = "{_sha256(TOKENS["own"] or "")}"',
        globex=f'console_token_sha256 = "{_sha256(TOKENS["other"] or "")}"'))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port())


async def _unrouted_before_start(amqp: Broker) -> None:
    """acme's U1 and U2 and initech's I1 arrive before anyone registered those clients."""
    for client, message_id in (("acme", "U1"), ("acme", "U2"), ("initech", "I1")):
        await amqp.publish(client, type_="system.noop", payload={}, message_id=message_id)


async def _story_so_far(sup: Supervisor, amqp: Broker, shop: FakeShop) -> None:
    """acme parked on X (Y and P behind it); failed orders SO-A1, SO-A2 (acme), SO-G (globex)."""
    shop.script.update({"X": [422], "SO-A1": [422]})
    shop.always.update({"P": 422, "SO-A2": 422, "SO-G": 422})
    for sku in ("X", "Y", "P"):
        await amqp.publish("acme", sku)
    for client, order in (("acme", "SO-A1"), ("acme", "SO-A2"), ("globex", "SO-G")):
        await amqp.order(client, order)
    await amqp.wait_event("client.parked", "acme")
    await wait_until(lambda: len(sup.state.view.failed) == 3, 15, "three failed orders")


async def _state_records(amqp: Broker) -> list[Record]:
    """Every record of the state log so far, read by a log of the test's own."""
    records: list[Record] = []
    log = StateLog(amqp.connection, amqp.topo, "test")
    log.subscribe(records.append)
    await log.start()
    await log.stop()
    return records


@pytest.mark.parametrize("caller", ["none", "wrong", "other"])
async def test_refused_callers_get_401_or_404_and_change_nothing(
    access_settings, amqp: Broker, shop: FakeShop, caller
):
    """No token or a wrong one: 401 everywhere under /api; another client's token: 404 for
    everything of acme's; lists show that client's own things only. Nothing moves."""
    await _unrouted_before_start(amqp)
    async with running(access_settings) as sup:
        await _story_so_far(sup, amqp, shop)
        run = await run_column(f"http://127.0.0.1:{access_settings.http_port}", caller, amqp)
        park = sup.state.view.parked.get("acme")
        parked = park.message_id if park else None
        failed = sorted(sup.state.view.failed)
        unrouted = [m.message_id for m in await amqp.queue_messages(amqp.topo.unrouted)]
        consumers = sorted(sup.consumers)
        await sup.state.sync()
        audit = await _audit(access_settings.http_port, "admin")
    assert (parked, failed, consumers) == ("X", ["SO-A1", "SO-A2", "SO-G"], ["acme", "globex"])
    assert unrouted == ["U1", "U2", "I1"]
    assert await amqp.queue_messages(amqp.topo.archive) == []
    assert sorted(shop.skus("acme")) == ["SO-A1", "SO-A2", "X"]
    assert [e["event"] for e in amqp.events if e["event"] in (
        "client.resumed", "client.paused", "item.skipped")] == []
    assert audit == [], "a request refused for its token is not an action: nothing audited"
    if caller == "other":
        assert run.body("GET", "/api/v1/clients/acme") == {
            "ok": False, "error": "client 'acme' is not registered"}
        assert run.body("GET", "/api/v1/failed?client_id=acme") == {
            "ok": False, "error": "client 'acme' is not registered"}
        assert run.body("POST", "/api/v1/failed/SO-A1/retry") == {
            "ok": False, "error": "no failed item with message_id 'SO-A1'"}
        assert [c["client_id"] for c in run.body("GET", "/api/v1/clients")["clients"]] \
            == ["globex"]
        assert [i["message_id"] for i in run.body("GET", "/api/v1/failed")["items"]] == ["SO-G"]
        assert run.body("GET", "/api/v1/unrouted") == {"items": [], "more": False,
                                                       "total": None}
        assert [(g["error_pattern"], g["count"], g["client_ids"])
                for g in run.body("GET", "/api/v1/failed/groups")["groups"]] == [
            (ORDERS_422, 1, ["globex"])]
        assert run.body("GET", "/api/v1/parked/groups") == {"groups": [], "next": None}
        assert run.body("POST", f"/api/v1/parked/groups/{PARKED_422}/retry") == {
            "ok": False, "error": f"no parked group {PARKED_422!r}"}


@pytest.mark.parametrize("caller", ["own", "admin"])
async def test_allowed_callers_act_and_are_recorded_as_the_actor(
    access_settings, amqp: Broker, shop: FakeShop, caller
):
    """acme's token and the admin token do what each route says, on the real daemon; every
    action names `client:acme` or `admin` as its actor."""
    actor = ACTORS[caller]
    await _unrouted_before_start(amqp)
    async with running(access_settings) as sup:
        await _story_so_far(sup, amqp, shop)
        with capture_logs() as logs:
            run = await run_column(f"http://127.0.0.1:{access_settings.http_port}", caller,
                                   amqp)
        await amqp.wait_event("item.succeeded", "acme", 5)  # X, Y, SO-A1, U1, U2
        if caller == "admin":  # the admin retried globex's failed order too
            await wait_until(lambda: shop.skus("globex") == ["SO-G", "SO-G"], 15,
                             "SO-G to run again")
        await sup.state.sync()
        audit = await _audit(access_settings.http_port, caller)
        consumers = sorted(sup.consumers)
        parked = sup.state.view.parked
    records = await _state_records(amqp)
    archived = await amqp.queue_messages(amqp.topo.archive)
    unrouted = [m.message_id for m in await amqp.queue_messages(amqp.topo.unrouted)]

    assert run.body("POST", "/api/v1/clients/acme/retry") == {
        "ok": True, "outcome": "succeeded", "message_id": "X"}
    assert sorted(e["message_id"] for e in amqp.named("item.succeeded", "acme")) == [
        "SO-A1", "U1", "U2", "X", "Y"]
    assert parked == {}
    assert [(e["how"], e["actor"]) for e in amqp.named("client.resumed", "acme")] == [
        ("retry", actor), ("skip", actor), ("resume", actor)]
    assert [e["actor"] for e in amqp.named("client.paused", "acme")] == [actor]
    assert [(e["message_id"], e["queue"], e["actor"], e["reason"])
            for e in amqp.named("item.skipped", "acme")] == [
        ("P", "blocking", actor, "bad data"), ("SO-A2", "nonblocking", actor, "duplicate")]
    assert [(m.message_id, (m.headers or {})["x-s2s-skipped-by"]) for m in archived] == [
        ("P", actor), ("SO-A2", actor)]
    assert [(r.message_id, r.how, r.actor) for r in records
            if isinstance(r, Unfailed) and r.client_id == "acme"] == [
        ("SO-A1", "retry", actor), ("SO-A2", "skip", actor)]
    assert run.body("POST", f"/api/v1/parked/groups/{PARKED_422}/retry") == {
        "ok": True, "group": PARKED_422, "count": 1, "results": [
            {"client_id": "acme", "message_id": "P", "ok": True, "outcome": "failed",
             "error": f"PUT /acme/products/P → HTTP 422: {SHOP_422}"}]}
    assert [(g["error_pattern"], g["count"], g["client_ids"]) for g in run.body(
        "GET", "/api/v1/failed/groups?client_id=acme")["groups"]] == [
        (ORDERS_422, 2, ["acme"])]
    assert run.body("POST", "/api/v1/clients/acme/explode") == {
        "ok": False, "error": "Not Found: POST /api/v1/clients/acme/explode"}
    assert run.body("DELETE", "/api/v1/clients/acme") == {
        "ok": False, "error": "Method Not Allowed: DELETE /api/v1/clients/acme"}
    assert audit == [
        *([("admin", "api", "register", "initech", None, "ok")] if caller == "admin" else []),
        (actor, "api", "retry", "acme", "X", "succeeded"),
        (actor, "api", "retry_parked_group", "acme", "P", "failed"),
        (actor, "api", "skip", "acme", "P", "ok"),
        (actor, "api", "pause", "acme", None, "ok"), (actor, "api", "resume", "acme", None, "ok"),
        (actor, "api", "retry_failed", "acme", "SO-A1", "ok"),
        (actor, "api", "skip_failed", "acme", "SO-A2", "ok"),
        *([("admin", "api", "retry_failed", "globex", "SO-G", "ok")] if caller == "admin"
          else []),
        (actor, "api", "replay_unrouted", "acme", None, "ok")]
    if caller == "own":  # globex's entries are not acme's to read, in JSON or CSV
        assert run.body("GET", "/api/v1/audit?client_id=globex&actor=admin") == {
            "ok": False, "error": "client 'globex' is not registered"}
        assert run.body("GET", "/api/v1/audit.csv").startswith("text/csv: id,at,actor")
    replays = [e for e in logs if e["event"] == "unrouted.replayed"]
    assert [(e["client_id"], e["count"], e["actor"]) for e in replays] == [("acme", 2, actor)]
    assert unrouted == ["I1"]
    if caller == "own":
        assert consumers == ["acme", "globex"]
        assert [c["client_id"] for c in run.body("GET", "/api/v1/clients")["clients"]] \
            == ["acme"]
        assert [i["message_id"] for i in run.body("GET", "/api/v1/failed")["items"]] == [
            "SO-A1", "SO-A2"]
        assert [i["message_id"] for i in run.body("GET", "/api/v1/unrouted")["items"]] == [
            "U1", "U2"]
        assert shop.skus("globex") == ["SO-G"]
        failed_groups = [(ORDERS_422, 2, ["acme"])]
    else:
        assert consumers == ["acme", "globex", "initech"]
        assert [e["actor"] for e in amqp.named("client.registered", "initech")] == ["admin"]
        assert [i["message_id"] for i in run.body("GET", "/api/v1/unrouted")["items"]] == [
            "U1", "U2", "I1"]
        failed_groups = [(ORDERS_422, 3, ["acme", "globex"])]
    assert [(g["error_pattern"], g["count"], g["client_ids"])
            for g in run.body("GET", "/api/v1/failed/groups")["groups"]] == failed_groups


async def test_with_no_admin_token_configured_client_tokens_are_refused_too(
    access_settings, amqp: Broker
):
    """An unset S2SQ_ADMIN_TOKEN locks the API for clients as well."""
    settings = access_settings.model_copy(update={"admin_token": None})
    async with running(settings):
        row = Row("GET", "/api/v1/clients/acme", (401, 401, 401, 401, 401))
        answer = await _call(f"http://127.0.0.1:{settings.http_port}", row, TOKENS["own"])
    assert answer == (401, UNAUTHORIZED)
