"""Failover with several replicas (issue 13, P5): kill -9 the replica holding the parks.

    flock -o /tmp/s2s-bench.lock .venv/bin/python bench/failover.py --clients 1000 --parked 100

Method. `--replicas` daemons (all at once, or with `--staggered` each once
the one before is ready) (`s2s-queue run`, child processes, logging JSON
to the work dir) serve `--clients` clients on `--queue-type` queues. Once the
broker shows every client's active consumer on the replica it prefers
(docs/replicas.md; read with rabbitmqctl), `--parked` clients that are active
on the first replica get an item that fails permanently, and the bench waits
until that replica has parked them all. Then it is killed (SIGKILL), and a
probe item (`system.noop`) is published at once to every client that is not
parked.

The figure is the time from the kill until the last of: every probe has run
(its `item.succeeded` line, on a survivor: the killed process logs nothing
more), and every park is held again by a survivor (`item.still_parked`) — that
is, every client consumes on a survivor and every park is kept. Times are the
log lines' own timestamps. The bench then checks, on the broker, that every
client's active consumer belongs to a survivor, and through `status` that the
parks are still parked on the same items, none of which ran again.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
import orjson

from bench.broker import (
    AMQP_URL,
    active_consumers,
    client_ids,
    clients_toml,
    delete_everything,
    publish_all,
)
from daemon.broker.producer import item_message, send_control
from daemon.broker.replicas import preferred
from daemon.broker.topology import Topology

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--parked", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="classic")
    parser.add_argument("--settle", type=float, default=1.5, help="S2SQ_REPLICA_SETTLE")
    parser.add_argument("--staggered", action="store_true",
                        help="start each replica once the one before is ready")
    parser.add_argument("--prefix", default="s2sbfail")
    parser.add_argument("--workdir", default=None, help="logs go here (default: a temp dir)")
    return parser.parse_args(argv)


class Replica:
    """One daemon process and its JSON log."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.id = ""

    def lines(self, event: str) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                line = orjson.loads(raw)
                if line.get("event") == event:
                    out.append(line)
        return out


@contextlib.asynccontextmanager
async def replicas(args: argparse.Namespace, workdir: Path) -> AsyncIterator[list[Replica]]:
    clients_file = workdir / "clients.toml"
    clients_file.write_text(clients_toml(client_ids(args.clients)))
    env = {**os.environ, "S2SQ_AMQP_URL": AMQP_URL, "S2SQ_PREFIX": args.prefix,
           "S2SQ_QUEUE_TYPE": args.queue_type, "S2SQ_HTTP_PORT": "0",
           "S2SQ_LOG_FORMAT": "json", "S2SQ_CLIENTS_FILE": str(clients_file),
           "S2SQ_REPLICA_SETTLE": str(args.settle), "S2SQ_BLOCKING_BACKOFF": "0.05"}
    started: list[Replica] = []
    try:
        for n in range(args.replicas):
            started.append(spawn(env, workdir / f"replica{n}.log"))
            if args.staggered:  # each starts once the one before is ready
                await until("a replica to be ready", 300,
                            lambda r=started[-1]: _logged(r, "daemon.ready"))
        yield started
    finally:
        for replica in started:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGTERM)
        for replica in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                replica.proc.wait(60)
            if replica.proc.poll() is None:
                replica.proc.kill()


def spawn(env: dict[str, str], log_path: Path) -> Replica:
    """`s2s-queue run` as a child process, logging to `log_path`."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "run"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    return Replica(proc, log_path)


async def _logged(replica: Replica, event: str) -> bool:
    if replica.proc.poll() is not None:
        raise RuntimeError(f"a replica exited early (log {replica.log_path})")
    return bool(replica.lines(event))


async def until(what: str, timeout: float, check: Any) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.5)


async def active(prefix: str) -> dict[str, str]:
    """{client: replica whose consumer is active on its queue}, from rabbitmqctl."""
    queues = await asyncio.to_thread(active_consumers, f"{prefix}.blocking.")
    return {q.removeprefix(f"{prefix}.blocking."):
            c.removeprefix("s2s-queue ").removesuffix(" consumers") for q, c in queues.items()}


def at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


async def measure(args: argparse.Namespace,
                  connection: aio_pika.abc.AbstractRobustConnection,
                  topo: Topology, daemons: list[Replica]) -> float:
    ids = client_ids(args.clients)

    async def ready() -> bool:
        for d in daemons:
            if d.proc.poll() is not None:
                raise RuntimeError(f"a replica exited early (log {d.log_path})")
            if not d.id and (lines := d.lines("daemon.ready")):
                d.id = lines[0]["replica"]
        return all(d.id for d in daemons)

    started = time.monotonic()
    await until("every replica to be ready", 300, ready)
    print(f"  {args.replicas} replicas ready in {time.monotonic() - started:.1f} s")
    names = [d.id for d in daemons]
    want = {c: preferred(c, names) for c in ids}

    async def spread() -> bool:
        now = await active(args.prefix)
        return all(now.get(c) == r for c, r in want.items())

    await until("every client to be active on the replica it prefers", 300, spread)
    print(f"  spread {time.monotonic() - started:.1f} s after the bench saw them start:",
          {r: sum(1 for v in want.values() if v == r) for r in names})
    victim, survivors = daemons[0], daemons[1:]
    parked = [c for c in ids if want[c] == victim.id][:args.parked]
    await publish_all(connection, topo.blocking, (
        (item_message(c, "system.noop", {"fail": "permanent"}, message_id=f"{c}-P"), c)
        for c in parked))

    async def all_parked() -> bool:
        return len({line["client_id"] for line in victim.lines("item.parked")}) >= len(parked)

    await until("the parks", 120, all_parked)
    await asyncio.sleep(1.0)  # let the parks' announcements settle
    victim.proc.send_signal(signal.SIGKILL)
    killed = time.time()
    victim.proc.wait(10)
    flowing = [c for c in ids if c not in set(parked)]
    await publish_all(connection, topo.blocking, (
        (item_message(c, "system.noop", {}, message_id=f"{c}-probe"), c) for c in flowing))
    print(f"  killed {victim.id} (active on {sum(1 for v in want.values() if v == victim.id)}"
          f" clients, {len(parked)} parked); probes published in {time.time() - killed:.1f} s")
    times: dict[str, float] = {}

    async def over() -> bool:
        for d in survivors:
            for line in d.lines("item.succeeded") + d.lines("item.still_parked"):
                client = line.get("client_id")
                if client in want and client not in times and at(line) >= killed:
                    times[client] = at(line)
        return len(times) >= len(ids)

    await until("every client on a survivor and every park held", 300, over)
    seconds = max(times.values()) - killed
    theirs = [c for c in ids if want[c] == victim.id and c not in set(parked)]
    print(f"  after the kill: the {len(parked)} parks held again within"
          f" {max(times[c] for c in parked) - killed:.1f} s, the killed replica's"
          f" {len(theirs)} other clients ran their probe within"
          f" {max(times[c] for c in theirs) - killed:.1f} s")
    await check_after(args, connection, topo, parked, {d.id for d in survivors}, victim)
    return seconds


async def check_after(args: argparse.Namespace,
                      connection: aio_pika.abc.AbstractRobustConnection,
                      topo: Topology, parked: list[str], survivors: set[str],
                      victim: Replica) -> None:
    now = await active(args.prefix)
    assert len(now) == args.clients, f"{len(now)} clients have an active consumer"
    assert set(now.values()) <= survivors, "a client is active on the killed replica"
    status = await send_control(connection, topo, {"action": "status", "actor": "bench"}, 30)
    states = {c["client_id"]: c for c in status["clients"]}
    for client in parked:
        park = states[client].get("parked") or {}
        assert states[client]["state"] == "parked", f"{client} is {states[client]['state']}"
        assert park.get("message_id") == f"{client}-P", park
    print(f"  checked: {len(now)} clients active on survivors; {len(parked)} parks still"
          f" parked on the same items")


async def main(args: argparse.Namespace, workdir: Path) -> None:
    topo = Topology(args.prefix, queue_type=args.queue_type)
    connection = await aio_pika.connect_robust(AMQP_URL)
    ids = client_ids(args.clients)
    extra = {topo.replicas, topo.leader, topo.notify, topo.notify_send}
    try:
        await delete_everything(connection, topo, ids, extra)
        print(f"failover: {args.clients} {args.queue_type} clients, {args.replicas} replicas,"
              f" {args.parked} parked; logs in {workdir}")
        async with replicas(args, workdir) as daemons:
            seconds = await measure(args, connection, topo, daemons)
        verdict = "meets" if seconds <= GOAL_S else "misses"
        print(f"P5: every client on a survivor and every park held {seconds:.1f} s after"
              f" kill -9 ({verdict} the goal of {GOAL_S:g} s)")
    finally:
        await delete_everything(connection, topo, ids, extra)
        await connection.close()


if __name__ == "__main__":
    arguments = parse_args()
    work = Path(arguments.workdir or tempfile.mkdtemp(prefix="s2s-failover-"))
    work.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(arguments, work))
