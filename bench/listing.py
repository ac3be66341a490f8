"""How fast GET /api/v1/clients and GET /metrics answer with thousands of clients.

    python bench/listing.py --clients 3000 [--requests 500] [--scrapes 20] [--prefix s2sbenchl]

Runs a daemon in this process with classic client queues, N clients from a
clients file (start-up not timed) and 1 % of them paused, waits for the first
background depth walk, then times, one request after another over one
keep-alive connection on loopback while the walk keeps going in the
background: listing pages (the first, after a random id, paused only, 1000
a page) and /metrics scrapes; then the process's CPU while idle, with a
reader of the depths once a second and with nobody reading. Then the parts
that grow with the number of clients, without a broker, at 10,000 synthetic
clients: cutting a page, and rendering /metrics' depth family. Deletes everything it created.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import aiohttp
from prometheus_client import CollectorRegistry, generate_latest

from daemon.faces.http.scrape import Gauges, _Snapshot
from daemon.logs import configure
from daemon.operations.listing import page_after
from daemon.settings import Settings
from daemon.supervisor import Supervisor
from tests.support import free_port, purge

AMQP_URL = os.environ.get("S2SQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TOKEN = "bench-admin-token"  # noqa: S105 - the throwaway token of a daemon on loopback
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def _report(what: str, seconds: list[float], extra: str = "") -> None:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"{what:<44} n={len(ms):<4} p50 {statistics.median(ms):7.1f} ms  p99 {p99:7.1f} ms"
          f"  max {ms[-1]:7.1f} ms{extra}")


async def _timed(times: list[float], call: Callable[[], Awaitable[int]]) -> int:
    started = time.perf_counter()
    size = await call()
    times.append(time.perf_counter() - started)
    return size


async def _over_http(base: str, ids: list[str], requests: int, scrapes: int) -> None:
    async with aiohttp.ClientSession(headers=ADMIN) as http:

        def getter(path: str) -> Callable[[], Awaitable[int]]:
            async def get() -> int:
                async with http.get(base + path) as response:
                    assert response.status == 200, await response.text()
                    return len(await response.read())
            return get

        paths: dict[str, Callable[[], str]] = {
            "GET /api/v1/clients (first page, 100)": lambda: "/api/v1/clients",
            "GET /api/v1/clients?after=<random id>": lambda: (
                f"/api/v1/clients?after={random.choice(ids)}"),
            "GET /api/v1/clients?state=paused": lambda: "/api/v1/clients?state=paused",
            "GET /api/v1/clients?limit=1000": lambda: "/api/v1/clients?limit=1000",
        }
        for what, path in paths.items():
            times: list[float] = []
            for _ in range(requests):
                size = await _timed(times, getter(path()))
            _report(what, times, f"  ({size} bytes)")
        times = []
        for _ in range(scrapes):
            size = await _timed(times, getter("/metrics"))
        _report("GET /metrics", times, f"  ({size} bytes)")


async def _idle_cpu(sup: Supervisor, seconds: float) -> None:
    """The process's CPU while idle: with a reader of the depths once a second (a scraper,
    an open console: the walker walks for it), then with nobody reading (it does not)."""
    for what, reading in (("with a reader once a second", True), ("with nobody reading", False)):
        walks, cpu, wall = sup.depth_cache.walks, time.process_time(), time.perf_counter()
        for _ in range(round(seconds)):
            if reading:
                sup.depth_cache.depths  # noqa: B018 - reading is what asks for the next walk
            await asyncio.sleep(1)
        share = (time.process_time() - cpu) / (time.perf_counter() - wall)
        print(f"idle CPU {what}: {share:.1%} of a core over {seconds:.0f} s "
              f"({sup.depth_cache.walks - walks} walks)")


def _synthetic(count: int) -> None:
    """The per-request work that grows with the clients, at `count` of them."""
    ids = sorted(f"client-{n:05d}" for n in range(count))
    times = []
    for _ in range(1000):
        started = time.perf_counter()
        page_after(ids, random.choice(ids), 100)
        times.append(time.perf_counter() - started)
    _report(f"page_after, {count} ids, 100 a page", times)
    depths: dict[str, int | None] = {c: n % 7 for n, c in enumerate(ids)}
    gauges = Gauges(count, 0, 0, 0, depths=depths, depths_age=1.0)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(gauges, {}, {}, {}))
        generate_latest(registry)
        times.append(time.perf_counter() - started)
    _report(f"/metrics gauges rendered, {count} clients", times)


async def run(prefix: str, count: int, requests: int, scrapes: int, idle: float) -> None:
    ids = [f"c{n:05d}" for n in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        clients = Path(tmp) / "clients.toml"
        clients.write_text("".join(f'[clients.{c}]\nname = "{c}"\n' for c in ids))
        settings = Settings(amqp_url=AMQP_URL, prefix=prefix, queue_type="classic",
                            clients_file=clients, http_port=free_port(),
                            admin_token=TOKEN, image_dir=Path(tmp) / "images",
                            log_format="json")
        sup = Supervisor(settings, handle_signals=False)
        started = time.perf_counter()
        task = asyncio.ensure_future(sup.run())
        try:
            while not sup.ready:
                assert not task.done(), task.result()
                await asyncio.sleep(0.1)
            print(f"{count} classic client queues: daemon ready in "
                  f"{time.perf_counter() - started:.1f} s")
            for client in ids[:: 100]:
                await sup.ops.pause(client, actor="bench")
            if not sup.depth_cache.walks:
                await sup.depth_cache.refreshed()
            print(f"depth walk: {sup.depth_cache.took:.2f} s for {count} queues")
            await _over_http(f"http://127.0.0.1:{settings.http_port}", ids, requests, scrapes)
            print(f"depth walks during the run: {sup.depth_cache.walks}, the last took "
                  f"{sup.depth_cache.took:.2f} s")
            await _idle_cpu(sup, idle)
        finally:
            sup.stop_requested.set()
            await asyncio.wait_for(task, 120)
            connection = await aio_pika.connect_robust(AMQP_URL)
            async with connection:
                await purge(connection, settings.topology())
    _synthetic(10_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of each idle CPU window (a reader, then none)")
    parser.add_argument("--prefix", default=f"s2sbenchl{os.getpid()}")
    args = parser.parse_args()
    configure("json", "warning")
    asyncio.run(run(args.prefix, args.clients, args.requests, args.scrapes, args.idle))


if __name__ == "__main__":
    main()
