"""The supervisor: owns the broker connection and everything that runs on it.

`run()` reads top to bottom: connect, declare, replay the state log, start
the consumers, the control plane and HTTP, report READY, wait for SIGTERM,
then stop in order — stop taking items, let running ones finish within
`shutdown_timeout`, hand the rest back by closing the channels — and exit.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import structlog
from aio_pika.abc import AbstractRobustConnection

from common.clients import ClientConfig, ClientsFileError, load_clients_file
from daemon import systemd
from daemon.broker.brokers import connect_robust
from daemon.broker.channels import PLACING, ConsumerChannels
from daemon.broker.depths import DepthCache, queue_depths
from daemon.broker.leader import Leadership
from daemon.broker.replicas import Replicas
from daemon.broker.topology import (
    declare_delay_queues,
    declare_events_log,
    declare_notify_queues,
    declare_topology,
)
from daemon.core.blocking import BlockingConsumer
from daemon.core.event_log import EventLog
from daemon.core.events import Events
from daemon.core.failed import FailedStore
from daemon.core.history import history_parts
from daemon.core.metrics import ItemMetrics, Samples
from daemon.core.nonblocking import NonBlockingPool
from daemon.core.outbox import Outbox
from daemon.core.outcomes import Outcomes
from daemon.core.records import Record, Registered, Resumed
from daemon.core.runtime import Runtime
from daemon.core.state import StateLog
from daemon.core.unrouted import UnroutedWatch
from daemon.faces.control import Control
from daemon.faces.http.face import Face
from daemon.faces.http.scrape import Sources, render
from daemon.faces.http.server import serve
from daemon.operations.admin import Operations
from daemon.settings import Settings
from daemon.tasks import Tasks, cancel_and_wait
from daemon.workers import WorkerProcesses
from handlers import load_handlers
from handlers.base import Handler
from handlers.context import HandlerContext

log = structlog.get_logger()


class Supervisor:
    """Runs one daemon replica until asked to stop."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self._handle_signals = handle_signals
        self.topo = settings.topology()
        self.replica = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.consumers: dict[str, BlockingConsumer] = {}
        self.clients: dict[str, ClientConfig] = {}
        self._ops: Operations | None = None
        self.ready = False
        self.stop_requested = asyncio.Event()
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._background = Tasks()  # a reload, a consumer to start: errors logged, not lost
        self._connection: AbstractRobustConnection | None = None
        self._pool: ConsumerChannels | None = None
        self._nonblocking: NonBlockingPool | None = None
        self._workers: WorkerProcesses | None = None
        self._leadership: Leadership | None = None
        self._replicas: Replicas | None = None
        self._rt: Runtime | None = None
        self._outcomes: Outcomes | None = None
        self._failed: FailedStore | None = None
        self._handlers: dict[str, Handler] = {}
        self.outbox: Outbox | None = None
        # Client queue depths, walked in the background from start to stop.
        self.depth_cache = DepthCache(lambda: self.consumers, self.depths,
                                      lambda: self.connected, settings.depth_refresh)
        self._started_at = time.monotonic()

    def __repr__(self) -> str:
        parked = sum(1 for c in self.consumers.values() if c.parked)
        return f"<Supervisor {self.replica} clients={len(self.consumers)} parked={parked}>"

    @property
    def rt(self) -> Runtime:
        assert self._rt is not None, "the supervisor is not running"
        return self._rt

    @property
    def ops(self) -> Operations:
        """The admin operations, for the faces (made once the runtime is)."""
        assert self._ops is not None, "the supervisor is not running"
        return self._ops

    @property
    def outcomes(self) -> Outcomes:
        assert self._outcomes is not None, "the supervisor is not running"
        return self._outcomes

    @property
    def failed_store(self) -> FailedStore:
        assert self._failed is not None, "the supervisor is not running"
        return self._failed

    @property
    def connection(self) -> AbstractRobustConnection:
        assert self._connection is not None, "the supervisor is not running"
        return self._connection

    @property
    def connected(self) -> bool:
        """True while the (robust) connection is up; False while it reconnects."""
        return (
            self._connection is not None and self._connection.connected.is_set()
            and self._pool is not None and self._pool.connected.is_set()
        )

    def worker_samples(self) -> Samples:
        """The item metrics' samples of the worker processes (S2SQ_PROCESSES), summed."""
        return {} if self._workers is None else self._workers.samples()

    @property
    def recoveries(self) -> int:
        """How often client consumers were placed again after a channel or connection loss."""
        return 0 if self._pool is None else self._pool.recoveries

    def _is_leader(self) -> bool:
        return self._leadership is not None and self._leadership.is_leader

    def _outbox(self) -> Outbox:
        assert self.outbox is not None, "the supervisor is not running"
        return self.outbox

    @property
    def state(self) -> StateLog:
        return self.rt.state

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop_requested` is set (SIGTERM/SIGINT), then stop in order."""
        if self._handle_signals:
            self._install_signals()
        self.clients = self._read_clients_file()
        self._handlers = load_handlers()  # a broken plug-in stops us before we connect
        async with AsyncExitStack() as stack:
            self._connection = await stack.enter_async_context(await self._connect())
            # Before the state log's replay, so that hearing the others overlaps it.
            replicas = self._replicas = Replicas(self._connection, self.topo, self.replica,
                                                 self.settings.replica_settle)
            await replicas.start()
            stack.push_async_callback(replicas.stop)
            rt = await stack.enter_async_context(self._runtime(self._connection))
            self._pool = ConsumerChannels(
                self.settings.amqp_urls, f"s2s-queue {self.replica} consumers",
                self.settings.consumers_per_channel, lambda c: c in rt.state.view.parked,
                lines=replicas,
            )
            await self._pool.start()
            stack.push_async_callback(self._pool.close)
            await replicas.settled()
            await self._start_consumers(rt.state.view.clients | set(self.clients))
            replicas.watch(self._pool)
            nonblocking = self._nonblocking = NonBlockingPool(self._connection, rt,
                                                              self.outcomes)
            await nonblocking.start()
            # S2SQ_PROCESSES: the pool in this process and in processes - 1 more.
            workers = self._workers = WorkerProcesses(
                self.settings, self.settings.process_count - 1, self.replica)
            stack.push_async_callback(workers.stop)
            await workers.start()
            watch = UnroutedWatch(self._connection, self.topo, self.outcomes)
            await watch.start()
            stack.push_async_callback(watch.stop)
            leadership = self._leadership = Leadership(self._connection, self.topo)
            await leadership.start()
            stack.push_async_callback(leadership.stop)
            redrive = asyncio.ensure_future(self.failed_store.run_redrive(self._is_leader))
            stack.push_async_callback(cancel_and_wait, redrive)
            control = Control(self._connection, self.topo, self.ops, self.replica, leadership)
            await control.start()
            stack.push_async_callback(control.stop)
            self.depth_cache.start()
            stack.push_async_callback(self.depth_cache.stop)
            await stack.enter_async_context(self._http())
            self.ready = True
            systemd.notify("READY=1")
            log.info("daemon.ready", replica=self.replica, clients=len(self.consumers),
                     parked=sum(1 for c in self.consumers.values() if c.parked))
            async with systemd.watchdog():
                await self.stop_requested.wait()
            self.ready = False
            systemd.notify("STOPPING=1")
            await control.stop()
            await replicas.stop()  # no hand-over while draining
            nonblocking.begin_stop()
            await asyncio.gather(self._drain(), nonblocking.drain(self.settings.shutdown_timeout),
                                 workers.stop())
        log.info("daemon.stopped", replica=self.replica, clients=len(self.consumers),
                 uptime_s=round(time.monotonic() - self._started_at, 1))

    async def _connect(self) -> AbstractRobustConnection:
        """The main (robust) connection: to the first broker that answers, failing over."""
        connection = await connect_robust(self.settings.amqp_urls, f"s2s-queue {self.replica}",
                                          reconnect_interval=1)
        log.info("broker.connected", broker=connection.broker,
                 connection="main")
        return connection

    @asynccontextmanager
    async def _runtime(self, connection: AbstractRobustConnection) -> AsyncIterator[Runtime]:
        setup = await connection.channel()
        await declare_topology(setup, self.topo)
        await declare_delay_queues(setup, self.topo, self.settings.retry_delays)
        await declare_notify_queues(setup, self.topo, self.settings.notify_delays,
                                    self.settings.notify_digest_window)
        await setup.close()
        await declare_events_log(connection, self.topo)
        state = StateLog(connection, self.topo, self.replica,
                         snapshot_every=self.settings.state_snapshot_every,
                         should_snapshot=self._is_leader)
        state.subscribe(self._on_record)
        events = Events(connection, self.topo)
        await events.start()
        # An unroutable confirmed publish must raise, not come back as a basic.return.
        confirm = await connection.channel(publisher_confirms=True, on_return_raises=True)
        timeout = aiohttp.ClientTimeout(total=self.settings.handler_timeout)
        # One session for every client's calls: it must keep no cookies, or one
        # merchant's shop would get the cookies another's set on the same host.
        async with aiohttp.ClientSession(timeout=timeout,
                                         cookie_jar=aiohttp.DummyCookieJar()) as http, \
                history_parts(connection, self.settings, index=True) as (history, index):
            context = HandlerContext(lambda: self.clients, http, settings=self.settings)
            outbox = self.outbox = Outbox(connection, self.settings, self.topo, state,
                                          lambda: self.clients, http, events)
            self._rt = Runtime(self.settings, self.topo, self._handlers, context, events,
                               state, outbox, confirm, self.replica,
                               ItemMetrics(self._handlers))
            self._outcomes = Outcomes(self._rt, history)
            self._failed = FailedStore(state, self.topo, self._rt.publish_confirmed,
                                       self._outcomes, self.replica)
            self._ops = Operations(self._rt, consumers=self.consumers, failed=self._failed,
                                   outcomes=self._outcomes, depth_cache=self.depth_cache,
                                   connection=connection, register=self.register,
                                   history=index)
            await state.start()
            await outbox.start()
            try:
                yield self._rt
            finally:
                # After the consumers drained (their parks are queued), before the state log.
                await outbox.stop(self.settings.shutdown_timeout)
                await state.stop()

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[None]:
        if self.settings.http_port == 0:
            yield
            return
        sources = Sources(self.topo, self.settings.retry_delays, self.connection, self.state,
                          self.consumers, self.depth_cache, self._outbox(), self.rt.metrics,
                          self.worker_samples, lambda: self.connected)
        face = Face(self.ops, self, self.settings, lambda: self.clients,
                    functools.partial(render, sources), EventLog(self.connection, self.topo))
        async with serve(face):
            yield

    async def _drain(self) -> None:
        """Stop taking items and give running ones `shutdown_timeout` seconds to finish."""
        for consumer in self.consumers.values():
            consumer.begin_stop()
        busy = [c for c in self.consumers.values() if c.busy]
        log.info("daemon.draining", running=len(busy), timeout_s=self.settings.shutdown_timeout)
        if busy:
            waits = [asyncio.ensure_future(c.wait_idle()) for c in busy]
            _, pending = await asyncio.wait(waits, timeout=self.settings.shutdown_timeout)
            for fut in pending:
                fut.cancel()
            for consumer in busy:
                if consumer.busy:
                    log.warning("item.interrupted", client_id=consumer.client_id)
                    consumer.cancel_running()
            await asyncio.gather(*(c.wait_idle() for c in busy))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)

    # -- registration ----------------------------------------------------------

    def _read_clients_file(self) -> dict[str, ClientConfig]:
        path = self.settings.clients_file
        return {} if path is None else load_clients_file(path)

    def _reload_soon(self) -> None:
        if self._workers is not None:
            self._workers.signal(signal.SIGHUP)
        self._background.spawn(self.reload())

    async def reload(self) -> None:
        """SIGHUP: re-read the clients file and register what it adds; work goes on."""
        try:
            clients = self._read_clients_file()
        except ClientsFileError as exc:
            log.error("clients_file.invalid", error=str(exc))  # keep the previous settings
            return
        self.clients = clients
        await self._start_consumers(set(clients))
        log.info("clients_file.reloaded", clients=len(clients))

    async def register(self, client_id: str, actor: str, op: str | None) -> bool:
        """Declare the client's queue, consume it, record the registration; True if new."""
        # The view learns of a registration only when the tail reads it back, so a
        # consumer started here already counts as registered.
        created = client_id not in self.state.view.clients and client_id not in self.consumers
        await self._ensure_consumer(client_id)
        if created:
            await self.state.append(Registered(client_id=client_id, actor=actor,
                                               op=op or uuid.uuid4().hex))
            await self.outcomes.registered(client_id, actor)
        return created

    async def _start_consumers(self, client_ids: Iterable[str]) -> None:
        """Consume the clients' queues: those this replica prefers first, then the others
        (docs/replicas.md), so that it is first in line where it should be active."""
        assert self._replicas is not None
        mine, others = self._replicas.split(sorted(set(client_ids) - set(self.consumers)))
        await self._place_all(mine)
        self._replicas.announce()
        await self._place_all(others)

    async def _place_all(self, todo: list[str]) -> None:
        limit = asyncio.Semaphore(PLACING)  # side by side on several channels

        async def one(client_id: str) -> None:
            async with limit:
                await self.register(client_id, "s2s-queue", None)

        await asyncio.gather(*(one(c) for c in todo))

    async def _ensure_consumer(self, client_id: str) -> None:
        if client_id in self.consumers:
            return
        task = self._starting.get(client_id)
        if task is None:
            task = asyncio.ensure_future(self._start_consumer(client_id))
            self._starting[client_id] = task
            task.add_done_callback(lambda _: self._starting.pop(client_id, None))
        await task

    async def _start_consumer(self, client_id: str) -> None:
        assert self._pool is not None
        consumer = BlockingConsumer(client_id, self.rt, self.outcomes)
        await self._pool.place_or_recover(consumer)
        self.consumers[client_id] = consumer

    def _on_record(self, record: Record) -> None:
        """React to records other replicas (or this one) wrote."""
        if isinstance(record, Resumed):
            consumer = self.consumers.get(record.client_id)
            if consumer is not None:
                consumer.parking.on_resumed()
        elif (isinstance(record, Registered) and record.client_id not in self.consumers
              and self._pool is not None):
            self._background.spawn(self._ensure_consumer(record.client_id))

    # -- queries -----------------------------------------------------------------

    async def depths(self, client_ids: list[str]) -> dict[str, int | None]:
        """Messages ready in each client's queue; None if the queue is gone.

        Read on a few channels side by side (`daemon.broker.depths`): 10,000 clients
        take 1.2-2.3 s instead of 3-4.5 s on one channel.
        """
        names = {self.topo.client_queue(client_id): client_id for client_id in client_ids}
        found = await queue_depths(self.connection, list(names))
        return {names[name]: depth for name, depth in found.items()}


def run(settings: Settings) -> None:
    """Entry point of `s2s-queue run`."""
    asyncio.run(Supervisor(settings).run())


__all__: list[Any] = ["Supervisor", "run"]
