"""The Celery and Dramatiq sides of bench/nonblocking.py: a stock worker as the measured child.

The worker runs in a session of its own, so the window's SIGSTOP/SIGCONT and
its CPU reading take in its pool processes too. It is ready once its
consumers are attached to its queue (a passive declare counts them); the
window closes when the tasks' counter (bench/tasks.py) reaches the items
pre-filled, polled every 25 ms as the daemon's log is.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractConnection

from bench import tasks
from bench.broker import AMQP_URL, publish_all
from bench.daemon_run import ROOT, wait_count
from bench.window import START_TIMEOUT_S, Setup, Window, measure, stop_child


@dataclass(frozen=True)
class Framework:
    """How to start one framework's worker, and where its tasks go."""

    name: str
    module: str  # bench.<x>_app: the worker's app, and `task_messages` for the pre-fill
    # The worker's command line, given the options and the queue.
    command: Callable[[argparse.Namespace, str], list[str]]
    # Consumers attached to the queue once the worker is ready.
    consumers: Callable[[argparse.Namespace], int]
    to_default_exchange: bool  # publish through "" (else through the exchange named as the queue)
    suffixes: tuple[str, ...] = ()  # the framework's other queues: <queue><suffix>

    def queue(self, prefix: str) -> str:
        return f"{prefix}.{self.name}"

    def names(self, prefix: str) -> list[str]:
        """Every queue (and exchange) the worker declares, to delete."""
        return [self.queue(prefix) + s for s in ("", *self.suffixes)]

    def messages(self, count: int, queue: str) -> Iterator[tuple[aio_pika.Message, str]]:
        module = importlib.import_module(self.module)  # only when the side is measured
        messages: Iterator[tuple[aio_pika.Message, str]] = module.task_messages(count, queue)
        return messages


def celery_command(args: argparse.Namespace, queue: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(args.concurrency), "--queues", queue,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING"]


def dramatiq_command(args: argparse.Namespace, queue: str) -> list[str]:
    return [sys.executable, "-m", "dramatiq", "bench.dramatiq_app", "--queues", queue,
            "--processes", str(args.concurrency), "--threads", str(args.threads)]


FRAMEWORKS = {
    "celery": Framework("celery", "bench.celery_app", celery_command,
                        consumers=lambda args: 1, to_default_exchange=False),
    "dramatiq": Framework("dramatiq", "bench.dramatiq_app", dramatiq_command,
                          consumers=lambda args: int(args.concurrency),
                          to_default_exchange=True, suffixes=(".DQ", ".XQ")),
}


def worker_env(args: argparse.Namespace, counts: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ, "PYTHONPATH": path, "S2SQ_AMQP_URL": AMQP_URL,
        tasks.PREFIX_ENV: args.prefix, tasks.QUEUE_TYPE_ENV: args.queue_type,
        tasks.COUNTS_ENV: str(counts),
        # Celery's prefetch is multiplier x processes: the same total as the daemon's.
        "S2SQ_BENCH_CELERY_MULTIPLIER": str(max(1, args.prefetch // args.concurrency)),
    }


async def consumer_count(connection: AbstractConnection, queue: str) -> int:
    """Consumers on `queue` (0 while it does not exist), from a passive declare."""
    try:
        async with connection.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)
    except aio_pika.exceptions.ChannelClosed:  # 404: not declared yet
        return 0


async def wait_consumers(
    proc: asyncio.subprocess.Process, connection: AbstractConnection, queue: str, expected: int
) -> None:
    while await consumer_count(connection, queue) < expected:
        if proc.returncode is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before it was ready")
        await asyncio.sleep(0.2)


async def run_worker(setup: Setup, run: int, framework: Framework) -> Window:
    """One window of `framework`'s worker draining pre-filled noop tasks from its own queue."""
    args = setup.args
    queue = framework.queue(args.prefix)
    counts = Path(tempfile.mkdtemp(prefix=f"{framework.name}-counts-", dir=args.workdir))
    log_path = Path(args.workdir) / f"{framework.name}-{time.strftime('%H%M%S')}.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *framework.command(args, queue), env=worker_env(args, counts), cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(f"  {framework.name} pid {proc.pid}, log {log_path}")
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            await wait_consumers(proc, setup.connection, queue, framework.consumers(args))

        async def fill() -> None:
            exchange = "" if framework.to_default_exchange else queue
            await publish_all(setup.connection, exchange, framework.messages(setup.expected, queue))

        async def done_so_far() -> int:
            return tasks.total(counts)

        async def wait_done() -> float:
            return await wait_count(done_so_far, setup.expected)

        return await measure(setup, run, framework.name, proc.pid, wait_done, fill)
    finally:
        code = await stop_child(proc)
        await setup.clean_quietly()
        if code not in (0, -15):
            print(f"  note: {framework.name} exited with {code} after SIGTERM (log {log_path})")
        shutil.rmtree(counts, ignore_errors=True)
