"""Many clients on one node: start-up, memory, idle cost, listing and /metrics (issue 13).

Starts `s2s-queue run` as a child with a clients file of `--clients` clients
and measures, for each start in `--starts` (`fresh`: no queue of the prefix
exists, so every client queue is created and every registration written;
`restart`: the same daemon started again over the queues and state log the
first start left):

* **ready**: seconds from spawning the daemon to `/readyz` answering 200;
* **consuming**: seconds until every client queue has a consumer, as the
  broker says (passive declares' consumer counts, read on a few channels
  side by side once ready; the first complete pass that finds them all);
* **RSS** of the daemon once ready, and again after the listing rounds; the
  broker's RSS before the daemon starts and once every queue is consumed
  (what the clients cost a node);
* **idle CPU**: the daemon's CPU over `--idle` seconds with nothing to do,
  as a share of one core, after `--settle` seconds of quiet;
* **GET /api/v1/clients**: p50 / p99 of `--requests` requests walking the
  pages (`limit=100`, `after=` the previous page's `next`, from the start
  again at the end), after one warm-up page;
* **/metrics**: the slowest and the median of `--scrapes` scrapes.

    .venv/bin/python bench/scale.py --clients 5000 --queue-type quorum
    .venv/bin/python bench/scale.py --clients 10000 --queue-type classic

Everything under `--prefix` is deleted before and after. The broker needs an
open-files limit above 3 files per quorum queue (`scripts/ensure-rabbitmq.sh`).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import shlex
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractConnection

from bench import machine
from bench.broker import AMQP_URL, client_ids, clients_toml, delete_everything
from bench.window import stop_child
from daemon.broker.topology import Topology

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "scale-bench-admin-token"  # noqa: S105 (a daemon of the benchmark's own)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
READ_CHANNELS = 8
GOAL_START_S = 30.0
GOAL_RSS_MB = 400.0
GOAL_IDLE = 0.02
GOAL_LIST_P99_MS = 200.0
GOAL_METRICS_S = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    parser.add_argument("--prefix", default="s2sbscale")
    parser.add_argument("--starts", default="fresh,restart",
                        help="comma-separated: fresh (no queues yet), restart (queues kept)")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument("--daemon-command", default=str(ROOT / ".venv" / "bin" / "s2s-queue"))
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more settings for the daemon (repeatable)")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def consumers_missing(connection: AbstractConnection, names: list[str]) -> int:
    """How many of the queues have no consumer (or do not exist), read on a few channels."""
    missing = 0
    todo = iter(names)

    async def reader() -> None:
        nonlocal missing
        async with connection.channel(publisher_confirms=False) as channel:
            for name in todo:
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    missing += 1
                    return  # the channel is closed; the others go on
                if not queue.declaration_result.consumer_count:
                    missing += 1

    await asyncio.gather(*(reader() for _ in range(READ_CHANNELS)))
    return missing


async def wait_ready(http: aiohttp.ClientSession, base: str,
                     proc: asyncio.subprocess.Process, started: float) -> float:
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} before it was ready")
        try:
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return time.monotonic() - started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)


async def wait_consuming(connection: AbstractConnection, names: list[str],
                         started: float) -> float:
    deadline = time.monotonic() + 600
    while (missing := await consumers_missing(connection, names)) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{missing} client queues still have no consumer after 600 s")
        print(f"    {missing} queues without a consumer yet")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def listing(http: aiohttp.ClientSession, base: str, requests: int) -> list[float]:
    """Walk the pages `requests` times; milliseconds each (after one warm-up page)."""
    times: list[float] = []
    after: str | None = None
    for n in range(requests + 1):
        url = f"{base}/api/v1/clients?limit=100" + (f"&after={after}" if after else "")
        began = time.perf_counter()
        async with http.get(url, headers=ADMIN) as response:
            body: dict[str, Any] = await response.json()
            if response.status != 200:
                raise RuntimeError(f"GET {url}: {response.status} {body}")
        if n:
            times.append((time.perf_counter() - began) * 1000)
        after = body.get("next")
    return times


async def scrapes(http: aiohttp.ClientSession, base: str, count: int) -> list[float]:
    times: list[float] = []
    for _ in range(count):
        began = time.perf_counter()
        async with http.get(f"{base}/metrics", headers=ADMIN) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET /metrics: {response.status}")
        times.append(time.perf_counter() - began)
    return times


async def one_start(args: argparse.Namespace, kind: str, connection: AbstractConnection,
                    names: list[str], clients_file: Path, workdir: Path,
                    beam: int | None) -> dict[str, float]:
    port = free_port()
    env = {
        **os.environ, "S2SQ_AMQP_URL": AMQP_URL, "S2SQ_PREFIX": args.prefix,
        "S2SQ_QUEUE_TYPE": args.queue_type, "S2SQ_HTTP_PORT": str(port),
        "S2SQ_ADMIN_TOKEN": TOKEN, "S2SQ_LOG_FORMAT": "json", "S2SQ_LOG_LEVEL": "info",
        "S2SQ_CLIENTS_FILE": str(clients_file),
        **dict(item.split("=", 1) for item in args.env),
    }
    log_path = workdir / f"daemon-{kind}.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(args.daemon_command), "run", env=env, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    print(f"  {kind}: daemon pid {proc.pid}, log {log_path}")
    result: dict[str, float] = {}
    if beam is not None:
        result["broker_before_mb"] = rss_mb(beam)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            result["ready_s"] = await wait_ready(http, base, proc, started)
            print(f"    ready after {result['ready_s']:.1f} s")
            result["rss_ready_mb"] = rss_mb(proc.pid)
            result["consuming_s"] = await wait_consuming(connection, names, started)
            print(f"    every queue consuming after {result['consuming_s']:.1f} s")
            if beam is not None:
                result["broker_after_mb"] = rss_mb(beam)
            await asyncio.sleep(args.settle)
            cpu = machine.cpu_seconds(proc.pid)
            await asyncio.sleep(args.idle)
            result["idle_cpu"] = (machine.cpu_seconds(proc.pid) - cpu) / args.idle
            print(f"    idle CPU {100 * result['idle_cpu']:.2f} % of a core")
            listed = await listing(http, base, args.requests)
            result["list_p50_ms"] = statistics.median(listed)
            result["list_p99_ms"] = percentile(listed, 99)
            scraped = await scrapes(http, base, args.scrapes)
            result["metrics_max_s"] = max(scraped)
            result["metrics_median_s"] = statistics.median(scraped)
            result["rss_after_mb"] = rss_mb(proc.pid)
    finally:
        code = await stop_child(proc)
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code} after SIGTERM (log {log_path})")
    return result


def verdict(value: float, goal: float) -> str:
    return "ok" if value <= goal else "OVER"


def show(args: argparse.Namespace, kind: str, r: dict[str, float]) -> None:
    print(f"\n{args.clients} {args.queue_type} clients, {kind} start:")
    print(f"  ready              {r['ready_s']:7.1f} s    (goal ≤ {GOAL_START_S:.0f}: "
          f"{verdict(r['ready_s'], GOAL_START_S)})")
    print(f"  all consuming      {r['consuming_s']:7.1f} s    (goal ≤ {GOAL_START_S:.0f}: "
          f"{verdict(r['consuming_s'], GOAL_START_S)})")
    print(f"  RSS ready / after  {r['rss_ready_mb']:5.0f} / {r['rss_after_mb']:.0f} MB"
          f" (goal ≤ {GOAL_RSS_MB:.0f}: {verdict(r['rss_after_mb'], GOAL_RSS_MB)})")
    if "broker_after_mb" in r:
        print(f"  broker RSS         {r['broker_before_mb']:5.0f} MB before the daemon, "
              f"{r['broker_after_mb']:.0f} MB with every queue consumed")
    print(f"  idle CPU           {100 * r['idle_cpu']:7.2f} % of a core (goal ≤ "
          f"{100 * GOAL_IDLE:.0f}: {verdict(r['idle_cpu'], GOAL_IDLE)})")
    print(f"  GET /api/v1/clients p50 {r['list_p50_ms']:.1f} ms, p99 {r['list_p99_ms']:.1f} ms"
          f" (goal p99 ≤ {GOAL_LIST_P99_MS:.0f}: {verdict(r['list_p99_ms'], GOAL_LIST_P99_MS)})")
    print(f"  /metrics median {r['metrics_median_s']:.2f} s, slowest {r['metrics_max_s']:.2f} s"
          f" (goal ≤ {GOAL_METRICS_S:.0f}: {verdict(r['metrics_max_s'], GOAL_METRICS_S)})")


async def main(args: argparse.Namespace) -> int:
    beam = machine.broker_pid()
    if beam is not None and (problem := machine.limit_problem(beam, args.clients,
                                                              args.queue_type)):
        print(f"scale: {problem}", file=sys.stderr)
        return 2
    topo = Topology(args.prefix, args.queue_type)
    ids = client_ids(args.clients)
    names = [topo.client_queue(c) for c in ids]
    results: list[tuple[str, dict[str, float]]] = []
    workdir = Path(tempfile.mkdtemp(prefix="s2s-scale-"))  # kept: the daemons' logs
    clients_file = workdir / "clients.toml"
    clients_file.write_text(clients_toml(ids))
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        print(f"deleting everything under {args.prefix!r} first")
        await delete_everything(connection, topo, ids)
        for kind in args.starts.split(","):
            results.append((kind, await one_start(args, kind, connection, names,
                                                  clients_file, workdir, beam)))
    finally:
        print(f"deleting everything under {args.prefix!r}")
        await delete_everything(connection, topo, ids)
        await connection.close()
    for kind, result in results:
        show(args, kind, result)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
