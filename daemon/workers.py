"""Worker processes of the non-blocking pool: `S2SQ_PROCESSES` (SPEC section 9).

One Python process runs the pool on one core. With `processes = N` (or
`auto`, one per core) the supervisor runs the pool itself and starts N - 1
worker processes, `python -m daemon.workers`, that run only the pool. They
share nothing with it but the broker: each has its own connection, prefetch
(`nonblocking_concurrency`), state-log tail and handler context, and competes
for `<prefix>.nonblocking` like another replica would, so the claim protocol of
a redelivered item (docs/parking.md) holds across them as across replicas.
They queue failure notifications; the supervisor's outbox decides and sends.

To systemd it is still one service: the workers are the supervisor's
children, in its cgroup.

* **Start**: the settings go to the worker over its stdin (secrets included,
  never on a command line or in the environment of `ps`); it says "ready" on a
  pipe of its own once its pool consumes. The supervisor reports READY=1 after
  every worker did (or `START_TIMEOUT_S` passed: it logs and goes on).
* **Metrics**: on the same pipe the worker sends its item counters and
  histogram about every `REPORT_EVERY_S` when they changed; the supervisor's
  `/metrics` adds them to its own (`daemon.core.metrics.Merged`), keeping a dead
  worker's last report, so the counters never go back. What a worker counted
  after its last report before it died is not counted.
* **Signals**: the supervisor passes SIGHUP (reload the clients file) and
  SIGTERM (finish running items within `shutdown_timeout`, hand the rest back,
  exit 0) on to every worker; it waits for them before it exits, and kills a
  worker that outlives `shutdown_timeout` by `KILL_AFTER_S`.
* **A dying worker** is started again, after a pause that grows while it keeps
  dying young (`RESTART_DELAYS`); what its channel held goes back to the queue
  when the broker sees its connection close, and is redelivered.
* **A dying supervisor** takes its workers with it: each asks the kernel for
  SIGKILL when its parent goes (`PR_SET_PDEATHSIG`), as `kill -9` of the whole
  service would. Their items are redelivered too.

"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import orjson
import structlog
from aio_pika.abc import AbstractRobustConnection

from common.clients import ClientConfig, ClientsFileError, load_clients_file
from daemon import logs
from daemon.broker.brokers import connect_robust
from daemon.core.events import Events
from daemon.core.history import history_parts
from daemon.core.metrics import (
    ItemMetrics,
    Samples,
    add_samples,
    decode_samples,
    encode_samples,
    item_samples,
)
from daemon.core.nonblocking import NonBlockingPool
from daemon.core.outbox import Outbox
from daemon.core.outcomes import Outcomes
from daemon.core.runtime import Runtime
from daemon.core.state import StateLog
from daemon.settings import Settings
from daemon.tasks import Tasks, cancel_and_wait
from handlers import load_handlers
from handlers.base import Handler
from handlers.context import HandlerContext

log = structlog.get_logger()

READY = b"ready\n"
REPORT_EVERY_S = 1.0
READ_LIMIT = 4 * 1024 * 1024  # bytes in one line of samples
START_TIMEOUT_S = 120.0
KILL_AFTER_S = 10.0
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
YOUNG_S = 30.0  # a worker that dies sooner than this is restarted after a longer pause
PR_SET_PDEATHSIG = 1


# -- in the supervisor ------------------------------------------------------------------


class Worker:
    """One worker slot: its process, started again whenever it dies."""

    def __init__(self, slot: int, settings: Settings, replica: str) -> None:
        self.slot = slot
        self._settings = settings
        self._replica = replica
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.restarts = 0
        self.samples: Samples = {}  # the running process's last report
        self.retired: Samples = {}  # the last reports of the processes that died
        self._stopping = False

    def __repr__(self) -> str:
        pid = None if self.proc is None else self.proc.pid
        return f"<Worker {self.slot} pid={pid} restarts={self.restarts}>"

    async def run(self) -> None:
        """Keep a worker process running until `stop`."""
        young = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                code = await self._run_once()
            except OSError as exc:  # could not start it at all
                log.error("worker.not_started", worker=self.slot, error=repr(exc))
                code = None
            if self._stopping:
                return
            young = young + 1 if time.monotonic() - started < YOUNG_S else 0
            delay = RESTART_DELAYS[min(young, len(RESTART_DELAYS) - 1)]
            log.warning("worker.exited", worker=self.slot, code=code, restart_in_s=delay)
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _run_once(self) -> int:
        read_end, write_end = os.pipe()
        pipe = os.fdopen(read_end, "rb", buffering=0)
        try:
            try:
                proc = self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "daemon.workers", str(self.slot), self._replica,
                    str(os.getpid()), str(write_end),
                    stdin=asyncio.subprocess.PIPE, pass_fds=(write_end,),
                )
            finally:
                os.close(write_end)  # the worker's copy is the only one: EOF when it dies
            assert proc.stdin is not None
            proc.stdin.write(self._settings.dump_json())
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            proc.stdin.close()
            log.info("worker.started", worker=self.slot, pid=proc.pid)
            reader = asyncio.StreamReader(limit=READ_LIMIT)
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe)
            try:
                await self._listen(reader)
            finally:
                transport.close()
        finally:
            pipe.close()
        return await proc.wait()

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        """"ready", then reports of its metrics, until the worker's end of the pipe closes."""
        try:
            async for line in reader:
                if line == READY:
                    self.ready.set()
                    continue
                try:
                    self.samples = decode_samples(line)
                except ValueError as exc:  # cut off as it died: the report before stands
                    log.warning("worker.bad_report", worker=self.slot, error=str(exc))
        except ValueError as exc:  # a line over READ_LIMIT
            log.error("worker.bad_report", worker=self.slot, error=str(exc))
        finally:
            self.retired = add_samples(self.retired, self.samples)
            self.samples = {}

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self, timeout: float) -> None:
        """SIGTERM; SIGKILL if it is still running `timeout` + `KILL_AFTER_S` later."""
        self._stopping = True
        self.signal(signal.SIGTERM)
        if self.proc is None:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), timeout + KILL_AFTER_S)
        except TimeoutError:
            log.error("worker.killed", worker=self.slot, pid=self.proc.pid)
            self.signal(signal.SIGKILL)
            await self.proc.wait()


class WorkerProcesses:
    """The supervisor's `count` worker processes of the non-blocking pool."""

    def __init__(self, settings: Settings, count: int, replica: str) -> None:
        self._settings = settings
        self.workers = [Worker(slot, settings, replica) for slot in range(1, count + 1)]
        self._tasks = Tasks()  # each worker's run: restarts it until stopped
        self._stopped = False

    def __repr__(self) -> str:
        return f"<WorkerProcesses {self.workers}>"

    async def start(self) -> None:
        """Start every worker; wait until each consumes (or `START_TIMEOUT_S`)."""
        for worker in self.workers:
            self._tasks.spawn(worker.run())
        if not self.workers:
            return
        waits = [asyncio.ensure_future(w.ready.wait()) for w in self.workers]
        _, pending = await asyncio.wait(waits, timeout=START_TIMEOUT_S)
        for wait in pending:
            wait.cancel()
        if pending:
            log.error("workers.not_ready", waiting=len(pending), timeout_s=START_TIMEOUT_S)

    def samples(self) -> Samples:
        """Every worker's item samples, the dead ones' included, summed."""
        return add_samples(*(w.retired for w in self.workers), *(w.samples for w in self.workers))

    def signal(self, sig: int) -> None:
        """Pass `sig` on to every running worker."""
        for worker in self.workers:
            worker.signal(sig)

    async def stop(self) -> None:
        """Stop every worker (they drain as the supervisor does) and wait for them; once."""
        if self._stopped or not self.workers:
            return
        self._stopped = True
        await asyncio.gather(*(w.stop(self._settings.shutdown_timeout) for w in self.workers))
        await self._tasks.stop()
        log.info("workers.stopped", workers=len(self.workers),
                 restarts=sum(w.restarts for w in self.workers))


# -- in a worker process --------------------------------------------------------------


class PoolWorker:
    """A worker process: the non-blocking pool and what it needs, until SIGTERM."""

    def __init__(self, settings: Settings, slot: int, replica: str) -> None:
        self.settings = settings
        self.topo = settings.topology()
        self.slot = slot
        self.replica = f"{replica}-w{slot}"
        self.clients: dict[str, ClientConfig] = {}
        self.stop_requested = asyncio.Event()

    async def run(self, ready_fd: int) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        self.clients = self._read_clients()
        handlers = load_handlers()
        async with AsyncExitStack() as stack:
            # Fails over along S2SQ_AMQP_URL's nodes, as the main process does.
            connection = await connect_robust(self.settings.amqp_urls,
                                              f"s2s-queue {self.replica}", reconnect_interval=1)
            await stack.enter_async_context(connection)
            rt, outcomes = await stack.enter_async_context(self._runtime(connection, handlers))
            pool = NonBlockingPool(connection, rt, outcomes)
            await pool.start()
            log.info("worker.ready", worker=self.slot, replica=self.replica)
            report = await stack.enter_async_context(_Reports(ready_fd))
            report.send(READY, always=True)
            reporting = asyncio.ensure_future(self._report(report, rt.metrics))
            await self.stop_requested.wait()
            pool.begin_stop()
            await pool.drain(self.settings.shutdown_timeout)
            await cancel_and_wait(reporting)
            report.send(encode_samples(item_samples(rt.metrics)), always=True)  # the last word
        log.info("worker.stopped", worker=self.slot, replica=self.replica)

    async def _report(self, report: _Reports, metrics: ItemMetrics) -> None:
        """Send the item metrics' samples every `REPORT_EVERY_S` when they changed."""
        last: Samples = {}
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            now = item_samples(metrics)
            if now != last:
                report.send(encode_samples(now))
                last = now

    @asynccontextmanager
    async def _runtime(self, connection: AbstractRobustConnection,
                       handlers: dict[str, Handler]) -> AsyncIterator[tuple[Runtime, Outcomes]]:
        settings, topo = self.settings, self.topo
        state = StateLog(connection, topo, self.replica,
                         snapshot_every=settings.state_snapshot_every)
        events = Events(connection, topo)
        await events.start()
        confirm = await connection.channel(publisher_confirms=True, on_return_raises=True)
        timeout = aiohttp.ClientTimeout(total=settings.handler_timeout)
        async with aiohttp.ClientSession(timeout=timeout,
                                         cookie_jar=aiohttp.DummyCookieJar()) as http, \
                history_parts(connection, settings, index=False) as (history, _):
            context = HandlerContext(lambda: self.clients, http, settings=settings)
            outbox = Outbox(connection, settings, topo, state, lambda: self.clients, http,
                            events)
            rt = Runtime(settings, topo, handlers, context, events, state, outbox, confirm,
                         self.replica, ItemMetrics(handlers))
            await state.start()
            await outbox.start(consume=False)
            try:
                yield rt, Outcomes(rt, history)
            finally:
                await outbox.stop(settings.shutdown_timeout)
                await state.stop()

    def _read_clients(self) -> dict[str, ClientConfig]:
        path = self.settings.clients_file
        return {} if path is None else load_clients_file(path)

    def _reload(self) -> None:
        try:
            self.clients = self._read_clients()
        except ClientsFileError as exc:
            log.error("clients_file.invalid", worker=self.slot, error=str(exc))
            return
        log.info("clients_file.reloaded", worker=self.slot, clients=len(self.clients))


class _Reports:
    """The worker's end of the pipe to the supervisor: lines that never block the loop.

    An asyncio write transport buffers what the pipe does not take at once;
    a report is skipped while the one before is still buffered.
    """

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._transport: asyncio.WriteTransport | None = None

    async def __aenter__(self) -> _Reports:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_write_pipe(asyncio.Protocol, self._file)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._transport is not None:
            self._transport.close()  # after what it buffered is written
        self._file.close()

    def send(self, line: bytes, *, always: bool = False) -> None:
        """Write `line`; unless `always`, not while an earlier one waits in the buffer."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if always or transport.get_write_buffer_size() == 0:
            transport.write(line)


def _die_with(parent: int) -> None:
    """Ask the kernel for SIGKILL when the supervisor goes; go now if it already went."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        sys.exit(1)


def main(argv: list[str]) -> int:
    """`python -m daemon.workers SLOT REPLICA PARENT_PID READY_FD`, settings on stdin."""
    slot, replica, parent, ready_fd = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    _die_with(parent)
    settings = Settings(**orjson.loads(sys.stdin.buffer.read()))
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(PoolWorker(settings, slot, replica).run(ready_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
