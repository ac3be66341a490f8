"""The fuzz campaign (issue 12): hostile items and malformed control messages against a real
daemon process on the real broker, then a search for the run's secrets in everything it made.

Items and control messages come from the Hypothesis strategies of tests/fuzz.py, drawn with a
fixed seed: CI replays the same campaign every time. `make fuzz` runs a longer one
(FUZZ_ITEMS=10000, FUZZ_CONTROL=2000, FUZZ_SEED) and prints the counts by outcome.

Pass means: the daemon never exits nor stops being ready; every item ends as succeeded,
parked (then skipped, by us, through the control queue), failed or unrouted, and is counted
through the API and the events; no slot is held (a good item after the campaign is delivered
at once, on every queue); every control message gets `ok: false` and a reason; and none of the
configured secrets appears in the log, an event, a webhook, a mail, the state log, an API
answer or a console page.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import orjson
import pytest

from daemon.broker.producer import DIRECT_REPLY_TO
from daemon.core.records import encode
from daemon.core.state import StateLog
from tests.fuzz import Item, control_message, draw, item_strategy
from tests.sinks import HOOK_SECRET, HookSink, MailSink
from tests.support import (
    AMQP_URL,
    Broker,
    FakeShop,
    daemon_env,
    daemon_process,
    free_port,
    wait_until,
)

ITEMS = int(os.environ.get("FUZZ_ITEMS", "1000"))
CONTROL = int(os.environ.get("FUZZ_CONTROL", "500"))
SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
CLIENTS = [f"fz{n}" for n in range(8)]
MAX_BODY = 65_536
SECRETS = {
    "admin token": "sEcReT-admin-4f1c8e",
    "console token": "sEcReT-console-9a2b7d",
    "SMTP password": "sEcReT-smtp-77d0aa",
    "connector token": "sEcReT-shop-c0de11",
    "webhook secret": HOOK_SECRET,
    "broker password": "sEcReT-amqp-5e6f70",
}
BROKER_USER = "s2s-fuzz"

pytestmark = pytest.mark.timeout(600 + ITEMS // 10)


def _clients_toml(shop: FakeShop, hooks: HookSink) -> str:
    digest = hashlib.sha256(SECRETS["console token"].encode()).hexdigest()
    lines = []
    for cid in CLIENTS:
        lines += [f"[clients.{cid}]", f'name = "{cid} Ltd"',
                  f'notify_emails = ["ops@{cid}.example"]',
                  f'webhook_url = "{hooks.url}/{cid}"', f'webhook_secret = "{HOOK_SECRET}"']
        if cid == CLIENTS[0]:
            lines.append(f'console_token_sha256 = "{digest}"')
        for section in ("channel", "source", "warehouse"):
            lines += [f"[clients.{cid}.{section}]", 'kind = "http"',
                      f'base_url = "{shop.url}/{cid}"', f'token = "{SECRETS["connector token"]}"',
                      ""]
    return "\n".join(lines)


async def _publish(items: list[Item], topo_blocking: str, topo_nonblocking: str) -> None:
    """Publish every item as it is, through pika (aio-pika would fill in a message id)."""

    def run() -> None:
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for item in items:
                exchange = topo_blocking if item.queue == "blocking" else topo_nonblocking
                channel.basic_publish(exchange, item.routing_key, item.body,
                                      pika.BasicProperties(delivery_mode=2, **item.properties))
        finally:
            connection.close()

    await asyncio.to_thread(run)


class Readiness:
    """Asks /readyz every quarter second while the campaign runs; remembers every refusal."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.refusals: list[str] = []
        self.asked = 0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{self.base}/readyz",
                                        timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if r.status != 200:
                            self.refusals.append(f"{time.strftime('%X')} HTTP {r.status}")
                except Exception as exc:  # every failure is a finding
                    self.refusals.append(f"{time.strftime('%X')} {exc!r}")
                self.asked += 1
                await asyncio.sleep(0.25)

    def __enter__(self) -> Readiness:
        self._task = asyncio.ensure_future(self._watch())
        return self

    def __exit__(self, *_: Any) -> None:
        assert self._task is not None
        self._task.cancel()


async def _api(http: aiohttp.ClientSession, base: str, path: str) -> Any:
    async with http.get(f"{base}{path}", headers={
            "Authorization": f"Bearer {SECRETS['admin token']}"}) as r:
        assert r.status == 200, f"GET {path}: HTTP {r.status}: {await r.text()}"
        return await r.json()


async def _control_campaign(amqp: Broker, bodies: list[bytes]) -> list[dict[str, Any]]:
    """Send every control message with a reply queue; every one's answer, in order."""
    answers: dict[str, dict[str, Any]] = {}
    async with amqp.connection.channel() as channel:
        replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            answers[message.correlation_id or ""] = orjson.loads(message.body)

        await replies.consume(on_reply, no_ack=True)
        control = await channel.get_exchange(amqp.topo.control, ensure=False)
        ids = [uuid.uuid4().hex for _ in bodies]
        for ident, body in zip(ids, bodies, strict=True):
            await control.publish(aio_pika.Message(body, correlation_id=ident,
                                                   reply_to=DIRECT_REPLY_TO), routing_key="")
        await wait_until(lambda: len(answers) >= len(bodies), 60 + len(bodies) / 20,
                         f"answers to {len(bodies)} control messages (got {len(answers)})")
    return [answers[i] for i in ids]


async def _skip_parks(amqp: Broker, http: aiohttp.ClientSession, base: str,
                      done: Any, timeout: float) -> tuple[int, list[dict[str, Any]]]:
    """Skip every park, as an admin would, until `done()`; the skips and the parks seen."""
    parks: list[dict[str, Any]] = []
    skips = 0
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the campaign did not settle"
        listed = (await _api(http, base, "/api/v1/clients"))["clients"]
        parked = [c for c in listed if c["state"] == "parked"]
        parks += [c["parked"] for c in parked]
        answers = await asyncio.gather(*(
            amqp.control(action="skip", client_id=c["client_id"], reason="fuzz")
            for c in parked))
        skips += sum(1 for a in answers if a.get("ok"))
        if not parked:
            await asyncio.sleep(0.2)
    return skips, parks


async def _console_pages(base: str) -> dict[str, str]:
    """Every console page an admin and a client see, after logging in with their tokens."""
    pages: dict[str, str] = {}
    for who, token, paths in (
        ("admin", SECRETS["admin token"],
         ["/clients", "/failed", "/unrouted", *(f"/clients/{c}" for c in CLIENTS)]),
        ("client", SECRETS["console token"], [f"/clients/{CLIENTS[0]}", "/failed"]),
    ):
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(f"{base}/login") as r:
                csrf = next(c.value for c in jar if c.key.endswith("csrf"))
                pages[f"{who} GET /login"] = await r.text()
            async with http.post(f"{base}/login", data={"token": token, "csrf": csrf}) as r:
                assert r.status == 200, f"{who} login: HTTP {r.status}"
            for path in paths:
                async with http.get(f"{base}{path}") as r:
                    assert r.status == 200, f"{who} GET {path}: HTTP {r.status}"
                    pages[f"{who} GET {path}"] = await r.text()
    return pages


async def _state_log(amqp: Broker) -> list[str]:
    records: list[str] = []
    log = StateLog(amqp.connection, amqp.topo, "fuzz")
    log.subscribe(lambda record: records.append(encode(record, "fuzz", "").decode()))
    await log.start()
    await log.stop()
    return records


def _notifications_waiting(prefix: str) -> dict[str, int]:
    """Notifications still queued or being sent (ready + unacked), by queue; the digest
    window's delay queue is left out (a digest check waits there for the window)."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    waiting = {}
    for line in listed.splitlines():
        name, _, count = line.partition("\t")
        ours = name.startswith(f"{prefix}.notify") and not name.startswith(
            f"{prefix}.notify.delay")
        if ours and count.strip().isdigit() and int(count) > 0:
            waiting[name] = int(count)
    return waiting


def _as_fuzz_user(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(
        netloc=f"{BROKER_USER}:{SECRETS['broker password']}@{host}"))


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, timeout=60, capture_output=True)


def _where_secrets_appear(places: dict[str, str]) -> list[str]:
    return [f"the {name} appears in {place}: ...{text[max(0, at - 60):at + 60]!r}..."
            for place, text in places.items() for name, secret in SECRETS.items()
            if (at := text.find(secret)) >= 0]


async def test_hostile_items_and_control_messages_never_stop_the_daemon_nor_leak_a_secret(
    prefix, tmp_path: Path, amqp: Broker, shop: FakeShop, hooks: HookSink
):
    items: list[Item] = draw(item_strategy(CLIENTS, MAX_BODY), ITEMS, SEED)
    controls: list[bytes] = draw(control_message(CLIENTS), CONTROL, SEED + 1)
    # The daemon logs in to the broker as a user of its own: a password in its AMQP URL.
    await asyncio.to_thread(_rabbitmqctl, "delete_user", BROKER_USER, check=False)  # a last run's
    await asyncio.to_thread(_rabbitmqctl, "add_user", BROKER_USER, SECRETS["broker password"])
    await asyncio.to_thread(_rabbitmqctl, "set_permissions", BROKER_USER, ".*", ".*", ".*")
    smtp = MailSink(password=SECRETS["SMTP password"])
    smtp.start()
    clients = tmp_path / "clients.toml"
    clients.write_text(_clients_toml(shop, hooks))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = daemon_env(
        prefix, S2SQ_CLIENTS_FILE=str(clients), S2SQ_HTTP_PORT=str(port),
        S2SQ_ADMIN_TOKEN=SECRETS["admin token"], S2SQ_SMTP_HOST="127.0.0.1",
        S2SQ_SMTP_PORT=str(smtp.port), S2SQ_SMTP_USERNAME="s2s",
        S2SQ_SMTP_PASSWORD=SECRETS["SMTP password"], S2SQ_ADMIN_EMAILS="admin@s2s.example",
        S2SQ_BLOCKING_ATTEMPTS="2", S2SQ_NONBLOCKING_RETRY_DELAYS="0.1,0.2",
        S2SQ_NOTIFY_RETRY_DELAYS="0.2", S2SQ_MAX_BODY_BYTES=str(MAX_BODY),
        S2SQ_AMQP_URL=_as_fuzz_user(AMQP_URL))
    published = Counter((i.queue, i.registered) for i in items)

    def count(event: str, queue: str) -> int:
        return sum(1 for e in amqp.named(event) if e["queue"] == queue)

    try:
        async with daemon_process(env, tmp_path / "daemon.log") as daemon, \
                aiohttp.ClientSession() as http:
            await daemon.wait_logged("daemon.ready")
            await daemon.wait_logged("leader.changed", 30)
            with Readiness(base) as ready:
                started = time.monotonic()
                await _publish(items, amqp.topo.blocking, amqp.topo.nonblocking)
                answers = await _control_campaign(amqp, controls)
                failed: list[dict[str, Any]] = []

                async def settled() -> None:
                    failed[:] = (await _api(http, base, "/api/v1/failed"))["items"]

                def done() -> bool:
                    blocking = count("item.succeeded", "blocking") + count(
                        "item.skipped", "blocking")
                    nonblocking = count("item.succeeded", "nonblocking") + len(failed)
                    return (blocking >= published["blocking", True]
                            and nonblocking >= published["nonblocking", True]
                            + published["nonblocking", False]
                            and len(amqp.named("item.unrouted")) >= published["blocking", False])

                async def refresh() -> None:
                    while True:
                        await settled()
                        await asyncio.sleep(0.5)

                refresher = asyncio.ensure_future(refresh())
                try:
                    skips, parks = await _skip_parks(amqp, http, base, done, 120 + ITEMS / 10)
                finally:
                    refresher.cancel()
                await settled()
                took = time.monotonic() - started
                # Nothing holds a slot: one good item per queue goes through at once.
                for cid in CLIENTS:
                    await amqp.publish(cid, type_="system.noop", payload={},
                                       message_id=f"after-{cid}")
                await amqp.order(CLIENTS[0], "after-order")
                await wait_until(lambda: {e["message_id"] for e in amqp.named("item.succeeded")}
                                 >= {*(f"after-{c}" for c in CLIENTS), "after-order"}, 20,
                                 "a good item on every queue after the campaign")
                # No notification loops: every mail and webhook is sent or given up.
                waiting: dict[str, int] = {}

                async def drained() -> bool:
                    waiting.clear()
                    waiting.update(await asyncio.to_thread(_notifications_waiting, prefix))
                    return not waiting

                deadline = time.monotonic() + 60
                while not await drained():
                    assert time.monotonic() < deadline, f"notifications never end: {waiting}"
                    await asyncio.sleep(1)
                listed = await _api(http, base, "/api/v1/clients")
                places = {"the daemon's log": daemon.log_path.read_text(errors="replace")}
                places |= await _console_pages(base)
                places["GET /api/v1/failed"] = orjson.dumps(failed).decode()
                places["GET /api/v1/clients"] = orjson.dumps(listed).decode()
            assert daemon.proc.poll() is None, "the daemon exited"
        places |= {f"event {n}": orjson.dumps(e).decode() for n, e in enumerate(amqp.events)}
        places |= {f"webhook {n}": orjson.dumps(h.body).decode()
                   for n, h in enumerate(hooks.hooks)}
        places |= {f"mail {n} ({m.subject[:40]!r})": m.message.as_string()
                   for n, m in enumerate(smtp.mails)}
        places |= {f"state record {n}": r for n, r in enumerate(await _state_log(amqp))}
    finally:
        smtp.stop()
        await asyncio.to_thread(_rabbitmqctl, "delete_user", BROKER_USER)

    outcomes = Counter({
        "blocking succeeded": count("item.succeeded", "blocking"),
        "blocking parked then skipped": count("item.skipped", "blocking"),
        "nonblocking succeeded": count("item.succeeded", "nonblocking"),
        "nonblocking failed": len(failed),
        "unrouted": len(amqp.named("item.unrouted")),
    })
    print(f"\nfuzz campaign, seed {SEED}: {ITEMS} items ({dict(published)}), {CONTROL} control"
          f" messages, settled in {took:.1f} s; outcomes {dict(outcomes)}; {skips} skips;"
          f" {len(smtp.mails)} mails, {len(hooks.hooks)} webhooks; readiness asked"
          f" {ready.asked} times")
    if os.environ.get("FUZZ_VERBOSE"):
        for error, n in Counter(p["error"][:90] for p in parks).most_common(40):
            print(f"{n:5d} park  {error}")
        for error, n in Counter(f["error"][:90] for f in failed).most_common(40):
            print(f"{n:5d} fail  {error}")
    assert ready.refusals == [], f"the daemon stopped being ready: {ready.refusals[:5]}"
    refused = [(body[:80], a) for body, a in zip(controls, answers, strict=True)
               if a.get("ok") is not False or not a.get("error")]
    assert refused == [], f"control messages not refused with a reason: {refused[:5]}"
    assert all(c["state"] == "running" and not c["paused"] for c in listed["clients"])
    assert outcomes["blocking succeeded"] + outcomes["blocking parked then skipped"] \
        == published["blocking", True] + len(CLIENTS)
    assert outcomes["nonblocking succeeded"] + outcomes["nonblocking failed"] \
        == published["nonblocking", True] + published["nonblocking", False] + 1
    assert outcomes["unrouted"] == published["blocking", False]
    assert all(p["error"] for p in parks), "a park without a reason"
    assert all(f["error"] for f in failed), "a failed item without a reason"
    assert _where_secrets_appear(places) == []
