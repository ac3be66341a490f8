"""Admin round trips: retry, skip, pause and resume of a parked client, idle and under load.

    .venv/bin/python bench/admin.py --busy 500 --rounds 100

Method (issue 17). A daemon (`s2s-queue run`, a child process) serves `--busy`
clients and one more, `admin`. A round publishes a `system.noop` item to
`admin` that fails permanently, waits for its `client.parked` event, then
times four round trips in turn, each from the request to its answer: `retry`
(it fails again: still parked), `skip` (the client runs again), `pause`,
`resume`. The same rounds go over control messages (direct reply-to) and over
the HTTP API (`POST /api/v1/clients/admin/<action>`).

Each way is measured twice: idle, and while another process (`--load-rate`
items/s, spread over the busy clients) keeps the busy clients working. The
load's own throughput over the loaded rounds is printed beside the figures
(items the daemon counted as succeeded in `/metrics`), so a faster control
plane bought with a slower queue shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiohttp
import orjson

from bench.broker import AMQP_URL, delete_everything
from daemon.broker.producer import DIRECT_REPLY_TO, item_message
from daemon.broker.topology import Topology

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin"
TOKEN = "bench-admin-token"  # noqa: S105 - the bench daemon's own, on loopback
ACTIONS = ("retry", "skip", "pause", "resume")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=500, help="clients kept busy by the load")
    parser.add_argument("--rounds", type=int, default=100, help="rounds per way and phase")
    parser.add_argument("--load-rate", type=int, default=2000, help="items/s the load publishes")
    parser.add_argument("--prefix", default="s2sbadmin")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--daemon-command", default=str(ROOT / ".venv" / "bin" / "s2s-queue"))
    return parser.parse_args(argv)


# -- the load, in a process of its own ------------------------------------------------------


def load(prefix: str, clients: list[str], rate: int, stop: Any) -> None:
    asyncio.run(_load(prefix, clients, rate, stop))


async def _load(prefix: str, clients: list[str], rate: int, stop: Any) -> None:
    """Publish `rate` items a second, round robin over `clients`, until `stop` is set."""
    topo = Topology(prefix)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topo.blocking, ensure=False)
        batch, n = max(1, rate // 20), 0
        started = time.monotonic()
        while not stop.is_set():
            await asyncio.gather(*(
                exchange.publish(item_message(clients[(n + i) % len(clients)], "system.noop",
                                              {}, message_id=uuid.uuid4().hex),
                                 routing_key=clients[(n + i) % len(clients)])
                for i in range(batch)))
            n += batch
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)


# -- the daemon -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def daemon(args: argparse.Namespace, workdir: Path, port: int,
                 busy: list[str]) -> AsyncIterator[None]:
    clients = workdir / "clients.toml"
    clients.write_text("".join(f"[clients.{c}]\n" for c in [*busy, ADMIN]))
    env = {**os.environ, "S2SQ_AMQP_URL": AMQP_URL, "S2SQ_PREFIX": args.prefix,
           "S2SQ_QUEUE_TYPE": args.queue_type, "S2SQ_HTTP_PORT": str(port),
           "S2SQ_ADMIN_TOKEN": TOKEN, "S2SQ_LOG_FORMAT": "json", "S2SQ_LOG_LEVEL": "warning",
           "S2SQ_CLIENTS_FILE": str(clients)}
    log = (workdir / "daemon.log").open("wb")
    proc = subprocess.Popen([*args.daemon_command.split(), "run"], env=env,  # noqa: ASYNC220
                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, f"the daemon exited: see {workdir / 'daemon.log'}"
                assert time.monotonic() < deadline, "the daemon was not ready in 300 s"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.5)
        yield
    finally:
        proc.terminate()
        proc.wait(120)
        log.close()


# -- one way of asking --------------------------------------------------------------------


class Control:
    """Control messages with direct reply-to, answers matched by correlation id."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, topo: Topology) -> None:
        self._connection, self._topo = connection, topo
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def start(self) -> None:
        channel = await self._connection.channel()
        replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
        await replies.consume(self._on_reply, no_ack=True)
        self._exchange = await channel.get_exchange(self._topo.control, ensure=False)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self._waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(orjson.loads(message.body))

    async def ask(self, action: str) -> dict[str, Any]:
        ident = uuid.uuid4().hex
        future = self._waiting[ident] = asyncio.get_running_loop().create_future()
        await self._exchange.publish(aio_pika.Message(
            orjson.dumps({"action": action, "client_id": ADMIN, "actor": "bench"}),
            correlation_id=ident, reply_to=DIRECT_REPLY_TO), routing_key="")
        return await asyncio.wait_for(future, 30)


async def run_rounds(rounds: int, ask: Callable[[str], Awaitable[dict[str, Any]]],
                     publish_failing: Callable[[int], Awaitable[None]],
                     parked: Callable[[], asyncio.Event]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {a: [] for a in ACTIONS}
    for n in range(rounds):
        event = parked()
        await publish_failing(n)
        await asyncio.wait_for(event.wait(), 60)
        for action in ACTIONS:
            started = time.perf_counter()
            answer = await ask(action)
            times[action].append((time.perf_counter() - started) * 1000)
            if not answer.get("ok", True):
                raise RuntimeError(f"{action} refused: {answer}")
    return times


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def succeeded(http: aiohttp.ClientSession, port: int) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("s2s_items_total{") and 'outcome="succeeded"' in line)


async def main(args: argparse.Namespace) -> None:
    topo = Topology(args.prefix, args.queue_type)
    busy = [f"b{i:04d}" for i in range(args.busy)]
    workdir = Path(tempfile.mkdtemp(prefix=f"{args.prefix}-"))
    connection = await aio_pika.connect_robust(AMQP_URL)
    await delete_everything(connection, topo, [*busy, ADMIN])
    port = _free_port()
    print(f"{args.busy} busy clients + '{ADMIN}', {args.rounds} rounds per way and phase, load"
          f" {args.load_rate} items/s, {args.queue_type} queues, {os.cpu_count()} CPUs,"
          f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"code: {_git_head()}; work dir {workdir}")
    try:
        async with daemon(args, workdir, port, busy), aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            events = await connection.channel()
            tap = await events.declare_queue("", exclusive=True, auto_delete=True)
            await tap.bind(topo.events, routing_key=f"client.parked.{ADMIN}")
            waiting: list[asyncio.Event] = []

            async def on_parked(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                while waiting:
                    waiting.pop().set()

            await tap.consume(on_parked, no_ack=True)

            def parked() -> asyncio.Event:
                event = asyncio.Event()
                waiting.append(event)
                return event

            publisher = await connection.channel(publisher_confirms=True)
            blocking = await publisher.get_exchange(topo.blocking, ensure=False)

            async def publish_failing(n: int) -> None:
                await blocking.publish(item_message(ADMIN, "system.noop", {"fail": "permanent"},
                                                    message_id=f"r{n}-{uuid.uuid4().hex[:6]}"),
                                       routing_key=ADMIN)

            control = Control(connection, topo)
            await control.start()

            async def over_http(action: str) -> dict[str, Any]:
                async with http.post(f"http://127.0.0.1:{port}/api/v1/clients/{ADMIN}/{action}",
                                     json={}) as r:
                    return dict(await r.json())

            ways = {"control": control.ask, "http": over_http}
            results: list[tuple[str, str, dict[str, list[float]], float | None]] = []
            for phase in ("idle", "loaded"):
                stop = multiprocessing.Event()
                loader = None
                if phase == "loaded":
                    loader = multiprocessing.Process(
                        target=load, args=(args.prefix, busy, args.load_rate, stop))
                    loader.start()
                    await asyncio.sleep(5)  # the load reaches its steady state
                for way, ask in ways.items():
                    before, started = await succeeded(http, port), time.monotonic()
                    times = await run_rounds(args.rounds, ask, publish_failing, parked)
                    rate = ((await succeeded(http, port) - before)
                            / (time.monotonic() - started)) if loader else None
                    results.append((phase, way, times, rate))
                    _print(phase, way, times, rate)
                if loader is not None:
                    stop.set()
                    loader.join(30)
    finally:
        await delete_everything(connection, topo, [*busy, ADMIN])
        await connection.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("phase   way      action   p50 ms   p95 ms   p99 ms   load items/s")
    for phase, way, times, rate in results:
        for action in ACTIONS:
            values = times[action]
            print(f"{phase:7} {way:8} {action:7} {percentile(values, 50):7.1f}"
                  f" {percentile(values, 95):8.1f} {percentile(values, 99):8.1f}"
                  f"   {'-' if rate is None else f'{rate:.0f}'}")


def _print(phase: str, way: str, times: dict[str, list[float]], rate: float | None) -> None:
    p99 = ", ".join(f"{a} {percentile(v, 99):.1f}" for a, v in times.items())
    load_text = "" if rate is None else f"; load {rate:.0f} items/s"
    print(f"  {phase} over {way}: p99 ms {p99}{load_text}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
