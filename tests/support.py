"""Real parts for broker tests: a fake shop, an event tap, the daemon in-process or as a process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from bench.broker import active_consumers
from daemon.broker.producer import DIRECT_REPLY_TO, Producer, item_message, send_control
from daemon.broker.topology import Topology
from daemon.core.state import StateLog
from daemon.settings import Settings
from daemon.supervisor import Supervisor

__all__ = ["active_consumers"]  # and the rest; re-exported from bench.broker for the tests

AMQP_URL = os.environ.get("S2SQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ROOT = Path(__file__).resolve().parent.parent


def unique_prefix(nodeid: str) -> str:
    """A prefix unique to one test run of one test (STYLE section 10)."""
    digest = hashlib.sha1(nodeid.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"t{digest}{uuid.uuid4().hex[:6]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 10 ms; fail with `what` if it stays false for `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


async def stays(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Check that `predicate` holds for the whole of `seconds` (for things that must NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        await asyncio.sleep(0.02)


async def scrape_metrics(port: int) -> dict[str, float]:
    """GET /metrics (no token needed) as {sample with labels: value}."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def close_connection(name: str) -> None:
    """Close the broker connection(s) named `name` from the broker's side (rabbitmqctl)."""

    def run() -> None:
        command = ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"]
        listed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30)
        pids = [line.split("\t")[0] for line in listed.stdout.splitlines() if name in line]
        assert pids, f"no connection named {name!r}"
        for pid in pids:
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"],
                           check=True, timeout=30, capture_output=True)

    await asyncio.to_thread(run)


# -- the fake shop (a sales channel speaking the generic HTTP connector) ------------


@dataclass
class Seen:
    method: str
    path: str
    sku: str
    client: str
    message_id: str
    body: bytes
    at: float = 0.0  # time.time() when the request arrived


@dataclass
class FakeShop:
    """Records every request; answers from `script[sku]` (a list of statuses, popped) or 200."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    delay: float = 0.0
    always: dict[str, int] = field(default_factory=dict)  # sku -> status on every request
    running: dict[str, web.Request] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)  # skus that ran twice at the same time
    reject_all: int | None = None  # answer every request with this status

    async def handle(self, request: web.Request) -> web.Response:
        sku = request.match_info.get("sku", "")
        if not sku:  # orders and fulfillments: the object's id
            sku = str(orjson.loads(await request.read()).get("id", ""))
        self.seen.append(Seen(request.method, request.path, sku,
                              request.headers.get("X-S2S-Client", ""),
                              request.headers.get("Idempotency-Key", ""), await request.read(),
                              time.time()))
        earlier = self.running.get(sku)
        if earlier is not None and _still_connected(earlier):
            # A request whose client hung up is not a second run: aiohttp's client
            # resends an idempotent request once when a pooled connection drops.
            self.overlaps.append(sku)
        self.running[sku] = request
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            if self.running.get(sku) is request:
                del self.running[sku]
        if sku in self.always or self.reject_all is not None:
            status = self.always.get(sku) or self.reject_all or 500
            body = '{"message":"sku rejected by the shop"}'
            return web.Response(status=status, text=body, content_type="application/json")
        statuses = self.script.get(sku)
        status = statuses.pop(0) if statuses else 200
        body = '{"message":"sku rejected by the shop"}' if status >= 400 else "{}"
        return web.Response(status=status, text=body, content_type="application/json")

    def skus(self, client: str | None = None) -> list[str]:
        return [s.sku for s in self.seen if client is None or s.client == client]


def _still_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


@asynccontextmanager
async def fake_shop() -> AsyncIterator[FakeShop]:
    shop = FakeShop()
    app = web.Application()
    app.router.add_route("*", "/{client}/products/{sku}", shop.handle)
    app.router.add_route("POST", "/{client}/{kind:orders|fulfillments}", shop.handle)
    async with serve(app) as shop.url:
        yield shop


@asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run `app` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def clients_toml(shop_url: str, client_ids: list[str], **extra: str) -> str:
    """A clients file whose clients' channels are the fake shop."""
    lines = []
    for cid in client_ids:
        lines += [f"[clients.{cid}]", f'name = "{cid} Ltd"', *extra.get(cid, "").splitlines()]
        for section in ("channel", "source", "warehouse"):
            lines += [f"[clients.{cid}.{section}]", 'kind = "http"',
                      f'base_url = "{shop_url}/{cid}"', 'token = "shop-token"', ""]
    return "\n".join(lines)


# -- the broker side of a test -------------------------------------------------------


@dataclass
class Broker:
    """A test's own connection: publish items, send control messages, watch events."""

    connection: AbstractRobustConnection
    topo: Topology
    events: list[dict[str, Any]] = field(default_factory=list)
    producer: Producer | None = None

    async def publish(self, client: str, sku: str | None = None, *, type_: str = "product.sync",
                      payload: dict[str, Any] | None = None, message_id: str | None = None) -> str:
        if payload is None:
            payload = {"sku": sku, "product": {"name": f"Product {sku}"}}
        if self.producer is None:
            self.producer = Producer(self.connection, self.topo)
        return await self.producer.publish(client, type_, payload, message_id=message_id or sku)

    async def order(self, client: str, order_id: str) -> str:
        """Publish an order.add_to_source item to the non-blocking queue (message id = order id)."""
        if self.producer is None:
            self.producer = Producer(self.connection, self.topo)
        return await self.producer.publish(client, "order.add_to_source",
                                           {"order": {"id": order_id}}, message_id=order_id,
                                           queue="nonblocking")

    async def register(self, *clients: str) -> None:
        """Register clients straight in the broker, as `s2s-queue clients add` does."""
        from daemon.core.state import register_client

        for client in clients:
            await register_client(self.connection, self.topo, client, "tester", "test")

    async def publish_raw(self, body: bytes, routing_key: str, **properties: Any) -> None:
        """Publish exactly these properties, through pika: aiormq fills in a missing message_id."""
        await asyncio.to_thread(_pika_publish, self.topo.blocking, routing_key, body, properties)

    async def control(self, timeout: float = 15.0, **request: Any) -> dict[str, Any]:
        request.setdefault("actor", "tester")
        return await send_control(self.connection, self.topo, request, timeout)

    async def control_answers(self, wait: float = 2.0, **request: Any) -> list[dict[str, Any]]:
        """Send a control message and collect every answer that arrives within `wait` s."""
        request.setdefault("actor", "tester")
        answers: list[dict[str, Any]] = []
        async with self.connection.channel() as channel:
            replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                answers.append(orjson.loads(message.body))

            await replies.consume(on_reply, no_ack=True)
            control = await channel.get_exchange(self.topo.control, ensure=False)
            await control.publish(
                aio_pika.Message(orjson.dumps(request), correlation_id=uuid.uuid4().hex,
                                 reply_to=DIRECT_REPLY_TO), routing_key="")
            await wait_until(lambda: bool(answers), 30, f"an answer to {request}")
            await asyncio.sleep(wait)
        return answers

    async def queue_job(self, job: dict[str, Any], queue: str | None = None) -> None:
        """Queue a notification job (or, given `queue`, a delivery) as the daemon does."""
        async with self.connection.channel(publisher_confirms=True) as channel:
            await channel.default_exchange.publish(
                aio_pika.Message(orjson.dumps(job), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue or self.topo.notify)

    def named(self, event: str, client: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["event"] == event and (client is None or e["client_id"] == client)]

    async def wait_event(self, event: str, client: str, count: int = 1,
                         timeout: float = 15.0) -> list[dict[str, Any]]:
        await wait_until(lambda: len(self.named(event, client)) >= count, timeout,
                         f"{count} × {event} for {client} (got {self.named(event, client)})")
        return self.named(event, client)

    async def declare_and_tap(self, tap: str = "") -> None:
        """Declare the topology and collect every event in `events`, through an exclusive
        queue (`tap`: its name; a robust channel on a cluster declares it again by name,
        which a server-named one cannot be)."""
        async with self.connection.channel() as setup:
            from daemon.broker.topology import declare_topology
            await declare_topology(setup, self.topo)
        channel = await self.connection.channel()
        queue = await channel.declare_queue(tap, exclusive=True, auto_delete=True,
                                            durable=False)
        await queue.bind(self.topo.events, routing_key="#")

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.events.append(orjson.loads(message.body))

        await queue.consume(on_event, no_ack=True)

    async def queue_messages(self, name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Every message in a queue (browsed and handed back)."""
        out = []
        async with self.connection.channel() as channel:
            queue = await channel.get_queue(name, ensure=False)
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                out.append(message)
        return out


@asynccontextmanager
async def broker(prefix: str) -> AsyncIterator[Broker]:
    topo = Topology(prefix)
    connection = await aio_pika.connect_robust(
        AMQP_URL, client_properties={"connection_name": f"test {prefix}"}, reconnect_interval=1)
    b = Broker(connection, topo)
    try:
        await b.declare_and_tap()
        yield b
    finally:
        await purge(connection, topo)
        await connection.close()


async def purge(connection: AbstractRobustConnection, topo: Topology) -> None:
    """Delete everything a prefix created: client queues found in its state log, then the rest."""
    await asyncio.wait_for(connection.connected.wait(), 60)  # after a broker restart, say
    state = StateLog(connection, topo, "purge")
    with suppress(Exception):
        await state.start()
        await state.stop()
    async with connection.channel() as channel:
        for client in state.view.clients:
            with suppress(Exception):
                await channel.queue_delete(topo.client_queue(client))
    # Every retry delay a test sets, and the defaults: each has a delay queue per target.
    seconds = (0.1, 0.2, 0.3, 0.5, 0.6, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 60, 300, 900)
    delays = [topo.delay_queue(s, target) for s in seconds
              for target in (topo.nonblocking, topo.notify, topo.notify_send)]
    for name in (*delays, topo.unrouted, topo.unrouted_watch, topo.nonblocking,
                 topo.deadletter, topo.archive, topo.state, topo.leader, topo.state_snapshot,
                 topo.notify, topo.notify_send, topo.events_log, topo.history):
        async with connection.channel() as channel:
            with suppress(Exception):
                await channel.queue_delete(name)
    for name in (topo.blocking, topo.unrouted, topo.nonblocking, topo.control, topo.events,
                 topo.deadletter, topo.replicas):
        async with connection.channel() as channel:
            with suppress(Exception):
                await channel.exchange_delete(name)


def _pika_publish(exchange: str, routing_key: str, body: bytes, properties: Any) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body,
                              pika.BasicProperties(delivery_mode=2, **properties))
    finally:
        connection.close()


# -- the daemon, in this process ----------------------------------------------------------


def settings_for(prefix: str, tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL, "prefix": prefix, "http_port": 0, "admin_token": "admin-token",
        "blocking_backoff": 0.05, "handler_timeout": 5.0, "shutdown_timeout": 5.0,
        "succeeded_events": True, "replica_settle": 0.0,
        "log_format": "json", "image_dir": tmp / "images",
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Supervisor]:
    """The supervisor as a task of the test's loop, ready on entry, stopped in order on exit."""
    sup = Supervisor(settings, handle_signals=False)
    task = asyncio.ensure_future(sup.run())
    try:
        await wait_until(lambda: sup.ready or task.done(), 30, "the daemon to be ready")
        if task.done():
            task.result()
        yield sup
    finally:
        sup.stop_requested.set()
        await asyncio.wait_for(task, 60)


# -- the daemon as a process ---------------------------------------------------------------


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            with suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(raw))
        return out

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]

    async def wait_logged(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n"
                                     + self.log_path.read_text()[-3000:])
            return bool(self.logged(event))
        await wait_until(seen, timeout, f"the daemon to log {event}")
        return self.logged(event)[0]

    def count(self, event: str, **fields: Any) -> int:
        return sum(1 for line in self.logged(event)
                   if all(line.get(k) == v for k, v in fields.items()))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        await wait_until(lambda: self.proc.poll() is not None, timeout, "the daemon to exit")
        return self.proc.returncode


@asynccontextmanager
async def daemon_process(env: dict[str, str], log_path: Path) -> AsyncIterator[DaemonProcess]:
    full_env = {**os.environ, **env}
    with log_path.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "run"], cwd=ROOT,
                                env=full_env, stdout=out, stderr=subprocess.STDOUT)
    daemon = DaemonProcess(proc, log_path)
    try:
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def env_with_clients(prefix: str, tmp_path: Path, shop: FakeShop, clients: list[str],
                     **extra: str) -> dict[str, str]:
    """Daemon environment with a clients file whose clients all talk to `shop`."""
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, clients))
    return daemon_env(prefix, S2SQ_CLIENTS_FILE=str(path), **extra)


def daemon_env(prefix: str, **extra: str) -> dict[str, str]:
    env = {"S2SQ_AMQP_URL": AMQP_URL, "S2SQ_PREFIX": prefix, "S2SQ_HTTP_PORT": "0",
           "S2SQ_LOG_FORMAT": "json", "S2SQ_BLOCKING_BACKOFF": "0.05",
           "S2SQ_SUCCEEDED_EVENTS": "true", "S2SQ_REPLICA_SETTLE": "0",
           "S2SQ_SHUTDOWN_TIMEOUT": "10"}
    env.update(extra)
    return env


def item(client: str, sku: str, **headers: Any) -> aio_pika.Message:
    return item_message(client, "product.sync", {"sku": sku, "product": {}}, message_id=sku)


NUMBERED = re.compile(r"\d+")
